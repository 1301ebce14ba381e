"""Helpers for tests of the scripts in ``benchmarks/`` (not a test module: pytest collects only ``test_*.py``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` as module ``name`` (registered in ``sys.modules``, so that the dataclasses in
    the script resolve their annotations)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def record_evaluated_methods(monkeypatch: Any) -> list[str]:
    """The list that the evaluation protocol fills with the name of each method it evaluates (generates and judges)
    from now on; methods reused from a saved evaluation are not in it."""
    from hooksteer.evaluate import protocol

    evaluated: list[str] = []
    original = protocol.evaluate_concept

    def counting(model, method, *args, **kwargs):
        evaluated.append(method.name)
        return original(model, method, *args, **kwargs)

    monkeypatch.setattr(protocol, "evaluate_concept", counting)
    return evaluated
