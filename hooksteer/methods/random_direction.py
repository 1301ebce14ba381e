"""Random-direction control: a vector with the same hook point and norm as another, random direction.

Any effect a method has beyond its random control is due to its *direction*, not its size.

Example:
    >>> import torch
    >>> from hooksteer import SteeringVector
    >>> v = SteeringVector("blocks.1.hook_resid_post", torch.tensor([3.0, 4.0]), method="diffmean")
    >>> r = random_like(v, seed=0)
    >>> round(r.norm(), 4), r.method, r.source["like"]
    (5.0, 'random', 'diffmean')
"""

from __future__ import annotations

import torch

from hooksteer.vectors import SteeringVector


def random_like(vector: SteeringVector, seed: int = 0) -> SteeringVector:
    """An isotropic random direction (Gaussian, normalised) with ``vector``'s norm, hook point and dtype.

    The same ``seed`` gives the same direction for the same width.

    Example:
        >>> random_like(love_vector, seed=1)                                        # doctest: +SKIP
    """
    if not isinstance(vector, SteeringVector):
        raise TypeError(f"random_like needs a SteeringVector, got {type(vector).__name__}")
    norm = vector.vector.double().norm()
    if norm == 0:
        raise ValueError("cannot match the norm of a zero vector")
    generator = torch.Generator().manual_seed(int(seed))
    direction = torch.randn(vector.d_model, generator=generator, dtype=torch.float64)
    tensor = (direction / direction.norm() * norm).to(dtype=vector.vector.dtype, device=vector.vector.device)
    return SteeringVector(
        vector.hook_name, tensor, method="random",
        source={"seed": int(seed), "like": vector.method, "norm": float(norm)},
    )
