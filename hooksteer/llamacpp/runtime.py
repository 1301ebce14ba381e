"""llama.cpp at run time: a GGUF model in llama-cpp-python's low-level C API, steered by a control vector."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from hooksteer.llamacpp.export import directions
from hooksteer.llamacpp.format import ControlVectorFileError
from hooksteer.llamacpp.load import control_vector_buffer
from hooksteer.vectors import SteeringSet, SteeringVector


def _llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as error:
        raise ImportError(
            "llama-cpp-python is not installed; `make llamacpp` builds it into the project's venv "
            "(CMAKE_ARGS='-DGGML_NATIVE=OFF ...' pip install llama-cpp-python==0.3.36)"
        ) from error
    return llama_cpp


class LlamaCppModel:
    """A GGUF model in llama.cpp (llama-cpp-python's low-level C API) with an optional control vector.

    Example:
        >>> llm = LlamaCppModel(find_default_gguf())                                  # doctest: +SKIP
        >>> base = llm.next_token_logits(tokens)                                      # doctest: +SKIP
        >>> llm.set_control_vector(["love.gguf"])                                      # doctest: +SKIP
        >>> steered = llm.next_token_logits(tokens)                                    # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike, *, n_ctx: int = 512, n_threads: int | None = None,
                 quiet: bool = True) -> None:
        lc = _llama_cpp()
        self._lc = lc
        if quiet:
            _silence_llama_cpp_logs(lc)
        lc.llama_backend_init()
        params = lc.llama_model_default_params()
        self.model = lc.llama_model_load_from_file(os.fsencode(path), params)
        if not self.model:
            raise ControlVectorFileError(f"llama.cpp could not load the model {path}")
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_ctx
        cparams.n_ubatch = n_ctx
        threads = n_threads or max(1, min(4, os.cpu_count() or 1))
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        self.ctx = lc.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            lc.llama_model_free(self.model)
            raise RuntimeError("llama.cpp could not create a context")
        self.n_layers = int(lc.llama_model_n_layer(self.model))
        self.n_embd = int(lc.llama_model_n_embd(self.model))
        self.n_vocab = int(lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model)))
        self._cvec: Any = None

    def set_control_vector(
        self,
        control: Any,
        *,
        layer_start: int = 1,
        layer_end: int | None = None,
    ) -> None:
        """Apply a control vector through ``llama_set_adapter_cvec`` (``None`` removes it).

        ``control`` is a list of ``.gguf`` paths / ``(path, strength)`` pairs (summed as llama-cli does),
        a :class:`SteeringVector` / :class:`SteeringSet` (converted with :func:`directions`), or a
        float32 buffer as :func:`control_vector_buffer` returns.
        ``layer_start``/``layer_end`` are llama-cli's ``--control-vector-layer-range`` (inclusive;
        default 1 .. n_layers, as common.cpp).
        """
        lc = self._lc
        if control is None:
            self._cvec = None
            if lc.llama_set_adapter_cvec(self.ctx, None, 0, self.n_embd, -1, -1) != 0:
                raise RuntimeError("llama_set_adapter_cvec failed to clear the control vector")
            return
        if isinstance(control, np.ndarray):   # a ready buffer: layer N at [n_embd * (N - 1), n_embd * N)
            n_embd, data = self.n_embd, control
            if data.ndim != 1 or data.size % n_embd:
                raise ValueError(f"a control-vector buffer must be 1-D with a multiple of {n_embd} values")
        elif isinstance(control, SteeringVector | SteeringSet):
            arrays = directions(control, n_layers=self.n_layers, d_model=self.n_embd)
            n_embd = self.n_embd
            data = np.zeros(n_embd * max(arrays), dtype=np.float32)
            for n, array in arrays.items():
                data[n_embd * (n - 1): n_embd * n] = array
        else:
            n_embd, data = control_vector_buffer(list(control), n_layers=self.n_layers)
        # llama_adapter_cvec::apply copies only the layers the buffer covers and leaves the others as they
        # were: a shorter buffer after a longer one would keep the old vector's deeper layers. Pad to full
        # depth (layers 1 .. n_layers-1) so every layer is overwritten.
        full = n_embd * (self.n_layers - 1)
        if data.size > full:
            raise ValueError(f"the control vector has {data.size // n_embd} layers; the model has {self.n_layers - 1}")
        self._cvec = np.zeros(full, dtype=np.float32)       # kept alive while llama.cpp copies it
        self._cvec[: data.size] = data
        pointer = self._cvec.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        end = self.n_layers if layer_end is None else layer_end
        if lc.llama_set_adapter_cvec(self.ctx, pointer, self._cvec.size, n_embd, layer_start, end) != 0:
            raise ControlVectorFileError(
                f"llama_set_adapter_cvec rejected the control vector (width {n_embd} vs model {self.n_embd}?)"
            )

    def next_token_logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits (``n_vocab``, float32) after ``tokens``, decoded from an empty KV cache."""
        lc = self._lc
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise ValueError("no tokens to decode")
        lc.llama_memory_clear(lc.llama_get_memory(self.ctx), True)
        array = (lc.llama_token * len(tokens))(*tokens)
        batch = lc.llama_batch_get_one(array, len(tokens))
        if lc.llama_decode(self.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        logits = lc.llama_get_logits_ith(self.ctx, -1)
        return np.array(np.ctypeslib.as_array(logits, shape=(self.n_vocab,)), dtype=np.float32, copy=True)

    def close(self) -> None:
        lc = self._lc
        if getattr(self, "ctx", None):
            lc.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            lc.llama_model_free(self.model)
            self.model = None

    def __enter__(self) -> LlamaCppModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_LOG_CALLBACK: Any = None


def _silence_llama_cpp_logs(lc: Any) -> None:
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:
        _LOG_CALLBACK = lc.llama_log_callback(lambda level, text, user_data: None)
        lc.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
