"""Benchmark: which features of a steering prompt let a *linear* map predict the oracle's vector of an unseen concept.

HyperSteer's head is linear on pooled features of the steering prompt (``Δ = b + W·(x − μ)``). On held-in concepts a
trained H reaches the oracle; on held-out concepts it sits near the floor (``benchmarks/hypersteer_eval.py``). This
benchmark separates the two things H has to get right — *which features it reads* and *how strongly its map is
regularised* — from end-to-end training, so many choices can be compared in one cheap run:

1. read the split, teacher settings and held-out oracle of an earlier ``hypersteer_eval`` run (``--source``);
2. train the **oracle on the training concepts** too (a free vector per training concept, same objective, data and
   settings as the source run's oracle; saved under ``--out`` and reused on a rerun);
3. compute **features** of every steering prompt with the frozen base model: the residual stream after each block in
   ``--layers`` (``-1`` = the token embeddings), pooled three ways — ``prompt`` (mean over the steering prompt, as H
   reads it), ``title`` (mean over the concept title's tokens inside the steering prompt) and ``title_alone`` (mean
   over the title run on its own) — each normalised to unit RMS;
4. fit a **ridge map** features → oracle vectors on the training concepts, its strength chosen by 5-fold
   cross-validation over training concepts (R² of the concept-specific part), and predict the held-out concepts;
5. score the predictions with H's own held-out measures: **eval KL to the prompted model** on the never-trained eval
   pairs (same as ``hypersteer_eval``), cosine with the held-out oracle's vectors, and between-concept cosine; with
   the oracle, the floor (the training oracle's mean vector) and no steering beside them;
6. a **scale curve**: the best feature set refitted on the first 12 / 25 / 50 / 100 training concepts;
7. the **direction prior** with no map at all: û = the held-out steering prompt's token-embedding features minus the
   training concepts' mean, unit norm (``prompt@-1``: mean over the steering prompt; ``title@-1``: the title's tokens).
   Its cosine with the concept-specific part of the oracle's vector (against the same with concepts shuffled), and
   the held-out eval KL of ``floor + g·û`` (the source run's trained floor) for each ``--prior-gains`` g — what
   HyperSteer's ``prior_gain`` starts from.

Usage::

    .venv/bin/python benchmarks/hypersteer_probe.py --source runs/hs_distill100 --out runs/hs_probe
    .venv/bin/python benchmarks/hypersteer_probe.py --tiny          # pipeline check on a tiny model (< 1 min)

Outputs under ``--out``: ``oracle_train/`` (the training concepts' oracle), ``features.safetensors``,
``results.json``, ``results.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
import common  # noqa: E402
import hypersteer_eval  # noqa: E402

from hooksteer.hypersteer.diagnostics import mean_pairwise_cosine  # noqa: E402
from hooksteer.hypersteer.ridge import cross_validate, fit_ridge, specific_r2  # noqa: E402

POOLINGS = ("prompt", "title", "title_alone")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--source", type=Path, help="an earlier hypersteer_eval output folder (settings.json, "
                        "split.json, oracle/); built here with --tiny")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/hypersteer_probe"), help="output folder")
    parser.add_argument("--layers", type=int, nargs="+", default=[-1, 4, 8, 12, 16, 20, 24, 29],
                        help="feature layers (block index whose resid_post is read; -1 = token embeddings)")
    parser.add_argument("--curve", type=int, nargs="*", default=[12, 25, 50], help="training-concept counts for "
                        "the scale curve (the full set is added)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds over training concepts")
    parser.add_argument("--prior-gains", type=float, nargs="+", default=[10.0, 20.0, 30.0],
                        help="norms g of the direction prior added to the source run's floor (floor + g·û)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--tiny", action="store_true", help="tiny random model: runs hypersteer_eval --tiny first "
                        "as the source, numbers meaningless")
    args = parser.parse_args(argv)
    problems = []
    if not args.tiny and args.source is None:
        problems.append("--source is required (an earlier hypersteer_eval --out folder), or use --tiny")
    if args.source is not None and not (args.source / "settings.json").is_file():
        problems.append(f"--source {args.source} has no settings.json (not a hypersteer_eval output folder)")
    if args.folds < 2:
        problems.append(f"--folds must be >= 2, got {args.folds}")
    if any(n < 2 for n in args.curve):
        problems.append(f"--curve sizes must be >= 2, got {args.curve}")
    if any(not g > 0 for g in args.prior_gains):
        problems.append(f"--prior-gains must be > 0, got {args.prior_gains}")
    if args.threads < 1:
        problems.append(f"--threads must be >= 1, got {args.threads}")
    if problems:
        parser.error("; ".join(problems))
    return args


# ----------------------------------------------------------------------------------------------- features
def title_span(model: Any, text: str, title: str) -> tuple[int, int] | None:
    """Token span ``[start, end)`` of the first occurrence of ``title`` in ``text`` (as tokenised with BOS)."""
    at = text.find(title)
    if at < 0:
        return None
    # the space before the title belongs to its first token (" river") in space-prefix BPE vocabularies
    before = model.to_tokens(text[:at].rstrip())[0] if text[:at].strip() else model.to_tokens("")[0]
    through = model.to_tokens(text[: at + len(title)])[0]
    start, end = len(before), len(through)
    return (start, end) if end > start else None


@torch.no_grad()
def steering_features(model: Any, steering_prompts: Sequence[str], titles: Sequence[str],
                      layers: Sequence[int]) -> dict[str, torch.Tensor]:
    """``{f"{pooling}@{layer}": (n, d_model)}`` unit-RMS features of each steering prompt (see the module doc)."""
    from hooksteer.hypersteer.data import pool_span

    names = [("blocks.0.hook_resid_pre" if layer < 0 else f"blocks.{layer}.hook_resid_post") for layer in layers]
    rows: dict[str, list[torch.Tensor]] = {f"{p}@{layer}": [] for p in POOLINGS for layer in layers}
    for text, title in zip(steering_prompts, titles, strict=True):
        tokens = model.to_tokens(text)
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
        alone = model.to_tokens(title)
        _, cache_alone = model.run_with_cache(alone, names_filter=lambda n: n in names)
        start, end = pool_span(model, tokens.shape[1])
        span = title_span(model, text, title) or (start, end)
        alone_start = pool_span(model, alone.shape[1])[0] if alone.shape[1] > 2 else alone.shape[1] - 1
        for layer, name in zip(layers, names, strict=True):
            acts = cache[name][0].float()
            for pooling, piece in (("prompt", acts[start:end]), ("title", acts[span[0]:span[1]]),
                                   ("title_alone", cache_alone[name][0, alone_start:].float())):
                pooled = piece.mean(0)
                rows[f"{pooling}@{layer}"].append(pooled / pooled.pow(2).mean().sqrt().clamp_min(1e-8))
    return {key: torch.stack(value) for key, value in rows.items()}


def _feature_key(split: str, key: str) -> str:
    return f"{split}.{key.replace('@', '_at_').replace('-', 'm')}"


def save_features(path: Path, x_train: dict[str, torch.Tensor], x_held: dict[str, torch.Tensor],
                  layers: Sequence[int], train_keys: Sequence[str], held_keys: Sequence[str]) -> None:
    """Write the features (safetensors, atomically), with the layers and steering prompts they were made for."""
    from safetensors.torch import save_file

    from hooksteer.io import atomic_write_files

    tensors = {**{_feature_key("train", k): v.contiguous() for k, v in x_train.items()},
               **{_feature_key("held_out", k): v.contiguous() for k, v in x_held.items()}}
    meta = {"layers": json.dumps(list(layers)), "prompts": json.dumps([list(train_keys), list(held_keys)])}
    atomic_write_files({path: lambda tmp: save_file(tensors, str(tmp), metadata=meta)})


def load_features(path: Path, layers: Sequence[int], train_keys: Sequence[str], held_keys: Sequence[str]
                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None:
    """Features saved by :func:`save_features` for at least ``layers`` and for these steering prompts; None when
    there are none."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as handle:
        prompts = (handle.metadata() or {}).get("prompts")
    if prompts is None or json.loads(prompts) != [list(train_keys), list(held_keys)]:
        return None
    tensors = load_file(str(path))
    keys = [f"{p}@{layer}" for p in POOLINGS for layer in layers]
    if not all(_feature_key(split, k) in tensors for split in ("train", "held_out") for k in keys):
        return None
    return ({k: tensors[_feature_key("train", k)] for k in keys}, {k: tensors[_feature_key("held_out", k)] for k in keys})


