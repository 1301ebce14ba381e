"""Benchmark: does a trained HyperSteer tell concepts apart? Cosines of its vectors, for a saved run.

Reads a finished ``benchmarks/hypersteer_eval.py`` output folder (its ``results.json``, ``split.json``
and ``hyper-<variant>/`` hypernetworks), rebuilds the same held-out concepts and eval prompts, and
reports :func:`hooksteer.hypersteer.diagnostics.vector_separation` for every variant: the mean cosine
between H's vectors for two different held-out concepts at the same eval prompt (1.0 = H ignores the
steering prompt) and, for the context variants, between one concept's vectors at two eval prompts.
Newer ``hypersteer_eval`` runs record the same figures themselves; this script covers older runs.

With ``--compare OTHER_RUN`` (a run on the same split, e.g. the same data with more H blocks) it also
reports :func:`~hooksteer.hypersteer.diagnostics.vector_agreement`: the mean cosine between the two runs'
vectors for the same held-out (concept, eval prompt) pairs, per variant both runs trained.

Writes ``separation.json`` into the run folder and prints a markdown table.

Usage::

    .venv/bin/python benchmarks/hypersteer_separation.py runs/benchmarks/hypersteer_eval
    .venv/bin/python benchmarks/hypersteer_separation.py runs/hs_scale400 --compare runs/hs_scale400_b20
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
import common  # noqa: E402
from common import fmt, log  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="output folder of benchmarks/hypersteer_eval.py")
    p.add_argument("--compare", type=Path, default=None, help="another hypersteer_eval output folder on the same split")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--device", default=None, help="torch device (default: CPU, or CUDA when available)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    results_path = args.run / "results.json"
    if not results_path.is_file():
        raise SystemExit(f"{results_path} not found: pass the output folder of benchmarks/hypersteer_eval.py")
    results = json.loads(results_path.read_text())
    config = results.get("settings") or results["config"]  # "config": runs written before the distillation rewrite
    tiny = bool(results.get("tiny", config.get("tiny")))
    run_args = argparse.Namespace(**{**config, "tiny": tiny})
    import torch

    torch.set_num_threads(args.threads)

    from hooksteer.data.splits import DatasetSplit
    from hooksteer.hypersteer import HyperSteer
    from hooksteer.hypersteer.diagnostics import vector_agreement, vector_separation

    model = common.load_model(tiny, config["seed"], config.get("model"), args.device)
    concepts, prompts = common.load_concepts_and_prompts(run_args, config["train_concepts"] + config["held_out"])
    split = DatasetSplit.load(args.run / "split.json")
    held_out = split.select(concepts, split.held_out_concepts)
    eval_prompts = split.select(prompts, split.eval_prompts)
    if args.compare is not None and DatasetSplit.load(args.compare / "split.json") != split:
        raise SystemExit(f"{args.compare} was run on another split than {args.run}: its vectors are not comparable")
    report: dict[str, Any] = {"run": str(args.run), "compare": str(args.compare) if args.compare else None,
                              "variants": {}}
    steering_prompts, base_prompts = [c.steering_prompts[0] for c in held_out], [p.text for p in eval_prompts]
    for variant in config["variants"]:
        if not (args.run / f"hyper-{variant}").is_dir():
            continue
        hyper = HyperSteer.load(args.run / f"hyper-{variant}", model)
        hyper.eval()
        report["variants"][variant] = vector_separation(hyper, steering_prompts, base_prompts)
        log(f"{variant}: {report['variants'][variant]}")
        if args.compare is not None and (args.compare / f"hyper-{variant}").is_dir():
            other = HyperSteer.load(args.compare / f"hyper-{variant}", model)
            other.eval()
            report["variants"][variant]["agreement_with_compare"] = vector_agreement(hyper, other, steering_prompts,
                                                                                     base_prompts)
            report["variants"][variant]["compare_n_blocks"] = other.config.n_blocks
    (args.run / "separation.json").write_text(json.dumps(report, indent=2))
    from hooksteer.evaluate.report import table

    body = [[v, str(r["n_concepts"]), str(r["n_prompts"]), fmt(r["between_concepts"]), fmt(r["within_concept"]),
             fmt(r.get("agreement_with_compare"))] for v, r in report["variants"].items()]
    print(table(body, ("variant", "concepts", "prompts", "cos between concepts", "cos within concept",
                       "cos with --compare run")))
    return report


if __name__ == "__main__":
    main()
