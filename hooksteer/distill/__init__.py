"""Distilling prompt steering: teach a vector (HyperSteer, a PSR, a free vector) to do what a steering
prompt does, by matching the prompted model's next-token distributions.

Objective, per response token y_t (teacher forcing):

    KL( p(· | steering prompt ⊕ x, y<t)  ‖  p_Δ(· | x, y<t) )

where p_Δ is the model steered by the student's vector and y is the prompted model's own greedy answer
(or the unsteered one). Dense — a whole distribution per token — and cheap: one greedy answer and one
forward pass per (concept, base prompt), no sampling and no judge.

Modules: :mod:`.config` (:class:`DistillConfig`), :mod:`.teacher` (:func:`build_distill_teacher`),
:mod:`.records` (:class:`DistillRecord`, :class:`DistillData`), :mod:`.cache` (:class:`DistillCache`, on
disk, resumable), :mod:`.loss` (:func:`topk_kl`).

Example:
    >>> from hooksteer.distill import DistillConfig, build_distill_teacher      # doctest: +SKIP
    >>> data = build_distill_teacher(model, [(c, p) for c in concepts for p in prompts],  # doctest: +SKIP
    ...                              DistillConfig(top_k=32, max_new_tokens=32), cache_dir="runs/teacher")
    >>> hyper = HyperSteer(model, HyperSteerConfig(loss="distill"))             # doctest: +SKIP
    >>> HyperSteerTrainer(hyper, data.records).train()                           # doctest: +SKIP
"""

from hooksteer.distill.cache import DistillCache
from hooksteer.distill.config import RESPONSES, TEACHER_CONTEXTS, DistillConfig, DistillConfigError
from hooksteer.distill.loss import topk_kl, topk_teacher
from hooksteer.distill.records import DistillData, DistillRecord
from hooksteer.distill.teacher import build_distill_teacher, model_signature, student_prompt, teacher_prompt

__all__ = [
    "RESPONSES",
    "TEACHER_CONTEXTS",
    "DistillCache",
    "DistillConfig",
    "DistillConfigError",
    "DistillData",
    "DistillRecord",
    "build_distill_teacher",
    "model_signature",
    "student_prompt",
    "teacher_prompt",
    "topk_kl",
    "topk_teacher",
]
