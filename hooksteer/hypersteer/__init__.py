"""HyperSteer: a hypernetwork that writes steering vectors from natural-language steering prompts.

``ŷ = B(x | h_l ← h_l + Δ)``, ``Δ = H(s, x)``: the base model B is frozen, H (a truncated trainable copy
of B, optionally cross-attending to B's layer-l activations over the base prompt x) is trained to make the
steered model match the *prompt-steered* model's next-token distributions (``loss="distill"``, default;
:mod:`hooksteer.distill`) or the cross-entropy of teacher targets (``loss="ce"``).

Modules: :mod:`.config` (settings), :mod:`.blocks` (H's blocks, cross-attention), :mod:`.model`
(:class:`HyperSteer`: forward, ``vector()``, save/load), :mod:`.deltas` (what a Δ becomes: fixed length, steering
vectors per site), :mod:`.gating` (per-token gates, ``HyperSteerConfig.gate``; :func:`steer_with` steers with
whatever H writes), :mod:`.bounds` (:class:`ConceptVectors`: the
oracle and floor that H is measured against), :mod:`.contrast` (vectors read off the model: what the steering
prompt changes in the activations, :func:`prompt_difference_vectors`), :mod:`.read_off` (:class:`ReadOffSteer`: H that reads those off and learns
a gain and bias per site), :mod:`.fit_steer` (:class:`FitSteer`: H with nothing trained, each steering prompt's
A-PSR fitted in closed form to its activation differences), :mod:`.data` (tokenisation, batches, frozen activation
cache), :mod:`.dataset` (a distillation dataset from the packaged concepts), :mod:`.loss` (steered logits,
losses), :mod:`.trainer` (Accelerate trainer, :func:`mean_loss`), :mod:`.ridge` (the head fitted in closed form to
oracle vectors, :func:`fit_head_ridge`), :mod:`.diagnostics` (collapse checks).

Example:
    >>> import hooksteer as hs                                              # doctest: +SKIP
    >>> from hooksteer.hypersteer import HyperSteer, HyperSteerConfig, HyperSteerTrainer  # doctest: +SKIP
    >>> model = hs.load_model()  # doctest: +SKIP
    >>> hyper = HyperSteer(model, HyperSteerConfig(variant="cross_attention", n_blocks=2, epochs=1))  # doctest: +SKIP
    >>> data = build_distill_dataset(model, DistillDataSettings(train_concepts=100))  # doctest: +SKIP
    >>> HyperSteerTrainer(hyper, data.train.records, data.held_out.records, output_dir="runs/hyper").train()  # doctest: +SKIP
    >>> v = hyper.vector("Mention volcanoes in every answer.", "Tell me about your day.")  # doctest: +SKIP
    >>> with hs.steer(model, v):  # doctest: +SKIP
    ...     print(model.generate(hs.format_chat(model, "Tell me about your day."), max_new_tokens=30))
"""

from hooksteer.hypersteer.bounds import ConceptVectors
from hooksteer.hypersteer.config import VARIANTS, HyperSteerConfig, HyperSteerConfigError, default_layer
from hooksteer.hypersteer.contrast import prompt_difference_vectors
from hooksteer.hypersteer.dataset import DistillDataset, DistillDataSettings, build_distill_dataset
from hooksteer.hypersteer.fit_steer import LEARNED_ALPHA, FitSteer
from hooksteer.hypersteer.gating import steer_with
from hooksteer.hypersteer.model import HyperSteer, HyperSteerFileError
from hooksteer.hypersteer.read_off import ReadOffSteer
from hooksteer.hypersteer.ridge import RidgeFit, fit_head_ridge
from hooksteer.hypersteer.trainer import (
    HyperSteerTrainer,
    TrainResult,
    checkpoint_dirs,
    latest_checkpoint,
    mean_loss,
)

__all__ = [
    "VARIANTS",
    "ConceptVectors",
    "DistillDataSettings",
    "DistillDataset",
    "FitSteer",
    "LEARNED_ALPHA",
    "HyperSteer",
    "HyperSteerConfig",
    "HyperSteerConfigError",
    "HyperSteerFileError",
    "HyperSteerTrainer",
    "ReadOffSteer",
    "RidgeFit",
    "TrainResult",
    "build_distill_dataset",
    "checkpoint_dirs",
    "default_layer",
    "fit_head_ridge",
    "latest_checkpoint",
    "mean_loss",
    "prompt_difference_vectors",
    "steer_with",
]
