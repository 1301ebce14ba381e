"""Argument checks the CLI runs before any model is loaded or any file is written.

:func:`check_arguments` is called by :func:`hooksteer.cli.main` right after parsing: a bad count, a
non-finite number, an input path that is missing or a folder, or an output path that cannot be written
raises :class:`UsageError` (printed as one line ``hooksteer COMMAND: error: ...``, exit code 2), so a
failed invocation never computes anything and never overwrites an earlier run's records.
Checks that need the model (layer in range, hook name) run right after it is loaded, still before
any computation or writing.

Example:
    >>> import argparse
    >>> count(argparse.Namespace(batch_size=0), "batch_size", 1)
    Traceback (most recent call last):
    ...
    hooksteer.cli_checks.UsageError: --batch-size must be an integer >= 1, got 0
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["UsageError", "check_arguments", "one_line", "output_dir", "output_file", "input_file"]

#: Longest error line the CLI prints (longer messages are cut with "…").
MAX_LINE = 300


class UsageError(ValueError):
    """A command-line argument is invalid (the CLI prints it as one line and exits with code 2)."""


def one_line(message: object, limit: int = MAX_LINE) -> str:
    """``message`` on one line (whitespace runs collapsed), cut to ``limit`` characters with "…".

    Example:
        >>> one_line("a\\n  b " + "x" * 20, limit=10)
        'a b xxxxx…'
    """
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def count(args: argparse.Namespace, name: str, minimum: int = 0, flag: str | None = None) -> None:
    """``args.<name>`` (when set) must be an integer >= ``minimum``."""
    value = getattr(args, name, None)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{flag or _flag(name)} must be an integer >= {minimum}, got {value!r}")


def number(args: argparse.Namespace, name: str, *, minimum: float | None = None, positive: bool = False,
           flag: str | None = None) -> None:
    """``args.<name>`` (when set) must be a finite number (> 0 with ``positive``, >= ``minimum``)."""
    value = getattr(args, name, None)
    if value is None:
        return
    label = flag or _flag(name)
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise UsageError(f"{label} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise UsageError(f"{label} must be > 0, got {value!r}")
    if minimum is not None and value < minimum:
        raise UsageError(f"{label} must be >= {minimum}, got {value!r}")


def input_file(path: str | os.PathLike | None, flag: str) -> Path | None:
    """An existing, readable file (not a folder)."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder, not a file")
    if not path.is_file():
        raise UsageError(f"{flag} {path} does not exist")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{flag} {path} is not readable")
    return path


def _writable_folder(path: Path, flag: str, target: Path) -> None:
    """``path`` is, or can be created as, a writable folder."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {target}: {path} is a file, not a folder")
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise UsageError(f"{flag} {target}: {existing} is a file, so the folder cannot be created")
    if existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {target}: {existing} is not writable")


def output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """An output folder that exists or can be created, and can be written (nothing is created here)."""
    path = Path(path)
    _writable_folder(path, flag, path)
    return path


def output_file(path: str | os.PathLike, flag: str = "--out") -> Path:
    """An output file path whose folder can be written and that is not itself a folder."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file name")
    _writable_folder(path.parent, flag, path)
    return path


def _texts(values: list[str] | None, flag: str) -> None:
    for value in values or []:
        if not value.strip():
            raise UsageError(f"{flag} is empty")


def _check_demo(args: argparse.Namespace) -> None:
    from hooksteer.data.contrast import available_contrast_sets

    if args.contrast_set not in available_contrast_sets():
        raise UsageError(f"unknown --contrast-set {args.contrast_set!r}; available: {available_contrast_sets()}")
    count(args, "layer")
    number(args, "coefficient")
    count(args, "max_new_tokens", 1)
    _texts(args.prompt, "--prompt")
    for name in ("hypersteer_steps", "hypersteer_train_concepts", "hypersteer_held_out"):
        count(args, name)
    number(args, "hypersteer_factor")
    positions = getattr(args, "hypersteer_fit_positions", None)
    if positions is not None:
        from hooksteer.psr.hooks import check_mode

        try:
            check_mode(positions)
        except ValueError as error:
            raise UsageError(f"--hypersteer-fit-positions: {error}") from None
    output_dir(args.out)


