"""``hooksteer train-sae``: train an SAE with sae-lens on a model's residual stream over the packaged corpora.

Writes ``cfg.json`` + ``sae_weights.safetensors`` (sae-lens format, ``SAE.load_from_disk(out)``),
``metrics.json`` (held-out explained variance, L0, dead fraction), ``training_settings.json`` and the
command's ``config.json`` to ``--out``.

Example:
    $ hooksteer train-sae --hook blocks.20.hook_resid_post --d-sae 2048 --k 32 --tokens 150000 --out runs/sae/l20
    $ hooksteer train-sae --settings my_settings.json --out runs/sae/custom
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from analysis.sae_training import ARCHITECTURES, SAETrainingSettings

__all__ = ["add_parser", "run", "settings_from_args"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``train-sae`` on an ``argparse`` subparsers object."""
    defaults = SAETrainingSettings()
    parser = subparsers.add_parser("train-sae", help="train a sparse autoencoder (sae-lens) on the packaged corpora")
    parser.add_argument("--model", default=None, help="model name for hooksteer.load_model (default: embedded)")
    parser.add_argument("--settings", help="JSON file of SAETrainingSettings fields (flags given override it)")
    parser.add_argument("--hook", dest="hook_name", help=f"hook name (default {defaults.hook_name})")
    parser.add_argument("--architecture", choices=ARCHITECTURES, help=f"default {defaults.architecture}")
    parser.add_argument("--d-sae", dest="d_sae", type=int, help=f"features (default {defaults.d_sae})")
    parser.add_argument("--k", type=int, help=f"active features per token for topk/batchtopk (default {defaults.k})")
    parser.add_argument("--l1", dest="l1_coefficient", type=float, help="sparsity coefficient (standard/jumprelu)")
    parser.add_argument("--tokens", dest="training_tokens", type=int,
                        help=f"training tokens (default {defaults.training_tokens})")
    parser.add_argument("--context-size", type=int, help=f"default {defaults.context_size}")
    parser.add_argument("--batch-tokens", dest="train_batch_size_tokens", type=int,
                        help=f"SAE batch in tokens (default {defaults.train_batch_size_tokens})")
    parser.add_argument("--lr", type=float, help=f"default {defaults.lr}")
    parser.add_argument("--corpora", help="comma-separated: wiki,bbc (default both)")
    parser.add_argument("--heldout-texts", type=int, help=f"texts kept out for metrics (default {defaults.heldout_texts})")
    parser.add_argument("--eval-tokens", type=int, help=f"held-out tokens for metrics (default {defaults.eval_tokens})")
    parser.add_argument("--seed", type=int, help="default 0")
    parser.add_argument("--device", help="default cpu")
    parser.add_argument("--out", default="runs/sae", help="output folder (default runs/sae)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
    return parser


_FIELDS = ("hook_name", "architecture", "d_sae", "k", "l1_coefficient", "training_tokens", "context_size",
           "train_batch_size_tokens", "lr", "heldout_texts", "eval_tokens", "seed", "device")


def settings_from_args(args: argparse.Namespace) -> SAETrainingSettings:
    """Settings from ``--settings`` JSON (if any) overridden by the flags that were given."""
    data: dict[str, Any] = {}
    if args.settings:
        path = Path(args.settings)
        if not path.is_file():
            raise FileNotFoundError(f"settings file {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"settings file {path} is not valid JSON: {error}") from error
        if not isinstance(data, dict):
            raise ValueError(f"settings file {path} must hold a JSON object of SAETrainingSettings fields")
    for name in _FIELDS:
        value = getattr(args, name, None)
        if value is not None:
            data[name] = value
    if getattr(args, "corpora", None):
        data["corpora"] = [c.strip() for c in args.corpora.split(",") if c.strip()]
    return SAETrainingSettings.from_dict(data)


def run(args: argparse.Namespace) -> int:
    """Train, save and print the held-out metrics."""
    import torch

    import hooksteer as hs
    from analysis.sae_training import train_sae
    from hooksteer.io import atomic_write_json

    settings = settings_from_args(args)
    out = Path(args.out)
    config = {"command": "train-sae", "settings": {k: v for k, v in vars(args).items() if k != "func"},
              "resolved": settings.to_dict()}
    atomic_write_json(out / "config.json", config, default=str)
    torch.manual_seed(settings.seed)
    model = hs.load_model(args.model) if args.model else hs.load_model()
    start = time.perf_counter()
    result = train_sae(model, settings, out, progress=not args.no_progress)
    m = result.metrics
    print(f"SAE {settings.architecture} d_sae={settings.d_sae} at {settings.hook_name}, "
          f"{settings.training_tokens} training tokens ({time.perf_counter() - start:.0f} s)")
    print(f"held-out ({m.n_tokens} tokens): explained variance {m.explained_variance:.3f}, L0 {m.l0:.1f}, "
          f"dead fraction {m.dead_fraction:.3f}")
    print(f"saved to {out}/ (load with sae_lens.SAE.load_from_disk({str(out)!r}))")
    return 0
