"""Keeping model loads local and quiet: no Hugging Face hub access, no progress-bar or deprecation noise."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Forbid Hugging Face hub access inside the block (env var + huggingface_hub's cached flag)."""
    import huggingface_hub.constants as hub_constants

    old_env, old_flag = os.environ.get("HF_HUB_OFFLINE"), hub_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = old_flag
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


@contextlib.contextmanager
def _quiet(progress: bool) -> Iterator[None]:
    """Silence transformers' progress bars and TransformerLens' deprecation noise (bars kept if progress)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="HookedTransformer", category=DeprecationWarning)
            yield
    finally:
        if was_enabled and not progress:
            hf_logging.enable_progress_bar()
