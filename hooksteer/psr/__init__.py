"""PSR — Prompt Steering Replacement: per-token steering ``h_t ← h_t + α·ReLU(w·h_t + b)·z`` learned from
how a steering instruction changes each response token's activations.

Modules: :mod:`~hooksteer.psr.teacher` (teacher Δ, distillation pairs), :mod:`~hooksteer.psr.model` (PSR,
PSRConfig, save/load), :mod:`~hooksteer.psr.hooks` (the inference hook and its positions),
:mod:`~hooksteer.psr.batch` / :mod:`~hooksteer.psr.passes` (batches, the steered pass and the layer-by-layer
initialisation), :mod:`~hooksteer.psr.loss`, :mod:`~hooksteer.psr.trainer` (train_psr),
:mod:`~hooksteer.psr.evaluation` (PSRMethod for :func:`hooksteer.evaluate.protocol.evaluate`),
:mod:`~hooksteer.psr.search` / :mod:`~hooksteer.psr.joint` (strength by a coherence target, chosen on the
selection half), :mod:`~hooksteer.psr.cli` (``hooksteer train-psr``).

Example:
    >>> from hooksteer.psr import PSRConfig, compute_teacher, encode_examples, train_psr   # doctest: +SKIP
    >>> records = compute_teacher(model, encode_examples(model, examples), layers=range(30),  # doctest: +SKIP
    ...                           prefix_tokens=template_suffix_length(model))
    >>> psr, _ = train_psr(model, records, PSRConfig(layers=list(range(30)), d_model=576,  # doctest: +SKIP
    ...                                              variant="adaptive"))
    >>> with psr.steer(model, alpha=1.0):                                                   # doctest: +SKIP
    ...     model.generate("Tell me about your day.", max_new_tokens=30)
"""

from hooksteer.psr.evaluation import PSRMethod, PSRTeacherData
from hooksteer.psr.hooks import PSRHook, steer_mask
from hooksteer.psr.model import PSR, PSRConfig, PSRFileError
from hooksteer.psr.passes import PassResult, steered_pass
from hooksteer.psr.teacher import (
    TeacherPair,
    TeacherRecord,
    compute_teacher,
    encode_examples,
    encode_pair,
    pairs_from_distill,
    template_suffix_length,
)
from hooksteer.psr.trainer import TrainResult, distill_kl, fit_metrics, train_psr

__all__ = ["PSR", "PSRConfig", "PSRFileError", "PSRHook", "PSRMethod", "PSRTeacherData", "PassResult", "TeacherPair",
           "TeacherRecord", "TrainResult", "compute_teacher", "distill_kl", "encode_examples", "encode_pair",
           "fit_metrics", "pairs_from_distill", "steer_mask", "steered_pass", "template_suffix_length", "train_psr"]
