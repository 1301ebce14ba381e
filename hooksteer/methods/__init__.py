"""Ways of making a steering vector. Each returns a :class:`~hooksteer.SteeringVector`."""

from hooksteer.methods.diffmean import diffmean

__all__ = ["diffmean"]
