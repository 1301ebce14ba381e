"""Setup and reporting shared by ``hypersteer_eval.py``, ``oracle_forms.py`` and ``psr_eval.py``.

Model loading (tiny random model or the embedded one), the ``--tiny`` stand-ins (hand-made concepts and a keyword
judge), base-prompt picking, the train / eval split, teacher targets (cached JSONL) and the common parts of the
report (run information, score table, ranking text, saving ``results.json`` / ``results.md``).

The scripts import it as a top-level module ``common`` (they put this folder on ``sys.path``), so it works both
when they are run as ``python benchmarks/<script>.py`` and when tests load them with :mod:`importlib`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch


# ============================================================================ small helpers
def log(message: str) -> None:
    """Print ``message`` with a wall-clock time stamp (flushed at once)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def fmt(value: Any, digits: int = 3) -> str:
    """Format a table cell: floats with ``digits`` decimals, ``None`` / NaN as a dash, anything else as ``str``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def finish_settings(settings: Any, parser: argparse.ArgumentParser, *, tiny: bool, tiny_values: Mapping[str, Any],
                    validate: Callable[[Any], list[str]], default_out: Path) -> Any:
    """Finish a benchmark's settings dataclass after parsing: with ``tiny``, set each ``tiny_values`` entry the
    user left at its dataclass default (explicit flags win); stop with ``parser.error`` naming every problem
    ``validate`` finds; default ``out`` to ``default_out`` (``default_out/tiny`` with ``tiny``)."""
    if tiny:
        defaults = type(settings)()
        for key, value in tiny_values.items():
            if getattr(settings, key) == getattr(defaults, key):
                setattr(settings, key, value)
    problems = validate(settings)
    if problems:
        parser.error("; ".join(problems))
    if settings.out is None:
        settings.out = str(default_out / "tiny" if tiny else default_out)
    return settings


def counts_below_one(settings: Any, names: Sequence[str]) -> list[str]:
    """``"--NAME must be >= 1"`` for each of the ``names`` settings that is below 1."""
    return [f"--{name.replace('_', '-')} must be >= 1" for name in names if getattr(settings, name) < 1]


# ============================================================================ tiny stand-ins
TINY_WORDS = ("river", "castle", "music", "garden", "winter", "engine", "forest", "planet", "bread", "ocean",
              "mountain", "library", "summer", "market", "bridge", "island")


def tiny_concepts(n: int) -> list[Any]:
    """Hand-made concepts for ``--tiny`` (not real data: only the wiring is being tested)."""
    from hooksteer.data.concepts import steering_prompts_for
    from hooksteer.data.schema import Concept

    if n > len(TINY_WORDS):
        raise SystemExit(f"--tiny supports at most {len(TINY_WORDS)} concepts")
    return [Concept(id=w, title=w.capitalize(), description=f"tiny concept {w}",
                    steering_prompts=steering_prompts_for(w.capitalize()), source="hand-made (tiny benchmark)",
                    text=(f"The {w} is a thing people talk about. Every {w} has a long story behind it. "
                          f"Many people like the {w} very much."))
            for w in TINY_WORDS[:n]]


class KeywordJudge:
    """Cheap deterministic judge for ``--tiny``: concept 2 if the concept's title word is in the output, else
    0.5; instruction 1; fluency from the share of distinct word bigrams. Not a real judge."""

    name = "keyword (tiny)"

    def rate(self, concept: str, instruction: str, outputs: Sequence[str]) -> list[Any]:
        from hooksteer.evaluate.base import JudgeScores
        from hooksteer.evaluate.judges import distinct_bigram_ratio

        word = str(getattr(concept, "title", concept)).split(" (")[0].lower()
        return [JudgeScores(concept=2.0 if word in o.lower() else 0.5, instruction=1.0,
                            fluency=min(2.0, max(0.1, 2.0 * distinct_bigram_ratio(o)))) for o in outputs]


def start_run(args: argparse.Namespace) -> float:
    """Set torch's thread count to ``args.threads``, create the output folder ``args.out`` and return the start
    time (:func:`time.perf_counter`)."""
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    return began


# ============================================================================ model, data, judge
def load_model(tiny: bool, seed: int, name: str | None = None, device: str | None = None) -> Any:
    """The frozen base model in eval mode: a tiny random llama with ``tiny``, else ``name`` (default: the
    embedded SmolLM2-135M-Instruct), on ``device`` (default: TransformerLens' choice, CUDA when available)."""
    if tiny:
        from hooksteer.testing import tiny_model

        model = tiny_model("llama", seed=seed)
        if device is not None:
            model = model.to(device)
    else:
        import hooksteer as hs

        model = hs.load_model(name, device=device) if name else hs.load_model(progress=False, device=device)
    model.requires_grad_(False)
    model.eval()
    return model


def load_bridge(tiny: bool, seed: int, device: str | None = None) -> Any:
    """A TransformerBridge for generation: a tiny random one with ``tiny``, else the embedded model's (same
    weights as :func:`load_model`'s), on ``device`` (default: TransformerLens' choice)."""
    if tiny:
        from hooksteer.testing import tiny_bridge

        bridge = tiny_bridge(seed=seed)
        return bridge.to(device) if device is not None else bridge
    import hooksteer as hs

    return hs.load_bridge(device=device)


def load_concepts_and_prompts(args: argparse.Namespace, n_concepts: int) -> tuple[list[Any], list[Any]]:
    """``n_concepts`` concepts and every base prompt: tiny stand-ins and the templated prompts with
    ``args.tiny``, else Wikipedia concepts (``args.concept_seed``) and ``args.prompt_sources``."""
    from hooksteer.data.base_prompts import load_base_prompts, load_templated

    if args.tiny:
        return tiny_concepts(n_concepts), load_templated()
    from hooksteer.data.concepts import load_concepts

    return load_concepts(limit=n_concepts, seed=args.concept_seed), load_base_prompts(args.prompt_sources)


def pick_prompts(prompts: Sequence[Any], seed: int, n: int) -> list[Any]:
    """``n`` base prompts chosen deterministically from ``seed`` (independent of the input order)."""
    picked = sorted(prompts, key=lambda p: p.id)
    random.Random(f"{seed}-prompt-pool").shuffle(picked)
    return picked[:n]


def unused_prompts(settings: Any, tiny: bool, used: Sequence[Any], n: int, benchmark: str) -> list[Any]:
    """``n`` more base prompts of ``settings.prompt_sources`` that are not in ``used`` (the split's train and eval
    prompts), in the same seeded order as :func:`pick_prompts`: extra training prompts that leave the split, and so
    the eval prompts, unchanged. Too few stop the run with ``"<benchmark>: error: ..."``."""
    data_args = argparse.Namespace(tiny=tiny, concept_seed=settings.concept_seed, prompt_sources=settings.prompt_sources)
    _, every = load_concepts_and_prompts(data_args, 0)
    taken = {p.id for p in used}
    free = [p for p in pick_prompts(every, settings.seed, len(every)) if p.id not in taken]
    if len(free) < n:
        raise SystemExit(f"{benchmark}: error: {n} more base prompts asked for, but {settings.prompt_sources} has only "
                         f"{len(free)} beyond the split's {len(taken)}")
    return free[:n]


def make_judge(tiny: bool, model: Any) -> Any:
    """The judge: :class:`KeywordJudge` with ``tiny``, else the embedding judge whose fluency scorer is the same
    (unsteered) base model (no hook is active when the judge runs)."""
    if tiny:
        return KeywordJudge()
    from hooksteer.evaluate.judges import EmbeddingJudge, LMPerplexity

    return EmbeddingJudge(perplexity=LMPerplexity(model))


def save_split(concepts: Sequence[Any], prompts: Sequence[Any], path: Path, *, seed: int, held_out: int,
               held_in: int, eval_prompts: int) -> Any:
    """Split concepts and base prompts with :func:`hooksteer.data.splits.make_split` and save it to ``path``."""
    from hooksteer.data.splits import make_split

    split = make_split(concepts, prompts, seed=seed, held_out=held_out, held_in=held_in, eval_prompts=eval_prompts)
    split.save(path)
    return split


def load_split(settings: Any, tiny: bool, out: Path, benchmark: str) -> tuple[list[Any], list[Any], Any]:
    """Concepts, base prompts and their train / held-in / held-out split, saved as ``out / "split.json"``: the
    same sizes and seeds give the same split in every benchmark. ``settings`` holds ``concept_seed``,
    ``prompt_sources``, ``train_concepts``, ``held_out``, ``held_in``, ``train_prompts``, ``eval_prompts`` and
    ``seed``; too few concepts or prompts stop the run with ``"<benchmark>: error: ..."``."""
    s = settings
    data_args = argparse.Namespace(tiny=tiny, concept_seed=s.concept_seed, prompt_sources=s.prompt_sources)
    concepts, prompts = load_concepts_and_prompts(data_args, s.train_concepts + s.held_out)
    n_prompts = s.train_prompts + s.eval_prompts
    if len(concepts) < s.train_concepts + s.held_out or len(prompts) < n_prompts:
        raise SystemExit(f"{benchmark}: error: need {s.train_concepts + s.held_out} concepts and {n_prompts} base "
                         f"prompts, have {len(concepts)} and {len(prompts)}")
    prompts = pick_prompts(prompts, s.seed, n_prompts)
    split = save_split(concepts, prompts, out / "split.json", seed=s.seed, held_out=s.held_out, held_in=s.held_in,
                       eval_prompts=s.eval_prompts)
    return concepts, prompts, split


def layer_resid_norms(model: Any, layers: Sequence[int], concepts: Sequence[Any], texts_for: Any) -> dict[int, float]:
    """Mean over ``concepts`` of the residual norm at ``blocks.{layer}.hook_resid_post`` on each concept's texts,
    the same reference the evaluation's ``resid_norm`` factors use."""
    from hooksteer.evaluate.methods import residual_norm

    norms = {}
    for layer in sorted(set(layers)):
        values = []
        for concept in concepts:
            positive, negative = texts_for(concept, [c for c in concepts if c.id != concept.id])
            values.append(residual_norm(model, [*positive[:8], *negative[:8]], f"blocks.{layer}.hook_resid_post"))
        norms[layer] = sum(values) / len(values)
    return norms


def teacher_targets(args: argparse.Namespace, model: Any, judge: Any, concepts: Sequence[Any],
                    prompts: Sequence[Any], cache: Path) -> tuple[Any, dict[str, Any]]:
    """Judge-filtered teacher targets for every (concept, prompt) pair from the ``--teacher-*`` flags, cached in
    the JSONL file ``cache``: the generation result and its stats (with the settings used)."""
    from hooksteer.data.teacher import TeacherConfig, generate_teacher_targets

    config = TeacherConfig(n_candidates=args.teacher_candidates, max_new_tokens=args.teacher_tokens,
                           temperature=args.teacher_temperature, seed=args.seed, batch_size=args.teacher_batch,
                           min_concept=args.teacher_min_concept, min_fluency=args.teacher_min_fluency)
    pairs = [(c, p) for c in concepts for p in prompts]
    result = generate_teacher_targets(model, pairs, judge, config, cache_path=cache, progress=not args.tiny)
    return result, {**result.stats, "settings": dataclasses.asdict(config)}


def run_evaluation(args: argparse.Namespace, model: Any, methods: Sequence[Any], concepts: Sequence[Any],
                   prompts: Sequence[Any], judge: Any) -> tuple[Any, float]:
    """One :func:`hooksteer.evaluate.protocol.evaluate` call (all methods, same judge, ``--factors``, ``--seed``,
    generation flags; results under ``args.out / "evaluation"``): the result and the seconds it took."""
    from hooksteer.evaluate.protocol import evaluate

    start = time.perf_counter()
    result = evaluate(model, methods, concepts, prompts, judge=judge, factors=args.factors,
                      max_new_tokens=args.max_new_tokens, batch_size=args.eval_batch_size, seed=args.seed,
                      out_dir=args.out / "evaluation", progress=not args.tiny)
    return result, time.perf_counter() - start


# ============================================================================ report
def _device_name(model: Any) -> str:
    """``"cpu"``, or the accelerator's name (e.g. ``"cuda: NVIDIA H200"``) when the model lives on one."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return device.type


def run_info(benchmark: str, args: argparse.Namespace, argv: Sequence[str] | None, model: Any,
             judge: Any) -> dict[str, Any]:
    """The head of ``results.json``: benchmark name, command line, config, environment, model and judge."""
    return {
        "benchmark": benchmark,
        "command": " ".join([f"benchmarks/{benchmark}.py", *(sys.argv[1:] if argv is None else list(argv))]),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "threads": torch.get_num_threads(), "machine": platform.platform(), "device": _device_name(model)},
        "model": str(getattr(model.cfg, "model_name", "tiny")),
        "judge": getattr(judge, "name", type(judge).__name__),
    }


def log_estimate(estimate: Mapping[str, float], device: str) -> None:
    """Print a run's time estimate (seconds per stage) before anything runs."""
    log(f"estimated time on {device}: {sum(estimate.values()) / 60:.0f} min ("
        + ", ".join(f"{k} {v / 60:.0f}" for k, v in estimate.items()) + ")")


def report_head(benchmark: str, settings: Any, estimate: Mapping[str, float], tiny: bool, run: argparse.Namespace,
                argv: Sequence[str] | None, model: Any, judge: Any) -> dict[str, Any]:
    """The head of a settings-dataclass benchmark's ``results.json``: name, command line, settings, time estimate,
    environment, model and judge."""
    info = run_info(benchmark, run, argv, model, judge)
    return {"benchmark": benchmark, "tiny": tiny, "command": info["command"],
            "settings": dataclasses.asdict(settings), "estimate_seconds": estimate,
            **{k: info[k] for k in ("environment", "model", "judge")}}


def per_concept_rows(result: Any, roles: Mapping[str, str]) -> list[dict[str, Any]]:
    """One row per (method, concept) of an evaluation: its role, chosen factor, report-half ratings and the added
    vector's norms where the method recorded them."""
    return [{"method": c.method, "concept_id": c.concept_id, "role": roles.get(c.concept_id),
             "chosen_factor": c.chosen_factor, **c.report,
             **{k: c.info[k] for k in ("mean_delta_norm", "natural_factor", "resid_norm") if k in c.info}}
            for c in result.concepts]


def rank_by_score(rows: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, Any]]:
    """``(method, row)`` pairs, highest ``score`` first."""
    return sorted(rows.items(), key=lambda kv: -kv[1]["score"])


