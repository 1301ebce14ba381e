"""ActAdd (Turner et al., "Activation Addition"): steer with the activation difference of one prompt pair.

ActAdd runs a contrast pair such as ``("Love", "Hate")`` through the model, takes the residual
stream at one layer for *each* of the pair's token positions (the shorter prompt padded with
space tokens at the end), and adds ``c · (h⁺_i − h⁻_i)`` at the first ``k`` positions of the user's
prompt, position ``i`` receiving the difference at ``i``.

Representation chosen here (documented choice): :func:`actadd` returns a
:class:`~hooksteer.SteeringVector` whose ``vector`` is the **mean** of the ``k`` per-position
differences (a constant vector that fits every hook in hooksteer, e.g. ``steer(model, v, positions=...)``),
while ``source`` stores the exact per-position differences (``per_position``, ``k × d_model``) and
``positions`` = ``[0, ..., k-1]``. :func:`steer_actadd` reproduces the original method exactly from
that record: one hook per position, position ``i`` (absolute) receiving ``c · difference_i``.

Positions are absolute token indices of each row (left padding is skipped by the position tracker, so
batched generation steers every row at its own front). With a chat template the front positions hold
the template's first tokens, as in the original method applied to the raw model input.

Example:
    >>> v = actadd(model, "Love", "Hate", "blocks.6.hook_resid_pre")                 # doctest: +SKIP
    >>> with steer_actadd(model, v, coefficient=5.0):                               # doctest: +SKIP
    ...     model.generate("I hate you because", max_new_tokens=20)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from hooksteer.activations import activations_for_tokens, check_texts, tokenize
from hooksteer.hooks import SteeringHandle, check_hook_name, steer
from hooksteer.vectors import SteeringVector, check_finite


def actadd(
    model: nn.Module,
    positive_prompt: str,
    negative_prompt: str,
    hook_name: str,
    *,
    pad_text: str = " ",
) -> SteeringVector:
    """ActAdd vector from a contrast pair: per-position activation differences at ``hook_name``.

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge`` with a tokenizer.
        positive_prompt / negative_prompt: the contrast pair, e.g. ``"Love"`` and ``"Hate"``.
        hook_name: where to read and later add, e.g. ``"blocks.6.hook_resid_pre"`` (ActAdd's choice).
        pad_text: text whose first token pads the shorter prompt at the end (ActAdd pads with spaces).

    Returns:
        A vector equal to the mean per-position difference; ``source["per_position"]`` holds the
        ``k`` differences and ``source["positions"]`` their absolute positions (see module docstring).

    Example:
        >>> v = actadd(model, "Love", "Hate", "blocks.6.hook_resid_pre")             # doctest: +SKIP
        >>> v.source["positions"]                                                   # doctest: +SKIP
        [0]
    """
    check_texts([positive_prompt, negative_prompt], "ActAdd prompt pair")
    check_hook_name(model, hook_name)
    tokens = pad_pair(tokenize(model, positive_prompt), tokenize(model, negative_prompt), pad_id(model, pad_text))
    activations = activations_for_tokens(model, tokens, hook_name).float().cpu()
    per_position = activations[0] - activations[1]
    check_finite(per_position, "ActAdd difference")
    return SteeringVector(
        hook_name, per_position.mean(dim=0), method="actadd",
        source={"positive_prompt": positive_prompt, "negative_prompt": negative_prompt,
                "positions": list(range(per_position.shape[0])), "per_position": per_position.tolist(),
                "vector": "mean of per_position"},
    )


def pad_id(model: Any, pad_text: str = " ") -> int:
    """Token id used to pad the shorter ActAdd prompt: the first token of ``pad_text`` (no BOS)."""
    ids = model.tokenizer.encode(pad_text, add_special_tokens=False)
    if not ids:
        raise ValueError(f"pad_text {pad_text!r} encodes to no tokens")
    return int(ids[0])


def pad_pair(first: Int[Tensor, " a"], second: Int[Tensor, " b"], pad: int) -> Int[Tensor, "2 pos"]:
    """Stack two token sequences, padding the shorter one at the end with ``pad``.

    Example:
        >>> pad_pair(torch.tensor([5, 6, 7]), torch.tensor([8]), 0).tolist()
        [[5, 6, 7], [8, 0, 0]]
    """
    width = max(first.shape[0], second.shape[0])
    out = torch.full((2, width), pad, dtype=torch.long)
    out[0, : first.shape[0]] = first
    out[1, : second.shape[0]] = second
    return out


def per_position_vectors(vector: SteeringVector) -> list[SteeringVector]:
    """The exact ActAdd differences stored by :func:`actadd`, one vector per absolute position."""
    per_position = vector.source.get("per_position")
    if per_position is None:
        raise ValueError(f"{vector!r} has no per-position ActAdd record; make it with hooksteer.methods.actadd")
    tensors: Float[Tensor, "k d_model"] = torch.tensor(per_position, dtype=vector.vector.dtype)
    return [SteeringVector(vector.hook_name, row, method="actadd") for row in tensors]


@contextmanager
def steer_actadd(model: nn.Module, vector: SteeringVector, coefficient: float = 1.0) -> Iterator[list[SteeringHandle]]:
    """Steer exactly as ActAdd does: ``coefficient · difference_i`` added at absolute position ``i``.

    Example:
        >>> with steer_actadd(model, v, coefficient=5.0):                         # doctest: +SKIP
        ...     model.generate("I hate you because", max_new_tokens=20)
    """
    positions = vector.source.get("positions")
    vectors = per_position_vectors(vector)
    if positions is None or len(positions) != len(vectors):
        raise ValueError("ActAdd record is inconsistent: 'positions' and 'per_position' differ in length")
    with ExitStack() as stack:
        handles = [stack.enter_context(steer(model, v * coefficient, positions=[int(p)]))
                   for p, v in zip(positions, vectors, strict=True)]
        yield handles
