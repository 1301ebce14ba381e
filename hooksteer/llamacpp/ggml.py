"""Reading a control vector with llama.cpp's own GGUF reader (ggml's C API through ctypes)."""

from __future__ import annotations

import ctypes
import os
from typing import Any

import numpy as np

from hooksteer.llamacpp.format import _DIRECTION, ControlVectorFileError


class _GGUFInitParams(ctypes.Structure):
    """ggml's ``struct gguf_init_params`` (ggml/include/gguf.h)."""

    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.POINTER(ctypes.c_void_p))]


_VOID, _I64, _STR = ctypes.c_void_p, ctypes.c_int64, ctypes.c_char_p
#: ggml / gguf C functions used by :func:`read_with_ggml`: name -> (argument types, return type).
_GGML_PROTOTYPES: dict[str, tuple[list[Any], Any]] = {
    "gguf_init_from_file": ([_STR, _GGUFInitParams], _VOID),
    "gguf_free": ([_VOID], None),
    "gguf_get_n_tensors": ([_VOID], _I64),
    "gguf_get_tensor_name": ([_VOID, _I64], _STR),
    "gguf_get_tensor_type": ([_VOID, _I64], ctypes.c_int),
    "gguf_find_key": ([_VOID, _STR], _I64),
    "gguf_get_kv_type": ([_VOID, _I64], ctypes.c_int),
    "gguf_get_val_str": ([_VOID, _I64], _STR),
    "ggml_get_tensor": ([_VOID, _STR], _VOID),
    "ggml_n_dims": ([_VOID], ctypes.c_int),
    "ggml_nelements": ([_VOID], _I64),
    "ggml_get_data_f32": ([_VOID], ctypes.POINTER(ctypes.c_float)),
    "ggml_free": ([_VOID], None),
}


def read_with_ggml(path: str | os.PathLike) -> tuple[str | None, dict[int, np.ndarray]]:
    """Parse a control vector with llama.cpp's own GGUF reader (ggml's C ``gguf_init_from_file``).

    Mirrors ``common_control_vector_load_one`` (common/common.cpp): returns the architecture and the
    ``direction.N`` arrays; raises :class:`ControlVectorFileError` where llama.cpp would reject the file.
    Needs llama-cpp-python (its shared ggml library).
    """
    from llama_cpp import _ggml

    lib = _ggml.libggml
    for name, (argtypes, restype) in _GGML_PROTOTYPES.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, restype

    ggml_ctx = ctypes.c_void_p()
    gguf_ctx = lib.gguf_init_from_file(os.fsencode(path), _GGUFInitParams(False, ctypes.pointer(ggml_ctx)))
    if not gguf_ctx:
        raise ControlVectorFileError(f"llama.cpp's gguf_init_from_file could not read {path}")
    try:
        key = lib.gguf_find_key(gguf_ctx, b"general.architecture")
        is_string = key >= 0 and lib.gguf_get_kv_type(gguf_ctx, key) == 8   # GGUF_TYPE_STRING
        arch = lib.gguf_get_val_str(gguf_ctx, key).decode() if is_string else None
        out: dict[int, np.ndarray] = {}
        for i in range(lib.gguf_get_n_tensors(gguf_ctx)):
            name = lib.gguf_get_tensor_name(gguf_ctx, i).decode()
            match = _DIRECTION.match(name)
            if match is None or int(match.group(1)) == 0:
                raise ControlVectorFileError(f"{path}: llama.cpp rejects tensor {name!r}")
            if lib.gguf_get_tensor_type(gguf_ctx, i) != 0:  # GGML_TYPE_F32
                raise ControlVectorFileError(f"{path}: llama.cpp rejects non-F32 tensor {name!r}")
            tensor = lib.ggml_get_tensor(ggml_ctx, name.encode())
            if lib.ggml_n_dims(tensor) != 1:
                raise ControlVectorFileError(f"{path}: llama.cpp rejects non-1-D tensor {name!r}")
            count = lib.ggml_nelements(tensor)
            data = np.ctypeslib.as_array(lib.ggml_get_data_f32(tensor), shape=(count,))
            out[int(match.group(1))] = np.array(data, dtype=np.float32, copy=True)
        return arch, out
    finally:
        lib.gguf_free(gguf_ctx)
        if ggml_ctx.value:
            lib.ggml_free(ggml_ctx)