def ranking_text(ranked: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """``"a 0.900 > b 0.700"`` for ranked ``(method, row)`` pairs."""
    return " > ".join(f"{m} {r['score']:.3f}" for m, r in ranked)


def score_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table of per-method steering scores (best first), chosen factors and collapsed cells."""
    from hooksteer.evaluate.report import table

    body = [[m, fmt(r["concept"]), fmt(r["instruction"]), fmt(r["fluency"]), fmt(r["score"]),
             ", ".join(fmt(f, 2) for f in r["chosen_factors"]), str(r["collapsed_cells"])]
            for m, r in rank_by_score(rows)]
    return table(body, ("method", "concept", "instruction", "fluency", "steering score", "chosen factors",
                        "collapsed cells"))


def save_report(report: dict[str, Any], out: Path, began: float, markdown: Callable[[dict[str, Any]], str]) -> None:
    """Stamp the total seconds since ``began``, write ``results.json`` and ``results.md`` under ``out`` (each
    atomically: temp file + rename) and print the markdown."""
    from hooksteer.io import atomic_write_text

    report["seconds"]["total"] = time.perf_counter() - began
    text = markdown(report)  # rendered first: a report that cannot be rendered leaves the earlier files as they were
    atomic_write_text(out / "results.json", json.dumps(report, indent=2, default=str))
    atomic_write_text(out / "results.md", text)
    print(text)
    log(f"done in {report['seconds']['total']:.0f} s; wrote {out / 'results.json'} and {out / 'results.md'}")


# ---------------------------------------------------------------------------- intervals, lengths, samples
def interval_text(interval: Mapping[str, Any] | None) -> str:
    """``"0.123 [0.050, 0.200]"`` for an :class:`hooksteer.evaluate.stats.Interval` dict (a dash for None)."""
    if not interval:
        return "—"
    return f"{interval['mean']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"


def interval_summary(per_concept: Sequence[Mapping[str, Any]], methods: Sequence[str],
                     roles: Mapping[str, str]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per role and method: mean report-half ratings over concepts, each with a bootstrap 95 % interval
    (:func:`hooksteer.evaluate.stats.bootstrap_ci`), the chosen factors and the mean added norm."""
    from hooksteer.evaluate.stats import bootstrap_ci

    out: dict[str, dict[str, dict[str, Any]]] = {}
    for role in ("held_out", "held_in"):
        for method in methods:
            rows = [r for r in per_concept if r["method"] == method and roles.get(r["concept_id"]) == role]
            if not rows:
                continue
            entry: dict[str, Any] = {key: bootstrap_ci([r[key] for r in rows]).to_dict()
                                     for key in ("concept", "instruction", "fluency", "score")}
            entry["n_concepts"] = len(rows)
            entry["chosen_factors"] = [r.get("chosen_factor") for r in rows]
            trained = [r["mean_delta_norm"] for r in rows if r.get("mean_delta_norm") is not None]
            if trained:
                entry["mean_trained_norm"] = sum(trained) / len(trained)
            out.setdefault(role, {})[method] = entry
    return out


def interval_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table of :func:`interval_summary` rows for one role, best mean score first."""
    from hooksteer.evaluate.report import table

    ranked = sorted(rows.items(), key=lambda kv: -kv[1]["score"]["mean"])
    body = [[m, fmt(r["concept"]["mean"]), fmt(r["instruction"]["mean"]), fmt(r["fluency"]["mean"]),
             interval_text(r["score"]), ", ".join(fmt(f, 2) for f in r["chosen_factors"] if f is not None) or "—"]
            for m, r in ranked]
    return table(body, ("method", "concept", "instruction", "fluency", "steering score [95 % CI]", "chosen factors"))


def paired_comparisons(per_concept: Sequence[Mapping[str, Any]], roles: Mapping[str, str], candidates: Sequence[str],
                       *, baselines: Sequence[str] = ("diffmean", "prompt"), prompt_share: float | None = 0.9,
                       role: str = "held_out") -> list[dict[str, Any]]:
    """Paired bootstrap differences ``candidate − baseline`` over the concepts of ``role`` (and, with
    ``prompt_share``, ``candidate − prompt_share × prompt``): a candidate beats a baseline only when the
    interval excludes 0."""
    from hooksteer.evaluate.stats import paired_difference_ci

    concepts = sorted({r["concept_id"] for r in per_concept if roles.get(r["concept_id"]) == role})
    table = {(r["method"], r["concept_id"]): float(r["score"]) for r in per_concept}

    def scores(method: str) -> list[float] | None:
        values = [table.get((method, c)) for c in concepts]
        return None if not concepts or any(v is None for v in values) else values  # type: ignore[return-value]

    out = []
    for candidate in candidates:
        a = scores(candidate)
        if a is None:
            continue
        targets = [(b, scores(b), 1.0) for b in baselines if b != candidate]
        if prompt_share is not None:
            targets.append((f"{prompt_share:g}×prompt", scores("prompt"), prompt_share))
        for name, b, share in targets:
            if b is None:
                continue
            diff = paired_difference_ci(a, [share * v for v in b])
            out.append({"role": role, "a": candidate, "b": name, **diff.to_dict()})
    return out


def comparison_table(comparisons: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table of :func:`paired_comparisons`."""
    from hooksteer.evaluate.report import table

    body = [[c["a"], c["b"], interval_text(c), "yes" if c["excludes_zero"] else "no"] for c in comparisons]
    return table(body, ("A", "B", "A − B [95 % CI]", "interval excludes 0"))


def _words(text: str) -> int:
    return len(text.split())


def answer_lengths(result: Any, tokenizer: Any = None, *, reference: str = "none") -> dict[str, dict[str, float]]:
    """Per method: mean words of its answers at each concept's chosen factor (report half), the mean words of
    the ``reference`` method's answers to the same (concept, prompt) pairs, their ratio, and the share of
    answers shorter than the reference's (a steering vector that shortens answers is a bug signal)."""
    chosen = {(c.method, c.concept_id): c.chosen_factor for c in result.concepts}
    answers: dict[tuple[str, str, str], str] = {}
    for g in result.generations:
        if g.half == "report" and chosen.get((g.method, g.concept_id), "missing") == g.factor:
            answers[(g.method, g.concept_id, g.prompt_id)] = g.output
    out: dict[str, dict[str, float]] = {}
    for method in result.methods:
        pairs = [(text, answers.get((reference, c, p))) for (m, c, p), text in answers.items() if m == method]
        pairs = [(a, b) for a, b in pairs if b is not None]
        if pairs:
            out[method] = word_ratio(pairs)
    return out


def word_ratio(pairs: Sequence[tuple[str, str]]) -> dict[str, float]:
    """Mean words of the answers and of their references (``(answer, reference)`` pairs, at least one), the ratio,
    the share of answers shorter than their reference, and the number of pairs.

    Example:
        >>> word_ratio([("a b", "a b c d"), ("a b c", "a b c")])["ratio"]
        0.7142857142857143
    """
    mine = sum(_words(a) for a, _ in pairs) / len(pairs)
    ref = sum(_words(b) for _, b in pairs) / len(pairs)
    return {"words": mine, "reference_words": ref, "ratio": mine / ref if ref else float("nan"),
            "shorter_share": sum(_words(a) < _words(b) for a, b in pairs) / len(pairs), "n": len(pairs)}


def length_table(lengths: Mapping[str, Mapping[str, float]]) -> str:
    """Markdown table of :func:`answer_lengths`."""
    from hooksteer.evaluate.report import table

    body = [[m, fmt(v["words"], 1), fmt(v["reference_words"], 1), fmt(v["ratio"], 2), fmt(v["shorter_share"], 2)]
            for m, v in lengths.items()]
    return table(body, ("method", "words", "unsteered words", "ratio", "share shorter"))


def write_samples(result: Any, concepts: Sequence[Any], path: Path, n: int, methods: Sequence[str]) -> None:
    """Write up to ``n`` (concept, report prompt) cells to ``path`` as markdown: each method's answer at the
    concept's chosen factor, side by side, to read."""
    chosen = {(c.method, c.concept_id): c.chosen_factor for c in result.concepts}
    by_cell: dict[tuple[str, str], dict[str, str]] = {}
    for g in result.generations:
        if g.half == "report" and g.method in methods and chosen.get((g.method, g.concept_id), "x") == g.factor:
            by_cell.setdefault((g.concept_id, g.prompt_id), {})[g.method] = g.output
    titles = {c.id: c.title for c in concepts}
    lines = ["# Generations to read", "", "Each method at the factor chosen for the concept (report half).", ""]
    for (concept_id, prompt_id), outputs in list(by_cell.items())[:n]:
        lines += [f"## {titles.get(concept_id, concept_id)} — prompt `{prompt_id}`", ""]
        for method in methods:
            if method in outputs:
                factor = chosen.get((method, concept_id))
                text = outputs[method].replace("\n", " ")
                lines.append(f"- **{method}** ({fmt(factor, 2) if factor is not None else '—'}): {text}")
        lines.append("")
    path.write_text("\n".join(lines))


def layer_spec(layers: Sequence[int]) -> str:
    """``[20]`` → ``"20"``, ``[10, 11, …, 29]`` → ``"10-29"``, ``[0, 10, 20]`` → ``"0+10+20"``.

    Example:
        >>> layer_spec([20]), layer_spec(range(10, 30)), layer_spec([0, 10, 20])
        ('20', '10-29', '0+10+20')
    """
    layers = list(layers)
    if len(layers) == 1:
        return str(layers[0])
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return "+".join(str(x) for x in layers)


def parse_layers(text: str) -> list[int] | None:
    """The layers of ``LAYERS`` (``20``, ``10-29`` or ``0+10+20``), strictly increasing; ``None`` when malformed.

    Example:
        >>> parse_layers("10-12"), parse_layers("0+5"), parse_layers("5-3")
        ([10, 11, 12], [0, 5], None)
    """
    if text.isdigit():
        return [int(text)]
    if "-" in text:
        low, _, high = text.partition("-")
        if low.isdigit() and high.isdigit() and int(low) < int(high):
            return list(range(int(low), int(high) + 1))
        return None
    parts = text.split("+")
    if len(parts) > 1 and all(part.isdigit() for part in parts):
        layers = [int(part) for part in parts]
        if all(b > a for a, b in zip(layers, layers[1:], strict=False)):
            return layers
    return None
