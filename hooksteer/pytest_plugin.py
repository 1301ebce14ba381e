"""pytest plugin: fixtures providing tiny offline models from :mod:`hooksteer.testing`.

Registered automatically through the ``pytest11`` entry point of the ``hooksteer`` distribution
(``hooksteer = "hooksteer.pytest_plugin"``), so any test suite in an environment where hooksteer is
installed can simply request the fixtures::

    def test_steering_changes_output(tiny_llama):
        tokens = tiny_llama.to_tokens("I love sunny days")
        ...

Fixtures:

``tiny_tokenizer`` (session scope)
    The tiny byte-level BPE tokenizer (:func:`hooksteer.testing.tiny_tokenizer`). One object is
    shared by the whole session - do not mutate it (take ``copy.deepcopy`` or call
    :func:`hooksteer.testing.tiny_tokenizer` for a private copy).
``tiny_llama`` / ``tiny_gpt2`` (function scope)
    A freshly built tiny model (seed 0) for every test, so hooks, ``cfg`` edits or weight edits made
    by one test can never leak into another. Construction takes ~10-20 ms.
``tiny_model`` (function scope, parametrized)
    Runs the requesting test once per kind, with ids ``[llama]`` and ``[gpt2]``.
``tiny_model_factory`` (function scope)
    The :func:`hooksteer.testing.tiny_model` function itself, for custom kinds/seeds/overrides:
    ``tiny_model_factory("gpt2", seed=3, n_layers=2)``.

Importing this module is cheap: torch, transformers and transformer_lens are only imported when a
fixture is first used, so the plugin costs nothing in test runs that do not use it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # pragma: no cover - imports for type checkers only
    from transformer_lens import HookedTransformer
    from transformers import PreTrainedTokenizerFast

__all__ = ["tiny_bridge", "tiny_gpt2", "tiny_llama", "tiny_model", "tiny_model_factory", "tiny_tokenizer"]

_KINDS = ("llama", "gpt2")


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Session-wide tiny tokenizer (shared object: treat as read-only)."""
    from hooksteer import testing

    return testing.tiny_tokenizer()


@pytest.fixture
def tiny_llama() -> HookedTransformer:
    """A fresh tiny Llama-like HookedTransformer (RMS, rotary, gated SiLU, GQA), seed 0."""
    from hooksteer import testing

    return testing.tiny_model("llama")


@pytest.fixture
def tiny_gpt2() -> HookedTransformer:
    """A fresh tiny GPT-2-like HookedTransformer (LN, absolute positions, GELU), seed 0."""
    from hooksteer import testing

    return testing.tiny_model("gpt2")


@pytest.fixture(params=_KINDS, ids=list(_KINDS))
def tiny_model(request: pytest.FixtureRequest) -> HookedTransformer:
    """A fresh tiny model; tests using it run once per kind (``[llama]`` and ``[gpt2]``)."""
    from hooksteer import testing

    return testing.tiny_model(request.param)


@pytest.fixture
def tiny_model_factory() -> Callable[..., HookedTransformer]:
    """:func:`hooksteer.testing.tiny_model`, for tests needing other seeds or config overrides."""
    from hooksteer import testing

    return testing.tiny_model


@pytest.fixture
def tiny_bridge() -> Any:
    """A fresh tiny Llama-like ``TransformerBridge`` (seed 0) for every test."""
    from hooksteer import testing

    return testing.tiny_bridge(seed=0)
