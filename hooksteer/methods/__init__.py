"""Ways of making a steering vector. Each returns a :class:`~hooksteer.SteeringVector`.

* :func:`diffmean` — mean activation difference (DiffMean / CAA).
* :func:`pca` — first principal component of contrastive activations.
* :func:`actadd` — activation difference of one prompt pair (ActAdd); :func:`steer_actadd` applies it
  per position exactly as the paper does.
* :func:`random_like` — random direction with another vector's norm (control).
* :func:`sae_feature_vector` — an SAE feature's decoder direction scaled by its typical max activation;
  :func:`find_concept_features` finds a concept's features (see :mod:`hooksteer.methods.sae_feature`).
"""

from hooksteer.methods.actadd import actadd, steer_actadd
from hooksteer.methods.diffmean import diffmean
from hooksteer.methods.pca import pca
from hooksteer.methods.random_direction import random_like
from hooksteer.methods.sae_feature import find_concept_features, sae_feature_vector

__all__ = ["actadd", "diffmean", "find_concept_features", "pca", "random_like", "sae_feature_vector", "steer_actadd"]
