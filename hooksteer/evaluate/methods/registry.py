"""Methods by name, for the CLI and benchmarks: ``prompt``, ``prefix``, ``diffmean``, ``pca``, ``random``, ``none``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from hooksteer.evaluate.methods.common import SteeringMethod
from hooksteer.evaluate.methods.prefix import PrefixSteering
from hooksteer.evaluate.methods.prompt import NoSteering, PromptSteering
from hooksteer.evaluate.methods.texts import TextsFor
from hooksteer.evaluate.methods.vector_methods import DiffMeanMethod, PCAMethod, RandomControl

METHOD_FACTORIES: dict[str, Callable[..., SteeringMethod]] = {
    "prompt": PromptSteering,
    "prefix": PrefixSteering,
    "diffmean": DiffMeanMethod,
    "pca": PCAMethod,
    "random": RandomControl,
    "none": NoSteering,
}


def build_methods(names: Sequence[str], *, layer: int | None = None, seed: int = 0,
                  texts_for: TextsFor | None = None) -> list[SteeringMethod]:
    """Methods by name (``prompt,prefix,diffmean,pca,random,none``); vector methods share ``layer`` and ``texts_for``.

    Example:
        >>> [m.name for m in build_methods(["prompt", "diffmean"])]
        ['prompt', 'diffmean']
    """
    methods: list[SteeringMethod] = []
    for name in names:
        if name not in METHOD_FACTORIES:
            raise ValueError(f"unknown method {name!r}; choose from {sorted(METHOD_FACTORIES)}")
        if name in ("diffmean", "pca"):
            methods.append(METHOD_FACTORIES[name](layer=layer, texts_for=texts_for))
        elif name == "random":
            methods.append(RandomControl(layer=layer, texts_for=texts_for, seed=seed,
                                         base=DiffMeanMethod(layer=layer, texts_for=texts_for)))
        else:
            methods.append(METHOD_FACTORIES[name]())
    if len({m.name for m in methods}) != len(methods):
        raise ValueError(f"method names must be unique, got {[m.name for m in methods]}")
    return methods
