"""The ``hooksteer export-gguf`` command: a saved vector file to a llama.cpp control vector."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hooksteer.llamacpp.export import _HYPERSTEER_REASON, _PSR_REASON, directions, export_gguf
from hooksteer.llamacpp.format import NotExportableError
from hooksteer.vectors import SteeringFileError, SteeringSet


def load_exportable(path: str | os.PathLike) -> SteeringSet:
    """Load a hooksteer steering file for export, refusing PSR and HyperSteer files with the reason."""
    path = Path(path)
    if path.is_dir():
        if (path / "psr_config.json").is_file():
            raise NotExportableError(f"{path} is a saved PSR: {_PSR_REASON}")
        if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
            raise NotExportableError(f"{path} is a saved HyperSteer: {_HYPERSTEER_REASON}")
        raise SteeringFileError(f"{path} is a folder, not a steering vector file")
    if path.is_file():
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                file_format = (handle.metadata() or {}).get("format")
        except (SafetensorError, OSError, ValueError):
            file_format = None  # SteeringSet.load reports the problem
        if file_format == "hooksteer-psr-1":
            raise NotExportableError(f"{path} holds a PSR: {_PSR_REASON}")
        if file_format == "hooksteer.hypersteer":
            raise NotExportableError(f"{path} holds HyperSteer weights: {_HYPERSTEER_REASON}")
    return SteeringSet.load(path)


def run_export_gguf(args: Any) -> int:
    """``hooksteer export-gguf VECTOR.safetensors --out cv.gguf [--scale S] [--model-gguf PATH]``."""
    steering = load_exportable(args.vector)
    model = args.model_gguf
    if model == "default":
        from hooksteer.models import find_default_gguf

        model = find_default_gguf()
    out = export_gguf(steering, args.out, scale=args.scale, model=model, model_hint=args.model_hint)
    layers = ", ".join(f"direction.{n}" for n in sorted(directions(steering, scale=args.scale)))
    print(f"Wrote {out} ({layers}); steer llama.cpp with: llama-cli -m MODEL.gguf --control-vector {out}")
    return 0


def add_parser(commands: Any) -> Any:
    """Register ``export-gguf`` on the CLI's subparsers."""
    parser = commands.add_parser(
        "export-gguf", help="write a saved vector as a llama.cpp control vector (.gguf, --control-vector)")
    parser.add_argument("vector", help="a .safetensors file saved by hooksteer (SteeringVector / SteeringSet)")
    parser.add_argument("--out", required=True, help="output .gguf")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every direction (default 1)")
    parser.add_argument("--model-gguf", default=None,
                        help="the model .gguf the vector is for (header read to check width and depth); "
                             "'default' = the embedded SmolLM2")
    parser.add_argument("--model-hint", default=None, help="controlvector.model_hint (default: from --model-gguf)")
    parser.set_defaults(func=run_export_gguf)
    return parser
