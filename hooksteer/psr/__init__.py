"""PSR — Prompt Steering Replacement: per-token steering ``h_t ← h_t + α·ReLU(w·h_t + b)·z`` learned from
how a steering instruction changes each response token's activations.

Modules: :mod:`~hooksteer.psr.teacher` (teacher Δ), :mod:`~hooksteer.psr.model` (PSR, PSRConfig, save/load),
:mod:`~hooksteer.psr.loss`, :mod:`~hooksteer.psr.trainer` (train_psr), :mod:`~hooksteer.psr.evaluation`
(PSRMethod for :func:`hooksteer.evaluate.protocol.evaluate`), :mod:`~hooksteer.psr.cli` (``hooksteer train-psr``).

Example:
    >>> from hooksteer.psr import PSRConfig, compute_teacher, encode_examples, train_psr   # doctest: +SKIP
    >>> records = compute_teacher(model, encode_examples(model, examples), layers=[20])     # doctest: +SKIP
    >>> psr, _ = train_psr(model, records, PSRConfig(layers=[20], d_model=576))             # doctest: +SKIP
    >>> with psr.steer(model, alpha=1.0):                                                   # doctest: +SKIP
    ...     model.generate("Tell me about your day.", max_new_tokens=30)
"""

from hooksteer.psr.evaluation import PSRMethod, PSRTeacherData
from hooksteer.psr.model import PSR, PSRConfig, PSRFileError
from hooksteer.psr.teacher import TeacherPair, TeacherRecord, compute_teacher, encode_examples, encode_pair
from hooksteer.psr.trainer import TrainResult, fit_metrics, train_psr

__all__ = ["PSR", "PSRConfig", "PSRFileError", "PSRMethod", "PSRTeacherData", "TeacherPair", "TeacherRecord", "TrainResult", "compute_teacher",
           "encode_examples", "encode_pair", "fit_metrics", "train_psr"]
