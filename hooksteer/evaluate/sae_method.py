"""SAE-feature steering as a method for the evaluation protocol (AxBench's "SAE" baseline).

For each concept, :class:`SAEFeatureMethod` finds the SAE feature whose mean activation on the concept's
positive texts most exceeds its mean on the negative texts
(:func:`hooksteer.methods.sae_feature.find_concept_features`) and steers along its decoder direction.
Magnitude: ``"feature_max"`` (default, AxBench) = the feature's typical max activation on the positive
texts, i.e. the length of :func:`~hooksteer.methods.sae_feature.sae_feature_vector`; ``"resid_norm"`` or a
number as for the other vector methods (equal footing with DiffMean). The hook point is the SAE's own.

Example:
    >>> from hooksteer.evaluate.sae_method import SAEFeatureMethod                # doctest: +SKIP
    >>> method = SAEFeatureMethod(sae="runs/sae/l20")
    >>> steerer = method.prepare(model, concept, others)
    >>> steerer.info["feature_id"], steerer.info["feature_score"]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from hooksteer.data.schema import Concept
from hooksteer.evaluate.methods import VectorMethod
from hooksteer.vectors import SteeringVector

__all__ = ["SAEFeatureMethod"]


@dataclass
class SAEFeatureMethod(VectorMethod):
    """Steer with the concept's best SAE feature (decoder direction × magnitude × factor).

    Args:
        sae: an sae-lens SAE or a folder saved in sae-lens format (loaded once, lazily).
        magnitude: ``"feature_max"`` (default), ``"resid_norm"``, ``"max_projection"`` or a number.
    """

    sae: Any = None
    name: str = "sae_feature"
    magnitude: Any = "feature_max"
    _loaded: Any = field(default=None, init=False, repr=False)
    _last_norm: float | None = field(default=None, init=False, repr=False)

    def loaded_sae(self) -> Any:
        if self._loaded is None:
            if self.sae is None:
                raise ValueError("SAEFeatureMethod needs sae=<an sae-lens SAE or its folder>")
            from analysis.sae_compare import load_sae

            self._loaded = load_sae(self.sae)
        return self._loaded

    def site_for(self, model: nn.Module) -> str:
        from hooksteer.methods.sae_feature import sae_hook_name

        return self.hook_name or sae_hook_name(self.loaded_sae())

    def make_vector(self, model: nn.Module, hook_name: str, concept: Concept,
                    positive: list[str], negative: list[str]) -> SteeringVector:
        from hooksteer.methods.sae_feature import find_concept_features, sae_feature_vector

        sae = self.loaded_sae()
        found = find_concept_features(model, sae, positive, negative, k=1, hook_name=hook_name)
        vector = sae_feature_vector(sae, found.feature_ids[0], hook_name=hook_name, model=model, texts=positive)
        vector.source["feature_score"] = found.scores[0]
        self._last_norm = vector.norm()
        return vector

    def magnitude_for(self, model: nn.Module, hook_name: str, unit: Tensor,
                      positive: list[str], negative: list[str]) -> float:
        if self.magnitude != "feature_max":
            return super().magnitude_for(model, hook_name, unit, positive, negative)
        if self._last_norm is None or self._last_norm <= 0:
            raise ValueError("the concept's best SAE feature never fires on its positive texts "
                             "(typical max activation 0); use magnitude='resid_norm'")
        return self._last_norm

    def config(self) -> dict[str, Any]:
        return {**super().config(), "sae": str(self.sae) if not hasattr(self.sae, "cfg") else "<SAE object>"}
