"""HyperSteer: a hypernetwork that writes steering vectors from natural-language steering prompts.

``ŷ = B(x | h_l ← h_l + Δ)``, ``Δ = H(s, x)``: the base model B is frozen, H (a truncated trainable copy
of B, optionally cross-attending to B's layer-l activations over the base prompt x) is trained with
the target-token cross-entropy.

Modules: :mod:`.config` (settings), :mod:`.blocks` (H's blocks, cross-attention), :mod:`.model`
(:class:`HyperSteer`: forward, ``vector()``, save/load), :mod:`.data` (tokenisation, batches, frozen
activation cache), :mod:`.loss` (steered logits, target loss), :mod:`.trainer` (Accelerate trainer).

Example:
    >>> import hooksteer as hs                                              # doctest: +SKIP
    >>> from hooksteer.hypersteer import HyperSteer, HyperSteerConfig, HyperSteerTrainer  # doctest: +SKIP
    >>> model = hs.load_model()  # doctest: +SKIP
    >>> hyper = HyperSteer(model, HyperSteerConfig(variant="cross_attention", n_blocks=2, epochs=1))  # doctest: +SKIP
    >>> HyperSteerTrainer(hyper, train_examples, eval_examples, output_dir="runs/hyper").train()  # doctest: +SKIP
    >>> v = hyper.vector("Mention volcanoes in every answer.", "Tell me about your day.")  # doctest: +SKIP
    >>> with hs.steer(model, v):  # doctest: +SKIP
    ...     print(model.generate(hs.format_chat(model, "Tell me about your day."), max_new_tokens=30))
"""

from hooksteer.hypersteer.config import VARIANTS, HyperSteerConfig, HyperSteerConfigError, default_layer
from hooksteer.hypersteer.model import HyperSteer, HyperSteerFileError
from hooksteer.hypersteer.trainer import HyperSteerTrainer, TrainResult, checkpoint_dirs, latest_checkpoint

__all__ = [
    "VARIANTS",
    "HyperSteer",
    "HyperSteerConfig",
    "HyperSteerConfigError",
    "HyperSteerFileError",
    "HyperSteerTrainer",
    "TrainResult",
    "checkpoint_dirs",
    "default_layer",
    "latest_checkpoint",
]