# ----------------------------------------------------------------------------------------------- main
def source_run(args: argparse.Namespace) -> Path:
    """The hypersteer_eval folder to read (with --tiny: made now by hypersteer_eval --tiny under --out)."""
    if not args.tiny:
        return args.source
    source = args.out / "source"
    if not (source / "results.json").is_file():
        hypersteer_eval.main(["--tiny", "--out", str(source), "--curve"])
    return source


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from hooksteer.hypersteer.bounds import ConceptVectors
    from hooksteer.hypersteer.trainer import mean_loss
    from hooksteer.io import atomic_write_text

    source = source_run(args)
    saved = json.loads((source / "settings.json").read_text())
    saved.pop("class", None)
    s = hypersteer_eval.HyperSteerEvalSettings(**saved)
    tiny = args.tiny
    run = argparse.Namespace(threads=args.threads, out=args.out)
    began = common.start_run(run)
    common.log(f"estimated time on cpu: oracle on {s.train_concepts} training concepts ≈ "
               f"{hypersteer_eval.steps_for(s.train_concepts * s.train_prompts, s.bound_epochs, s.batch_size) * 2.4 / 60:.0f}"
               f" min (2.4 s/step; measured 1.6), features ≈ {(s.train_concepts + s.held_out) * 0.95:.0f} s (measured "
               "114 s for 120 concepts), eval KL ≈ 20–40 s per map, ~18 maps")

    from hooksteer.data.splits import DatasetSplit

    model = common.load_model(tiny, s.seed, s.model, s.device)
    generator = common.load_bridge(tiny, s.seed, s.device) if s.model is None and not tiny else model
    data_args = argparse.Namespace(tiny=tiny, concept_seed=s.concept_seed, prompt_sources=s.prompt_sources)
    concepts, prompts = common.load_concepts_and_prompts(data_args, s.train_concepts + s.held_out)
    prompts = common.pick_prompts(prompts, s.seed, s.train_prompts + s.eval_prompts)
    split = DatasetSplit.load(source / "split.json")
    train_concepts = split.select(concepts, split.train_concepts)
    held_out = split.select(concepts, split.held_out_concepts)
    train_prompts = split.select(prompts, split.train_prompts)
    eval_prompts = split.select(prompts, split.eval_prompts)
    cache = Path(s.teacher_cache) if s.teacher_cache else source / "teacher"
    train_data = hypersteer_eval.teacher_data(s, model, generator, train_concepts, train_prompts, cache, tiny)
    eval_data = hypersteer_eval.teacher_data(s, model, generator, held_out, eval_prompts, cache, tiny)

    # ---- oracles: the training concepts' (trained here) and the held-out concepts' (the source run's)
    common.log(f"oracle on the {len(train_concepts)} training concepts ...")
    train_keys = [c.steering_prompt for c in train_concepts]
    oracle_train = ConceptVectors.oracle(model, train_keys, hypersteer_eval.bound_config(
        s, len(train_data), s.bound_epochs))
    training = hypersteer_eval.train(oracle_train, train_data.records, [], args.out / "oracle_train", tiny)
    oracle_held_out = ConceptVectors.load(source / "oracle", model)
    y_train = oracle_train.vectors(train_keys).cpu()
    held_keys = [c.steering_prompt for c in held_out]
    y_held = oracle_held_out.vectors(held_keys).cpu()

    # ---- features
    layers = [layer for layer in args.layers if -1 <= layer < model.cfg.n_layers]
    if not layers:
        raise SystemExit(f"hypersteer_probe: error: no --layers inside the model's -1..{model.cfg.n_layers - 1}")
    common.log(f"features at layers {layers} ...")
    started = time.perf_counter()
    cached = load_features(args.out / "features.safetensors", layers, train_keys, held_keys)
    if cached is None:
        x_train = steering_features(model, train_keys, [c.title for c in train_concepts], layers)
        x_held = steering_features(model, held_keys, [c.title for c in held_out], layers)
        save_features(args.out / "features.safetensors", x_train, x_held, layers, train_keys, held_keys)
    else:
        x_train, x_held = cached
    feature_seconds = time.perf_counter() - started

    def table_of(vectors: torch.Tensor) -> ConceptVectors:
        table = ConceptVectors.oracle(model, held_keys, oracle_held_out.config)
        with torch.no_grad():
            table.table.copy_(vectors.to(table.table))
        return table

    def held_out_kl(vectors: torch.Tensor) -> float:
        return mean_loss(table_of(vectors), eval_data.records)

    # ---- references
    floor_vector = y_train.mean(0, keepdim=True).expand(len(held_keys), -1)
    references = {"none": held_out_kl(torch.zeros_like(y_held)), "oracle (held-out)": held_out_kl(y_held),
                  "training-oracle mean (floor)": held_out_kl(floor_vector)}
    source_results = json.loads((source / "results.json").read_text())

    # ---- ridge per feature set
    rows = []
    predictions: dict[str, torch.Tensor] = {}
    for key in x_train:
        cv = cross_validate(x_train[key], y_train, args.folds, s.seed)
        alpha = max(cv, key=cv.get)
        ridge = fit_ridge(x_train[key], y_train, alpha)
        predicted = predictions[key] = ridge(x_held[key])
        rows.append({"features": key, "alpha": alpha, "cv_r2": cv[alpha],
                     "held_out_r2": specific_r2(predicted, y_held, y_train.mean(0)),
                     "cosine_with_oracle": float(torch.nn.functional.cosine_similarity(predicted, y_held).mean()),
                     "between_concept_cosine": mean_pairwise_cosine(predicted),
                     "norm": float(predicted.norm(dim=-1).mean())})
    rows.sort(key=lambda r: -r["cv_r2"])
    common.log("eval KL of the best feature sets ...")
    chosen = {rows[0]["features"]} | {max((r for r in rows if r["features"].startswith(p + "@")),
                                          key=lambda r: r["cv_r2"])["features"] for p in POOLINGS}
    chosen |= {"prompt@12"} & set(x_train)  # what the benchmark's H reads
    for row in rows:
        if row["features"] in chosen:
            row["held_out_kl"] = held_out_kl(predictions[row["features"]])

    # ---- scale curve with the best feature set (chosen on training-concept cross-validation)
    best = rows[0]["features"]
    curve = []
    for n in sorted({*[n for n in args.curve if n < len(train_keys)], len(train_keys)}):
        cv = cross_validate(x_train[best][:n], y_train[:n], min(args.folds, n), s.seed)
        alpha = max(cv, key=cv.get)
        predicted = fit_ridge(x_train[best][:n], y_train[:n], alpha)(x_held[best])
        curve.append({"train_concepts": n, "alpha": alpha, "held_out_kl": held_out_kl(predicted),
                      "held_out_r2": specific_r2(predicted, y_held, y_train[:n].mean(0)),
                      "cosine_with_oracle": float(torch.nn.functional.cosine_similarity(predicted, y_held).mean())})

    # ---- the direction prior: the steering prompt's own centred token-embedding direction, no map
    common.log("direction prior ...")
    floor = ConceptVectors.load(source / "floor", model).vectors(["*"]).cpu()[0]
    specific = y_held - y_train.mean(0)
    shuffled = torch.roll(torch.arange(len(held_keys)), 1)
    prior = []
    for key in ("prompt@-1", "title@-1"):
        if key not in x_train:
            continue
        direction = torch.nn.functional.normalize(x_held[key] - x_train[key].mean(0), dim=-1)
        row = {"features": key,
               "cosine_with_oracle_specific": float(torch.nn.functional.cosine_similarity(specific, direction).mean()),
               "cosine_shuffled": float(torch.nn.functional.cosine_similarity(specific, direction[shuffled]).mean()),
               "held_out_kl": {str(g): held_out_kl(floor + g * direction) for g in args.prior_gains}}
        prior.append(row)
    references["source floor"] = held_out_kl(floor.expand(len(held_keys), -1).clone())

    report = {"source": str(source), "command": "benchmarks/hypersteer_probe.py " + " ".join(sys.argv[1:]),
              "train_concepts": len(train_keys), "held_out_concepts": len(held_keys),
              "eval_pairs": len(eval_data.records), "references_kl": references, "ridge": rows, "curve": curve, "prior": prior,
              "prior_gains": args.prior_gains,
              "oracle_train": {k: training.get(k) for k in ("steps", "seconds", "tokens_per_second")},
              "feature_seconds": feature_seconds,
              "source_kl": source_results.get("eval_kl"), "source_separation": source_results.get("diagnostics"),
              "seconds": time.perf_counter() - began}
    atomic_write_text(args.out / "results.json", json.dumps(report, indent=2))
    atomic_write_text(args.out / "results.md", markdown(report))
    common.log(f"wrote {args.out / 'results.md'}")
    return report