def _check_diffmean(args: argparse.Namespace) -> None:
    from hooksteer.data.contrast import available_contrast_sets

    if args.contrast_set:
        if args.contrast_set not in available_contrast_sets():
            raise UsageError(f"unknown --contrast-set {args.contrast_set!r}; available: {available_contrast_sets()}")
    elif not (args.positive and args.negative):
        raise UsageError("give --contrast-set NAME, or both --positive FILE and --negative FILE")
    else:
        for flag, path in (("--positive", args.positive), ("--negative", args.negative)):
            file = input_file(path, flag)
            if file is not None and not file.read_text(errors="replace").strip():
                raise UsageError(f"{flag} {path} holds no text")
    if not args.hook.strip():
        raise UsageError("--hook is empty")
    output_file(args.out)
    if getattr(args, "gguf", None):
        output_file(args.gguf, "--gguf")


def _check_export_gguf(args: argparse.Namespace) -> None:
    if not Path(args.vector).is_dir():  # a saved PSR / HyperSteer folder is refused by the command, with the reason
        input_file(args.vector, "VECTOR")
    number(args, "scale")
    if args.model_gguf not in (None, "default"):
        input_file(args.model_gguf, "--model-gguf")
    out = output_file(args.out).resolve()
    for flag, path in (("VECTOR", args.vector), ("--model-gguf", args.model_gguf)):
        if path not in (None, "default") and Path(path).resolve() == out:
            raise UsageError(f"--out {args.out} is the input {flag}; writing would destroy it, give another file")


def _check_generate(args: argparse.Namespace) -> None:
    from hooksteer.vectors import SteeringSet

    SteeringSet.load(input_file(args.vector, "--vector"))  # header and values checked; width once loaded
    number(args, "coefficient")
    count(args, "max_new_tokens", 1)
    _texts(args.prompt, "--prompt")


def _check_evaluate(args: argparse.Namespace) -> None:
    from hooksteer.evaluate.methods import METHOD_FACTORIES
    from hooksteer.evaluate.protocol import check_factors

    count(args, "concepts", 1)
    count(args, "prompts", 2)  # halves: one chooses the factor, the other reports
    count(args, "negatives", 0)
    count(args, "layer", 0)
    count(args, "max_new_tokens", 1)
    count(args, "batch_size", 1)
    if args.sample:
        number(args, "temperature", positive=True)
    if args.factors is not None:
        try:
            values = [float(part) for part in args.factors.replace(",", " ").split()]
        except ValueError:
            raise UsageError(f"--factors must be numbers separated by commas, got {args.factors!r}") from None
        try:
            check_factors(values)
        except ValueError as error:
            raise UsageError(f"--factors: {error}") from None
    if args.methods is not None:
        names = [n.strip() for n in args.methods.split(",") if n.strip()]
        unknown = [n for n in names if n not in METHOD_FACTORIES]
        if not names or unknown:
            raise UsageError(f"--methods: unknown method(s) {unknown or [args.methods]}; choose from "
                             f"{sorted(METHOD_FACTORIES)}")
        if len(set(names)) != len(names):
            raise UsageError(f"--methods lists a method twice: {names}")
        if "prefix" in names and getattr(args, "model_class", "bridge") != "bridge":
            raise UsageError("--methods prefix needs --model-class bridge (prefix steering runs on its Hugging Face "
                             "twin)")
    output_dir(args.out)


