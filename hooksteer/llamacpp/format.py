"""The llama.cpp control-vector format: its constants, its errors and the layer mapping.

A llama.cpp *control vector* is a GGUF file of architecture ``controlvector`` holding one F32 tensor
``direction.N`` per steered layer.

Layer mapping, from llama.cpp's source (as vendored in llama-cpp-python 0.3.36):

* ``src/models/llama.cpp`` (likewise the other model graphs): at the end of block ``il`` -- after the
  FFN output is added back to the residual stream -- ``cur = build_cvec(cur, il)``, which is
  ``llama_adapter_cvec::apply_to`` in ``src/llama-adapter.cpp``: ``cur = ggml_add(cur, tensors[il])``.
  That residual is TransformerLens's ``blocks.{il}.hook_resid_post`` (``il`` counts from 0).
* ``src/llama-adapter.cpp`` ``llama_adapter_cvec::init``: "there's never a tensor for layer 0";
  tensors exist for ``il = 1 .. n_layer - 1``.
* ``common/common.cpp`` ``common_control_vector_load_one``: tensor ``direction.N`` is layer ``N``
  (``N = 0`` is rejected, other names are rejected), must be F32 and 1-D, and is written at offset
  ``n_embd * (N - 1)`` of the buffer given to ``llama_set_adapter_cvec``; tensors for the same layer
  -- in one file or in several ``--control-vector`` files -- are *summed*, each times its strength.

So ``direction.N`` <-> ``blocks.N.hook_resid_post`` for ``1 <= N <= n_layers - 1``, exactly (no
off-by-one). ``blocks.L.hook_resid_pre`` is the same activation as ``blocks.{L-1}.hook_resid_post``
and exports as ``direction.{L-1}`` for ``L >= 2``. llama.cpp adds the vector at every token (prompt and
generated), i.e. ``hs.steer(model, vector, positions="all")``.
"""

from __future__ import annotations

import re

from hooksteer.vectors import SteeringFileError

#: ``general.architecture`` of a llama.cpp control-vector file.
ARCHITECTURE = "controlvector"
#: hooksteer's own metadata key: JSON list of the vectors that went into each ``direction.N``.
PROVENANCE_KEY = "hooksteer.vectors"
FORMAT_VERSION = "1"

_DIRECTION = re.compile(r"^direction\.(\d+)$")
_SITE = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")


class ControlVectorFileError(SteeringFileError):
    """A ``.gguf`` file is not a valid llama.cpp control vector (or not for this model)."""


class NotExportableError(ValueError):
    """The steering cannot be expressed as a llama.cpp control vector; the message says why."""


def control_vector_layer(hook_name: str, n_layers: int | None = None) -> int:
    """The ``direction.N`` index llama.cpp uses for a TransformerLens hook point.

    Raises:
        NotExportableError: llama.cpp has no control vector at that site.

    Example:
        >>> control_vector_layer("blocks.10.hook_resid_post"), control_vector_layer("blocks.10.hook_resid_pre")
        (10, 9)
    """
    match = _SITE.match(hook_name)
    if match is None:
        raise NotExportableError(
            f"{hook_name!r}: llama.cpp control vectors are added only to the residual stream after a whole "
            "block (blocks.N.hook_resid_post, or the equal blocks.N+1.hook_resid_pre); "
            "attention/MLP/mid-block and embedding sites have no llama.cpp equivalent"
        )
    layer, site = int(match.group(1)), match.group(2)
    direction = layer if site == "post" else layer - 1
    if direction < 1:
        where = "block 0's output" if direction == 0 else "the embeddings"
        raise NotExportableError(
            f"{hook_name!r} is {where}: llama.cpp never applies a control vector there (src/llama-adapter.cpp: "
            "\"there's never a tensor for layer 0\"; common.cpp rejects direction.0). Use a later layer."
        )
    if n_layers is not None and direction > n_layers - 1:
        raise NotExportableError(f"{hook_name!r} is outside the model's {n_layers} blocks")
    return direction