def markdown(report: dict[str, Any]) -> str:
    f = common.fmt
    lines = ["# Which steering-prompt features predict the oracle's vectors of unseen concepts", "",
             f"`{report['command']}` — source run `{report['source']}`; {report['train_concepts']} training concepts, "
             f"{report['held_out_concepts']} held-out concepts, eval KL on {report['eval_pairs']} never-trained "
             "held-out pairs. Ridge strength chosen by cross-validation over training concepts.", "",
             "## References (held-out eval KL to the prompted model)", "", "| vectors | eval KL |", "| --- | --- |"]
    lines += [f"| {k} | {f(v)} |" for k, v in report["references_kl"].items()]
    for name, kl in (report.get("source_kl") or {}).items():
        if isinstance(kl, dict) and kl.get("held_out") is not None:
            lines.append(f"| source run: {name} | {f(kl['held_out'])} |")
    lines += ["", "## Ridge map features → oracle vector (sorted by cross-validated R²)", "",
              "| features | ridge α | CV R² (train concepts) | held-out R² | cos with oracle | between-concept cos "
              "| ‖Δ‖ | held-out eval KL |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["ridge"]:
        lines.append(f"| {r['features']} | {r['alpha']:g} | {f(r['cv_r2'])} | {f(r['held_out_r2'])} | "
                     f"{f(r['cosine_with_oracle'])} | {f(r['between_concept_cosine'])} | {f(r['norm'], 1)} | "
                     f"{f(r.get('held_out_kl'))} |")
    lines += ["", f"## Scale curve ({report['ridge'][0]['features']})", "",
              "| train concepts | ridge α | held-out R² | cos with oracle | held-out eval KL |",
              "| --- | --- | --- | --- | --- |"]
    lines += [f"| {c['train_concepts']} | {c['alpha']:g} | {f(c['held_out_r2'])} | {f(c['cosine_with_oracle'])} | "
              f"{f(c['held_out_kl'])} |" for c in report["curve"]]
    if report.get("prior"):
        gains = report["prior_gains"]
        lines += ["", "## Direction prior: source floor + g · (centred token-embedding direction), no map", "",
                  "| features | cos with oracle's concept-specific part | same, concepts shuffled | "
                  + " | ".join(f"eval KL g={g:g}" for g in gains) + " |",
                  "| --- | --- | --- | " + " | ".join("---" for _ in gains) + " |"]
        lines += [f"| {p['features']} | {f(p['cosine_with_oracle_specific'])} | {f(p['cosine_shuffled'])} | "
                  + " | ".join(f(p["held_out_kl"][str(g)]) for g in gains) + " |" for p in report["prior"]]
    lines += ["", f"Oracle on the training concepts: {report['oracle_train'].get('steps')} steps, "
              f"{f(report['oracle_train'].get('seconds'), 0)} s; features {report['feature_seconds']:.1f} s; "
              f"total {report['seconds'] / 60:.1f} min.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
