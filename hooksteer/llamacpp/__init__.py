"""llama.cpp control vectors: export hooksteer vectors as ``.gguf``, read them back, steer llama.cpp.

A llama.cpp *control vector* is a GGUF file of architecture ``controlvector`` holding one F32 tensor
``direction.N`` per steered layer (``llama-cli -m model.gguf --control-vector cv.gguf``, or
``--control-vector-scaled cv.gguf 0.8``). :func:`export_gguf` writes a :class:`SteeringVector` or
:class:`SteeringSet` in that format, :func:`load_gguf` reads one (from hooksteer, llama.cpp's own
``llama-cvector-generator`` or repeng) back into a :class:`SteeringSet`, and :class:`LlamaCppModel`
runs a GGUF model through llama-cpp-python's low-level C API with a control vector applied.

So ``direction.N`` is ``blocks.N.hook_resid_post`` for ``1 <= N <= n_layers - 1``, exactly, and
``blocks.L.hook_resid_pre`` exports as ``direction.{L-1}``; llama.cpp adds the vector at every token
(``positions="all"``). Where that mapping comes from in llama.cpp's source is in
:mod:`~hooksteer.llamacpp.format`.

What llama.cpp cannot express is refused with :class:`NotExportableError`: block 0's output, the
embeddings (``blocks.0/1.hook_resid_pre``) and any non-residual site; per-token coefficients; gated
vectors (PSR, ``ReluGate``); and vectors that depend on the prompt (in-context / cross-attention
HyperSteer). A no-context HyperSteer vector depends only on its steering prompt and exports fine.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from hooksteer import SteeringVector
    >>> v = SteeringVector("blocks.3.hook_resid_post", torch.tensor([1.0, -2.0, 0.5]))
    >>> path = export_gguf(v, Path(tempfile.mkdtemp()) / "cv.gguf")
    >>> back = load_gguf(path)[0]
    >>> back.hook_name, torch.equal(back.vector, v.vector)
    ('blocks.3.hook_resid_post', True)

One module per job (every name is importable from ``hooksteer.llamacpp``):

* :mod:`~hooksteer.llamacpp.format` - the file format's constants and errors, the layer mapping
  (:func:`control_vector_layer`);
* :mod:`~hooksteer.llamacpp.reader` - opening a GGUF file as data only (header checks, metadata fields);
* :mod:`~hooksteer.llamacpp.target` - the target model's depth and width (:func:`model_gguf_info`);
* :mod:`~hooksteer.llamacpp.export` - what llama.cpp can express, :func:`directions`, :func:`export_gguf`;
* :mod:`~hooksteer.llamacpp.load` - :func:`load_gguf`, :func:`control_vector_buffer`;
* :mod:`~hooksteer.llamacpp.ggml` - :func:`read_with_ggml` (llama.cpp's own GGUF reader, via ctypes);
* :mod:`~hooksteer.llamacpp.runtime` - :class:`LlamaCppModel` (llama-cpp-python's low-level C API);
* :mod:`~hooksteer.llamacpp.cli` - the ``hooksteer export-gguf`` command.
"""

from __future__ import annotations

from hooksteer.llamacpp.cli import add_parser as add_parser
from hooksteer.llamacpp.cli import load_exportable as load_exportable
from hooksteer.llamacpp.cli import run_export_gguf as run_export_gguf
from hooksteer.llamacpp.export import directions, export_gguf
from hooksteer.llamacpp.format import (
    ARCHITECTURE,
    ControlVectorFileError,
    NotExportableError,
    control_vector_layer,
)
from hooksteer.llamacpp.format import FORMAT_VERSION as FORMAT_VERSION
from hooksteer.llamacpp.format import PROVENANCE_KEY as PROVENANCE_KEY
from hooksteer.llamacpp.ggml import read_with_ggml
from hooksteer.llamacpp.load import control_vector_buffer, load_gguf
from hooksteer.llamacpp.runtime import LlamaCppModel
from hooksteer.llamacpp.target import ModelInfo as ModelInfo
from hooksteer.llamacpp.target import model_gguf_info

__all__ = [
    "ARCHITECTURE",
    "ControlVectorFileError",
    "LlamaCppModel",
    "NotExportableError",
    "control_vector_buffer",
    "control_vector_layer",
    "directions",
    "export_gguf",
    "load_gguf",
    "model_gguf_info",
    "read_with_ggml",
]