def _check_train_hypersteer(args: argparse.Namespace) -> None:
    from hooksteer.hypersteer.config import HyperSteerConfig
    from hooksteer.hypersteer.run import RUN_KEYS

    path = input_file(args.config, "run file")
    try:
        raw = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"run file {path} is not valid JSON: {error}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"run file {path} must hold a JSON object of HyperSteerConfig fields and run settings, "
                         f"got {type(raw).__name__}")
    run = {key: raw.pop(key) for key in RUN_KEYS if key in raw}
    for key in ("model", "examples", "eval_examples", "split", "out", "teacher_cache"):
        if key in run and not isinstance(run[key], str):
            raise UsageError(f"run file {path}: {key!r} must be a string, got {run[key]!r}")
    fraction = run.get("eval_fraction", 0.1)
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 <= fraction < 1:
        raise UsageError(f"run file {path}: 'eval_fraction' must be a number in [0, 1), got {fraction!r}")
    try:
        config = HyperSteerConfig.from_dict(raw)
        config.validate()
    except (TypeError, ValueError) as error:
        raise UsageError(f"run file {path}: {error}") from None
    examples = args.examples or run.get("examples")
    eval_examples = args.eval_examples or run.get("eval_examples")
    if getattr(config, "loss", "ce") == "distill":
        if examples or eval_examples:
            raise UsageError("loss='distill' builds its own data (\"data\" in the run file); --examples and "
                             "\"examples\" are for loss='ce'")
        _check_distill_data(path, run.get("data"))
    else:
        if not examples:
            raise UsageError('give the training examples: --examples FILE.jsonl or "examples" in the run file')
        input_file(examples, "examples file")
        input_file(eval_examples, "eval examples file")
    input_file(run.get("split"), "split file")
    output_dir(Path(args.out or run.get("out") or "runs/hypersteer"))
    if args.resume not in (None, "latest") and not Path(args.resume).is_dir():
        raise UsageError(f"--resume {args.resume}: no such checkpoint folder (or give 'latest')")


def _check_distill_data(path: Path, data: Any) -> None:
    if data is None:
        return
    if not isinstance(data, dict):
        raise UsageError(f"run file {path}: 'data' must be a JSON object of distillation data settings, "
                         f"got {type(data).__name__}")
    try:
        from hooksteer.hypersteer.dataset import DistillDataSettings
    except ImportError:  # pragma: no cover - older layout
        return
    try:
        DistillDataSettings(**data)
    except (TypeError, ValueError) as error:
        raise UsageError(f"run file {path}: invalid 'data' settings: {error}") from None


def _check_train_psr(args: argparse.Namespace) -> None:
    input_file(args.examples, "--examples")
    count(args, "layer")
    if args.layers is not None and min(args.layers) < 0:
        raise UsageError(f"--layers must be >= 0, got {args.layers}")
    count(args, "steps")
    number(args, "lr", positive=True)
    count(args, "batch_size", 1)
    number(args, "regulariser", minimum=0.0)
    count(args, "max_response_tokens", 1)
    count(args, "threads", 1)
    output_dir(args.out)


def _check_train_sae(args: argparse.Namespace) -> None:
    input_file(args.settings, "--settings")
    for name, flag in (("d_sae", "--d-sae"), ("k", "--k"), ("training_tokens", "--tokens"),
                       ("context_size", "--context-size"), ("train_batch_size_tokens", "--batch-tokens"),
                       ("heldout_texts", "--heldout-texts"), ("eval_tokens", "--eval-tokens")):
        count(args, name, 1, flag=flag)
    number(args, "lr", positive=True)
    number(args, "l1_coefficient", minimum=0.0, flag="--l1")
    output_dir(args.out)


CHECKS: dict[str, Callable[[argparse.Namespace], None]] = {
    "demo": _check_demo,
    "diffmean": _check_diffmean,
    "generate": _check_generate,
    "evaluate": _check_evaluate,
    "train-hypersteer": _check_train_hypersteer,
    "train-psr": _check_train_psr,
    "train-sae": _check_train_sae,
    "export-gguf": _check_export_gguf,
}


def check_arguments(args: argparse.Namespace) -> None:
    """Run the checks of ``args.command`` (commands without checks pass); raises :class:`UsageError`."""
    check: Callable[[argparse.Namespace], Any] | None = CHECKS.get(getattr(args, "command", ""))
    if check is not None:
        check(args)
