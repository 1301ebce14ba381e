"""Level 2 of the cache: the Hugging Face copy converted to a TransformerLens state dict and config.

``<cache>/smollm2-135m-instruct/tl/`` holds the converted weights (``model.safetensors``), the
HookedTransformerConfig arguments (``config.json``) and the tokenizer; :func:`hooksteer.models.load_model`
reads it. The weights are not processed (no LayerNorm folding or centering).
"""

from __future__ import annotations

import json
import pathlib
from typing import TYPE_CHECKING, Any

import torch

from hooksteer.models.cache import (
    _TL_FILES,
    _WEIGHTS_FILE,
    _ensure_built,
    _Steps,
    _write_folder_atomically,
)
from hooksteer.models.default import _DISPLAY_NAME, DEFAULT_MODEL, DEFAULT_N_CTX
from hooksteer.models.gguf import _ensure_hf_dir, _load_hf_checked

if TYPE_CHECKING:  # pragma: no cover - imports for type checkers only
    import transformers


def _tl_config_kwargs(hf_config: Any) -> dict[str, Any]:
    """JSON-serialisable HookedTransformerConfig arguments for a Llama-architecture HF config.

    Mirrors TransformerLens' ``convert_hf_model_config`` branch for ``LlamaForCausalLM``.
    """
    n_heads = hf_config.num_attention_heads
    d_head = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // n_heads
    n_kv = getattr(hf_config, "num_key_value_heads", None) or n_heads
    rope = getattr(hf_config, "rope_parameters", None) or {}
    rope_theta = rope.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    return {
        "model_name": _DISPLAY_NAME,
        "original_architecture": "LlamaForCausalLM",
        "d_model": hf_config.hidden_size,
        "d_head": d_head,
        "n_heads": n_heads,
        "n_key_value_heads": n_kv if n_kv != n_heads else None,
        "d_mlp": hf_config.intermediate_size,
        "n_layers": hf_config.num_hidden_layers,
        "n_ctx": min(DEFAULT_N_CTX, hf_config.max_position_embeddings),
        "eps": hf_config.rms_norm_eps,
        "d_vocab": hf_config.vocab_size,
        "act_fn": hf_config.hidden_act,
        "normalization_type": "RMS",
        "positional_embedding_type": "rotary",
        "rotary_adjacent_pairs": False,
        "rotary_dim": d_head,
        "rotary_base": float(rope_theta),
        "final_rms": True,
        "gated_mlp": True,
        "default_prepend_bos": False,
    }


def _convert_to_tl(hf_model: transformers.PreTrainedModel) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Convert an HF Llama model to (config kwargs, HookedTransformer state dict), unprocessed.

    No LayerNorm folding / weight centering, so hook activations are the raw residual stream and
    logits equal the HF model's. Tied embeddings come out as ``unembed.W_U = embed.W_E.T``.
    """
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    kwargs = _tl_config_kwargs(hf_model.config)
    cfg = HookedTransformerConfig(**kwargs, dtype=torch.float32, device="cpu")
    state = convert_llama_weights(hf_model, cfg)
    return kwargs, {key: value.detach().to("cpu", torch.float32).contiguous() for key, value in state.items()}


def _build_tl_dir(folder: pathlib.Path, progress: bool) -> None:
    from safetensors.torch import save_file

    _ensure_hf_dir(folder.parent / "hf", progress)  # before our bar, so the two bars don't nest
    steps = _Steps(
        f"hooksteer: converting {_DISPLAY_NAME} to TransformerLens (one-time)",
        ["load HF copy", "convert weights", "save TL cache"],
        progress,
    )
    try:
        steps.next()
        hf_model, tokenizer = _load_hf_checked(DEFAULT_MODEL, "cpu", torch.float32, progress)
        steps.done()
        steps.next()
        kwargs, state = _convert_to_tl(hf_model)
        del hf_model
        steps.done()
        steps.next()

        def write(tmp: pathlib.Path) -> None:
            save_file(state, str(tmp / _WEIGHTS_FILE), metadata={"format": "pt"})
            (tmp / "config.json").write_text(json.dumps(kwargs, indent=2))
            tokenizer.save_pretrained(str(tmp))

        _write_folder_atomically(folder, write)
        steps.done()
    finally:
        steps.close()


def _ensure_tl_dir(folder: pathlib.Path, progress: bool, *, force: bool = False) -> pathlib.Path:
    """Build the TransformerLens cache into ``folder`` unless a valid one exists (``force`` rebuilds)."""
    return _ensure_built(folder, _TL_FILES, _build_tl_dir, progress, force=force)
