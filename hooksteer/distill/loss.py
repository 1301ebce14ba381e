"""KL divergence from a cached top-k teacher distribution to a student's full next-token distribution.

The teacher keeps its ``k`` most likely tokens per position; everything else is one *tail* bucket with the
remaining mass. On that partition (k tokens + tail) the KL is exact:

    KL(p ‖ q) = Σ_{i ∈ top-k} p_i (log p_i − log q_i) + r (log r − log q_r),

with ``r = 1 − Σ p_i`` and ``q_r = 1 − Σ_{i ∈ top-k} q_i``. It is 0 when the student equals the teacher, and
its gradient pulls the student towards the teacher's top-k tokens and its tail mass.

Example:
    >>> import torch
    >>> logits = torch.randn(3, 50)
    >>> teacher = topk_teacher(logits, k=5)
    >>> float(topk_kl(logits, *teacher).abs().max()) < 1e-5
    True
    >>> bool((topk_kl(torch.zeros(3, 50), *teacher) > 0).all())
    True
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["topk_kl", "topk_teacher"]

_EPS = 1e-12


@torch.no_grad()
def topk_teacher(logits: Float[Tensor, "n d_vocab"], k: int) -> tuple[Int[Tensor, "n k"], Float[Tensor, "n k"]]:
    """The teacher's ``k`` most likely token ids and their log-probabilities at each position."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    values, ids = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
    return ids, values


def topk_kl(
    student_logits: Float[Tensor, "n d_vocab"],
    teacher_ids: Int[Tensor, "n k"],
    teacher_logprobs: Float[Tensor, "n k"],
) -> Float[Tensor, " n"]:
    """Per-position KL(teacher ‖ student) on the partition {teacher's top-k tokens, the rest} (see module doc).

    Args:
        student_logits: the student's logits at the positions being distilled.
        teacher_ids: the teacher's top-k token ids at the same positions.
        teacher_logprobs: their log-probabilities under the teacher (full-vocabulary softmax).

    Raises:
        ValueError: shapes that do not line up.
    """
    if student_logits.ndim != 2 or teacher_ids.shape != teacher_logprobs.shape or teacher_ids.ndim != 2:
        raise ValueError(f"expected student (n, vocab) and teacher (n, k) tensors, got {tuple(student_logits.shape)}, "
                         f"{tuple(teacher_ids.shape)}, {tuple(teacher_logprobs.shape)}")
    if student_logits.shape[0] != teacher_ids.shape[0]:
        raise ValueError(f"{student_logits.shape[0]} student positions but {teacher_ids.shape[0]} teacher positions")
    log_q = torch.log_softmax(student_logits.float(), dim=-1)
    log_q_top = log_q.gather(-1, teacher_ids.to(log_q.device).long())
    log_p_top = teacher_logprobs.to(log_q.device).float()
    p_top = log_p_top.exp()
    head = (p_top * (log_p_top - log_q_top)).sum(-1)
    tail_p = (1.0 - p_top.sum(-1)).clamp(min=0.0)
    tail_q = (1.0 - log_q_top.exp().sum(-1)).clamp(min=_EPS)
    tail = torch.where(tail_p > _EPS, tail_p * (tail_p.clamp(min=_EPS).log() - tail_q.log()), torch.zeros_like(tail_p))
    return head + tail
