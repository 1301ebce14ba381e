"""Ways of making a steering vector. Each returns a :class:`~hooksteer.SteeringVector`.

* :func:`diffmean` — mean activation difference (DiffMean / CAA).
* :func:`pca` — first principal component of contrastive activations.
* :func:`actadd` — activation difference of one prompt pair (ActAdd); :func:`steer_actadd` applies it
  per position exactly as the paper does.
* :func:`random_like` — random direction with another vector's norm (control).
"""

from hooksteer.methods.actadd import actadd, steer_actadd
from hooksteer.methods.diffmean import diffmean
from hooksteer.methods.pca import pca
from hooksteer.methods.random_direction import random_like

__all__ = ["actadd", "diffmean", "pca", "random_like", "steer_actadd"]
