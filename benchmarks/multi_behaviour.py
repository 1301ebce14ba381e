"""Multi-behaviour grid on the embedded model: alone vs combined vs simultaneous steering (issue 6).

Builds CAA vectors for each behaviour from training A/B items at every grid layer, measures held-out
items (teacher-forced log-odds of the behaviour answer), detects mode collapse, and writes
``result.json``, ``interactions.png``, ``summary.txt`` and ``config.json`` to ``--out``.

    .venv/bin/python benchmarks/multi_behaviour.py --out runs/multi_behaviour
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import hooksteer as hs
from analysis.behaviour_data import available_behaviours, behaviour_items, split_items
from analysis.multi_behaviour import DEFAULT_COLLAPSE_PROMPTS, caa_behaviour, run_grid
from analysis.multi_behaviour_plot import plot_interactions


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--behaviours", default="sycophancy,myopia,love",
                        help=f"comma-separated, from {available_behaviours()}")
    parser.add_argument("--layers", type=_ints, default=[8, 12, 16])
    parser.add_argument("--coefficients", type=_floats, default=[-2.0, 1.0, 2.0, 4.0])
    parser.add_argument("--norm", type=float, default=16.0,
                        help="rescale every vector to this norm (0: unnormalised, as in van der Weij et al.)")
    parser.add_argument("--n-train", type=int, default=10)
    parser.add_argument("--n-eval", type=int, default=6)
    parser.add_argument("--collapse-prompts", type=int, default=3,
                        help="free-text prompts generated per cell for collapse detection (0: answers only)")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/multi_behaviour")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = hs.load_model(progress=True)
    behaviours = []
    for name in [n.strip() for n in args.behaviours.split(",") if n.strip()]:
        train, held_out = split_items(behaviour_items(name), args.n_train, n_eval=args.n_eval, seed=args.seed)
        behaviours.append(caa_behaviour(model, name, train, held_out, layers=args.layers,
                                        norm=args.norm or None))
    print(f"vectors built ({time.perf_counter() - start:.0f} s)", flush=True)
    result = run_grid(model, behaviours, layers=args.layers, coefficients=args.coefficients,
                      collapse_prompts=DEFAULT_COLLAPSE_PROMPTS[: args.collapse_prompts],
                      max_new_tokens=args.max_new_tokens)
    result.config["seconds"] = round(time.perf_counter() - start, 1)
    result.save(out / "result.json")
    plot_interactions(result, out / "interactions.png")
    summary = result.summary()
    (out / "summary.txt").write_text(summary + "\n")
    (out / "config.json").write_text(json.dumps(vars(args), indent=2))
    print(summary)
    print(f"simultaneous layers: {result.simultaneous_layers}")
    print(f"wrote {out}/result.json, interactions.png, summary.txt ({result.config['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
