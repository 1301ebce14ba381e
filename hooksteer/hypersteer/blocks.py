"""Building blocks of the hypernetwork H: copies of the base model's own blocks, plus cross-attention.

A :class:`HyperBlock` deep-copies one TransformerLens ``TransformerBlock`` (its norms, self-attention
with rotary/grouped KV heads, MLP: exactly the pretrained computation) and can insert a
:class:`CrossAttention` sub-layer between self-attention and the MLP:

    x ← x + SelfAttn(LN1(x))                      (pretrained, over the steering-prompt tokens)
    x ← x + CrossAttn(LNq(x), LNkv(context))      (new, keys/values = base model's residual at layer l)
    x ← x + MLP(LN2(x))                           (pretrained)

Example:
    >>> from hooksteer.testing import tiny_model                        # doctest: +SKIP
    >>> model = tiny_model("llama")  # doctest: +SKIP
    >>> block = HyperBlock(model.blocks[0], cross_attention=True)  # doctest: +SKIP
    >>> out = block(torch.randn(2, 5, 32), context=torch.randn(2, 7, 32))  # doctest: +SKIP
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn

from hooksteer.hypersteer.config import HyperSteerConfigError

#: TransformerLens architectures whose blocks apply the norms after the sub-layers.
_UNSUPPORTED_FLAGS = ("parallel_attn_mlp", "use_normalization_before_and_after", "attn_only")


def check_block_supported(cfg: object) -> None:
    """Raise :class:`HyperSteerConfigError` for block layouts H does not reproduce (pre-norm blocks only)."""
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    bad = [flag for flag in _UNSUPPORTED_FLAGS if getattr(cfg, flag, False)]
    if getattr(cfg, "original_architecture", None) in POST_NORM_ARCHITECTURES:
        bad.append(f"post-norm architecture {cfg.original_architecture}")
    if getattr(cfg, "positional_embedding_type", "") == "shortformer":
        bad.append("shortformer positional embeddings")
    if bad:
        raise HyperSteerConfigError(
            f"HyperSteer copies pre-norm transformer blocks; this base model uses {', '.join(bad)}"
        )


def make_norm(normalization_type: str | None, d_model: int, eps: float) -> nn.Module:
    """A fresh norm of the base model's kind (RMSNorm for RMS models, LayerNorm otherwise)."""
    if normalization_type is not None and normalization_type.startswith("RMS"):
        return nn.RMSNorm(d_model, eps=eps)
    if normalization_type is None:
        return nn.Identity()
    return nn.LayerNorm(d_model, eps=eps)


class CrossAttention(nn.Module):
    """Multi-head attention from H's tokens (queries) to a context sequence (keys/values), no positions.

    The context is the frozen base model's residual stream, whose norm grows with depth, so it is
    normalised first (``ln_kv``). Projections use PyTorch's default initialisation.

    Example:
        >>> attn = CrossAttention(d_model=8, d_context=8, n_heads=2, d_head=4)
        >>> attn(torch.randn(1, 3, 8), torch.randn(1, 5, 8)).shape
        torch.Size([1, 3, 8])
    """

    def __init__(self, d_model: int, d_context: int, n_heads: int, d_head: int, *,
                 normalization_type: str | None = "RMS", eps: float = 1e-5) -> None:
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_head
        self.ln_q = make_norm(normalization_type, d_model, eps)
        self.ln_kv = make_norm(normalization_type, d_context, eps)
        self.W_Q = nn.Linear(d_model, n_heads * d_head)
        self.W_K = nn.Linear(d_context, n_heads * d_head)
        self.W_V = nn.Linear(d_context, n_heads * d_head)
        self.W_O = nn.Linear(n_heads * d_head, d_model)

    def _heads(self, x: Tensor) -> Tensor:
        batch, pos, _ = x.shape
        return x.view(batch, pos, self.n_heads, self.d_head).transpose(1, 2)

    def forward(
        self,
        x: Float[Tensor, "batch pos d_model"],
        context: Float[Tensor, "batch ctx d_context"],
        context_mask: Bool[Tensor, "batch ctx"] | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        q = self._heads(self.W_Q(self.ln_q(x)))
        kv_in = self.ln_kv(context.to(x.dtype))
        k, v = self._heads(self.W_K(kv_in)), self._heads(self.W_V(kv_in))
        mask = None
        if context_mask is not None:
            if not bool(context_mask.any(dim=-1).all()):
                raise ValueError("every row needs at least one context token to attend to")
            mask = context_mask.to(device=x.device, dtype=torch.bool)[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        batch, _, pos, _ = out.shape
        return self.W_O(out.transpose(1, 2).reshape(batch, pos, self.n_heads * self.d_head))


class HyperBlock(nn.Module):
    """A trainable copy of one base-model block, optionally with a cross-attention sub-layer.

    Without cross-attention the output equals the original TransformerLens block's output exactly.

    Args:
        block: a TransformerLens ``TransformerBlock`` (deep-copied; the original is not touched).
        cross_attention: insert a :class:`CrossAttention` between self-attention and MLP.
        d_context: width of the context (the base model's ``d_model``).
    """

    def __init__(self, block: nn.Module, *, cross_attention: bool = False, d_context: int | None = None) -> None:
        super().__init__()
        cfg = block.cfg
        check_block_supported(cfg)
        block = copy.deepcopy(block)
        # Analysis flags of TransformerLens change the attention's input layout; H never needs them.
        block.cfg.use_attn_in = False
        block.cfg.use_split_qkv_input = False
        block.cfg.use_hook_mlp_in = False
        self.ln1, self.attn, self.ln2, self.mlp = block.ln1, block.attn, block.ln2, block.mlp
        self.cross: CrossAttention | None = None
        if cross_attention:
            self.cross = CrossAttention(
                cfg.d_model, d_context or cfg.d_model, cfg.n_heads, cfg.d_head,
                normalization_type=cfg.normalization_type, eps=cfg.eps,
            )
        self.requires_grad_(True)

    def forward(
        self,
        x: Float[Tensor, "batch pos d_model"],
        context: Float[Tensor, "batch ctx d_context"] | None = None,
        context_mask: Bool[Tensor, "batch ctx"] | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        normed = self.ln1(x)
        x = x + self.attn(query_input=normed, key_input=normed, value_input=normed)
        if self.cross is not None:
            if context is None:
                raise ValueError("this block has cross-attention: pass the base model's activations as context")
            x = x + self.cross(x, context, context_mask)
        return x + self.mlp(self.ln2(x))
