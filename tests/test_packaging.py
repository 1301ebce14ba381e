"""Packaging as a library: ranges in pyproject.toml, exact pins in constraints.txt, the wheel installs cleanly."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def test_dependencies_are_ranges_and_constraints_pin_inside_them():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = {Requirement(r).name.lower(): Requirement(r) for r in project["dependencies"]}
    for requirement in requirements.values():
        assert not any(spec.operator in ("==", "===") for spec in requirement.specifier), (
            f"{requirement} pins an exact version: a library must not replace its users' packages"
        )
    pins = _pins()
    assert pins["torch"] == "2.13.0" and pins["transformers"].startswith("5.23")
    for name, version in pins.items():
        if name in requirements:
            assert requirements[name].specifier.contains(version, prereleases=True), (name, version)


def test_makefile_installs_with_the_constraints():
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"pip install .*-c constraints\.txt -e \"\.\[dev\]\"", makefile)
    assert "test-llamacpp" in makefile and "check-wheel" in makefile


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_wheel_installs_into_a_clean_venv():
    """scripts/check_wheel.sh: build the wheel, clean venv + constraints, import, use the pytest plugin."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    python = shutil.which("python3") or sys.executable
    result = subprocess.run(["bash", str(REPO / "scripts" / "check_wheel.sh"), python], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "wheel check passed" in result.stdout
