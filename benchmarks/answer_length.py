"""Benchmark: are steered answers shorter than unsteered ones? Long greedy answers, counted in tokens.

The evaluations stop every answer at 32 tokens and their length tables count *words*, so a steered answer that
runs to the limit with longer words (a concept's name is often several tokens) reads as "shorter" there, and an
answer that would have stopped at 40 tokens cannot be told from one that would have run on. The issue's worry is a
vector that makes the model *stop* sooner (an end-of-text direction shared by every concept). This script asks that
directly: for the held-out concepts and eval prompts of finished ``benchmarks/oracle_forms.py`` runs it generates
the answers again with a much higher limit (128 tokens by default) — unsteered (``none``), with the steering prompt
(``prompt``, the baseline's placement) and with saved A-PSRs (FitSteer and the like, ``--psr NAME``, at each
``--alphas`` α) — and records, per answer, the tokens the model wrote before its end-of-text token, whether it wrote
one before the limit (:func:`hooksteer.generation.record_answers`), its words and its share of distinct word bigrams
(a repetition signal, :func:`hooksteer.evaluate.judges.text.distinct_bigram_ratio`, as the judges count it). Nothing is judged and the runs are only read.

Per method: mean tokens over concepts [bootstrap 95 %], the paired difference to unsteered (same prompts), the
ratio of mean tokens, the share of answers that ended before the limit, words and the distinct-bigram share. As a
check of the regeneration, the share of answers that agree with the run's saved evaluation answer (same method,
concept, prompt and factor: the shorter one is the start of the longer) is reported (greedy decoding; batches are
padded differently, so a few can diverge).

``--answers`` summarises a saved ``answers.json`` again (e.g. after a column was added) without generating.

Usage::

    .venv/bin/python benchmarks/answer_length.py --run runs/prefix_A runs/prefix_B runs/prefix_C \
        --psr apsr-L0-29-local0-steps0 --alphas 1.5 --out runs/answer_length_ABC
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
import common  # noqa: E402
from common import fmt, log  # noqa: E402

PROG = "answer_length"
#: Seconds per generated token position of one batch on the 2-core CPU (measured: SmolLM2-135M's bridge, 6 rows
#: of up to 128 tokens, 28 s per concept for 3 methods; the estimate printed before a run).
SECONDS_PER_TOKEN_STEP = 0.073
#: An answer with fewer distinct word bigrams than this share loops (repeats itself).
LOOP_BELOW = 0.5


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, nargs="+",
                        help="finished oracle_forms run folders (split.json, settings.json, saved A-PSRs)")
    parser.add_argument("--out", required=True, help="output folder (results.json, results.md, answers.json)")
    parser.add_argument("--psr", nargs="*", default=[],
                        help="A-PSR folders inside each run to steer with (one saved PSR per concept), e.g. "
                             "apsr-L0-29-local0-steps0 (FitSteer); FOLDER@POSITIONS steers other positions, e.g. "
                             "apsr-L0-29-local0-steps0@generated+8, or @generated+8:32 to stop after the answer's 32nd token "
                             "(as oracle_forms' --apsr-position-variants)")
    parser.add_argument("--alphas", type=float, nargs="+", default=[1.5], help="α of every --psr (default 1.5)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="token limit per answer (default 128)")
    parser.add_argument("--batch-size", type=int, default=16, help="answers per generation batch")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--tiny", action="store_true", help="runs made with oracle_forms --tiny (tests)")
    parser.add_argument("--judge", action="store_true",
                        help="also rate every answer with the evaluation's judge (concept, instruction, fluency, "
                             "score) and compare each method's score with prompt steering's")
    parser.add_argument("--half", choices=["all", "report"], default="all",
                        help="eval prompts to answer: all, or each concept's report half (the protocol's split)")
    parser.add_argument("--baseline", default=None,
                        help="also pair every row with this one (a row name: none, prompt or PSR@α, e.g. "
                             "apsr-L0-29-local0-steps0@generated+8@1.5): paired differences of the loop share "
                             "and, with --judge, of score and fluency")
    parser.add_argument("--answers", default=None,
                        help="summarise this earlier answers.json again instead of generating (same --run, --psr, "
                             "--alphas and --max-new-tokens as the run that wrote it)")
    args = parser.parse_args(argv)
    problems = validate(args)
    if problems:
        parser.error("; ".join(problems))
    return args


def validate(args: argparse.Namespace) -> list[str]:
    """Every problem with the flags and the runs they name, before anything is loaded or written."""
    problems = []
    runs = [Path(r) for r in args.run]
    for run in runs:
        missing = [name for name in ("split.json", "settings.json", "results.json") if not (run / name).is_file()]
        if missing:
            problems.append(f"--run {run} has no {', '.join(missing)} (a finished benchmarks/oracle_forms.py run)")
            continue
        tiny = bool(json.loads((run / "results.json").read_text()).get("tiny"))
        if tiny != bool(args.tiny):
            problems.append(f"--run {run} was made {'with' if tiny else 'without'} --tiny; this run is "
                            f"{'with' if args.tiny else 'without'} it")
        problems += [f"--psr {name}: {run / name.split('@')[0]} is not a folder of saved PSRs" for name in args.psr
                     if not (run / name.split("@")[0]).is_dir()]
    models = {(s.get("model"), s.get("seed")) for s in (json.loads((r / "settings.json").read_text()) for r in runs
                                                        if (r / "settings.json").is_file())}
    if len(models) > 1:
        problems.append("--run folders were made with different models or seeds (--model, --seed): pool runs of one")
    if len({r.resolve() for r in runs}) != len(runs):
        problems.append("--run names a folder twice")
    if Path(args.out).resolve() in {r.resolve() for r in runs}:
        problems.append("--out must not be one of the runs (they are only read)")
    if args.answers is not None and not Path(args.answers).is_file():
        problems.append(f"--answers {args.answers} is not a file")
    from hooksteer.psr.hooks import check_mode

    for name in args.psr:
        try:
            check_mode(name.split("@", 1)[1]) if "@" in name else None
        except ValueError as error:
            problems.append(f"--psr {name}: {error}")
    if len(set(args.psr)) != len(args.psr):
        problems.append("--psr names a folder twice")
    if args.baseline is not None and args.baseline not in [row for row, _, _ in method_rows(args.psr, args.alphas)]:
        problems.append(f"--baseline {args.baseline} is not one of this run's rows: none, prompt or "
                        "<--psr entry>@<α>, e.g. " + (f"{args.psr[0]}@{args.alphas[0]:g}" if args.psr and args.alphas
                                                       else "apsr-L0-29-local0-steps0@1.5"))
    if not args.alphas or any(not (math.isfinite(a) and a > 0) for a in args.alphas):
        problems.append("--alphas must be positive numbers")
    if len(set(args.alphas)) != len(args.alphas):
        problems.append("--alphas names a value twice")
    for flag in ("max_new_tokens", "batch_size", "threads"):
        if getattr(args, flag) < 1:
            problems.append(f"--{flag.replace('_', '-')} must be at least 1")
    return problems


def _fail(message: str) -> None:
    """One line ``answer_length: error: …`` on stderr and exit status 2 (as argparse does for bad flags)."""
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def run_data(run: Path, tiny: bool) -> tuple[list[Any], list[Any]]:
    """The held-out concepts and eval prompts of one oracle_forms run, rebuilt from its ``settings.json`` and
    ``split.json`` (nothing is written)."""
    from hooksteer.data.schema import BasePrompt
    from hooksteer.data.splits import DatasetSplit

    settings = json.loads((run / "settings.json").read_text())
    split = DatasetSplit.load(run / "split.json")
    data_args = argparse.Namespace(tiny=tiny, concept_seed=settings["concept_seed"],
                                   prompt_sources=settings["prompt_sources"])
    concepts, _ = common.load_concepts_and_prompts(data_args, settings["train_concepts"] + settings["held_out"])
    by_id = {c.id: c for c in concepts}
    missing = [c for c in split.held_out_concepts if c not in by_id]
    if missing:
        _fail(f"--run {run}: its held-out concepts {missing[:3]} are not in the concept data any more")
    texts = split.meta.get("prompt_texts", {})
    absent = [p for p in split.eval_prompts if p not in texts]
    if absent:
        _fail(f"--run {run}: split.json holds no text for eval prompts {absent[:3]}")
    return [by_id[c] for c in split.held_out_concepts], [BasePrompt(id=p, text=texts[p]) for p in split.eval_prompts]


def method_rows(psr_names: Sequence[str], alphas: Sequence[float]) -> list[tuple[str, str | None, float | None]]:
    """``(row name, --psr entry, α)`` for every method: unsteered, prompt steering, each PSR at each α.

    Example:
        >>> method_rows(["apsr-L0-2"], [1.0, 1.5])[2:]
        [('apsr-L0-2@1', 'apsr-L0-2', 1.0), ('apsr-L0-2@1.5', 'apsr-L0-2', 1.5)]
    """
    return [("none", None, None), ("prompt", None, None),
            *((f"{name}@{alpha:g}", name, alpha) for name in psr_names for alpha in alphas)]


def saved_answers(run: Path) -> dict[tuple[str, str, str, float | None], str]:
    """The run's saved evaluation answers by (method, concept, prompt, factor), for the agreement check."""
    path = run / "evaluation" / "generations.json"
    if not path.is_file():
        return {}
    return {(g["method"], g["concept_id"], g["prompt_id"], g["factor"]): g["output"]
            for g in json.loads(path.read_text())}


def generate_run(run: Path, tiny: bool, generator: Any, args: argparse.Namespace, tag: str,
                 judge: Any = None) -> list[dict[str, Any]]:
    """Every method's long answers for one run's held-out concepts × eval prompts (``--half``), one record per
    answer; with a ``judge`` each answer also carries its ratings."""
    from tqdm.auto import tqdm

    from hooksteer.evaluate.judges.text import distinct_bigram_ratio
    from hooksteer.evaluate.methods import GenerationSettings, NoSteering, PromptSteering
    from hooksteer.evaluate.methods.common import derive_seed
    from hooksteer.evaluate.methods.texts import concept_reference
    from hooksteer.evaluate.protocol import split_prompts
    from hooksteer.generation import record_answers
    from hooksteer.psr import PSR
    from hooksteer.psr.evaluation import PSRSteerer

    concepts, every_prompt = run_data(run, tiny)
    saved = saved_answers(run)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    seed = int(json.loads((run / "settings.json").read_text()).get("seed", 0))
    records = []
    for concept in tqdm(concepts, desc=f"{run.name}", disable=tiny):
        others = [c for c in concepts if c.id != concept.id]
        report_ids = {p.id for p in split_prompts(every_prompt, seed, concept.id)[1]}
        prompts = [p for p in every_prompt if args.half == "all" or p.id in report_ids]
        for name, entry, alpha in method_rows(args.psr, args.alphas):
            if entry is None:
                method = NoSteering() if name == "none" else PromptSteering()
                steerer, factor, saved_key = method.prepare(generator, concept, others), None, (name, None)
            else:
                folder, _, positions = entry.partition("@")  # FOLDER or FOLDER@POSITIONS
                psr = PSR.load(run / folder / concept.id, generator)
                steerer = PSRSteerer(generator, psr, 1.0, positions=positions or None)
                factor, saved_key = alpha, (entry, alpha)  # oracle_forms names a variant FOLDER@POSITIONS too
            with record_answers() as recorded:
                outputs = steerer.generate([p.text for p in prompts], [factor], settings,
                                           derive_seed(seed, name, concept.id))[0]
            if [a.text for a in recorded] != outputs:
                raise RuntimeError(f"{name}: the recorded answers are not the returned ones (generation order)")
            for prompt, answer in zip(prompts, recorded, strict=True):
                short = saved.get((saved_key[0], concept.id, prompt.id, saved_key[1]))
                rated = {}
                if judge is not None:
                    ratings = judge.rate(concept_reference(concept), prompt.text, [answer.text])[0]
                    rated = {"concept": ratings.concept, "instruction": ratings.instruction,
                             "fluency": ratings.fluency, "score": ratings.score}
                records.append({"method": name, "concept_id": f"{tag}{concept.id}", "prompt_id": prompt.id,
                                "half": "report" if prompt.id in report_ids else "selection", "factor": factor,
                                "output": answer.text, "tokens": answer.n_tokens, "ended": answer.ended,
                                "words": len(answer.text.split()), "distinct_bigrams": distinct_bigram_ratio(answer.text),
                                "agrees_with_saved": None if short is None else (answer.text.startswith(short)
                                                                                   or short.startswith(answer.text)),
                                **rated})
    return records


def saved_records(path: Path, methods: Sequence[str]) -> list[dict[str, Any]]:
    """An earlier run's answers (``answers.json``), checked to hold every method of this one; the distinct-bigram
    share is recounted from each answer's text (it is derived, not measured)."""
    from hooksteer.evaluate.judges.text import distinct_bigram_ratio

    records = [{**r, "distinct_bigrams": distinct_bigram_ratio(r["output"])} for r in json.loads(path.read_text())]
    missing = sorted(set(methods) - {r.get("method") for r in records})
    if missing:
        _fail(f"--answers {path} holds no answers of {missing}: give the --psr and --alphas of the run that wrote it")
    return [r for r in records if r["method"] in methods]


def summarise(records: Sequence[Mapping[str, Any]], methods: Sequence[str], seed: int,
              baseline: str | None = None) -> list[dict[str, Any]]:
    """Per method: per-concept means (over its prompts), their mean [bootstrap 95 %], the paired difference of
    tokens to unsteered, ratios of mean tokens and words to unsteered, the share of answers that ended before the
    limit, the distinct-bigram share and the agreement with the saved answers; with ``baseline`` (a method) also
    the paired differences to it of the per-concept loop share and, when judged, of score and fluency.

    Example:
        >>> rec = lambda m, c, t, e: {"method": m, "concept_id": c, "tokens": t, "ended": e, "words": t,
        ...                            "distinct_bigrams": 1.0, "agrees_with_saved": None}
        >>> rows = summarise([rec("none", "a", 10, True), rec("none", "b", 20, False),
        ...                   rec("x", "a", 20, False), rec("x", "b", 40, False)], ["none", "x"], 0)
        >>> rows[1]["tokens_ratio"], rows[1]["ended_share"], rows[0]["ended_share"]
        (2.0, 0.0, 0.5)
    """
    from hooksteer.evaluate.stats import bootstrap_ci, paired_difference_ci

    def per_concept(method: str, key: str | Callable[[Mapping[str, Any]], float]) -> dict[str, float]:
        """Mean of ``r[key]`` (or ``key(r)``) over each concept's answers of ``method``."""
        by: dict[str, list[float]] = {}
        for r in records:
            if r["method"] == method:
                by.setdefault(r["concept_id"], []).append(float(key(r) if callable(key) else r[key]))
        return {c: sum(v) / len(v) for c, v in by.items()}

    base_tokens, base_words = per_concept("none", "tokens"), per_concept("none", "words")
    rated = bool(records) and all("score" in r for r in records)  # judged answers (--judge)
    rows = []
    for method in methods:
        tokens, words = per_concept(method, "tokens"), per_concept(method, "words")
        concepts = sorted(tokens)
        mine = [tokens[c] for c in concepts]
        ref = [base_tokens[c] for c in concepts]
        checked = [r["agrees_with_saved"] for r in records if r["method"] == method and r["agrees_with_saved"] is not None]
        rows.append({
            "method": method, "n_concepts": len(concepts),
            "n_answers": sum(r["method"] == method for r in records),
            "tokens": bootstrap_ci(mine, seed=seed).to_dict(),
            "minus_none_tokens": paired_difference_ci(mine, ref, seed=seed).to_dict(),
            "tokens_ratio": sum(mine) / sum(ref) if sum(ref) else float("nan"),
            "words_ratio": (sum(words[c] for c in concepts) / sum(base_words[c] for c in concepts)
                            if sum(base_words[c] for c in concepts) else float("nan")),
            "words": sum(words[c] for c in concepts) / len(concepts),
            "ended_share": sum(per_concept(method, "ended").values()) / len(concepts),
            "distinct_bigrams": sum(per_concept(method, "distinct_bigrams").values()) / len(concepts),
            "loop_share": sum(_loops(r) for r in records if r["method"] == method)
            / max(1, sum(r["method"] == method for r in records)),
            "agrees_with_saved": sum(checked) / len(checked) if checked else None, "n_checked": len(checked)})
        if rated:
            rows[-1]["judged"] = judged(per_concept, method, concepts, seed)
        if baseline is not None:
            rows[-1]["vs_baseline"] = against(per_concept, method, baseline, concepts, seed, rated)
    return rows


def _loops(record: Mapping[str, Any]) -> float:
    """1 when the answer loops (fewer than ``LOOP_BELOW`` distinct word bigrams), else 0."""
    return float(record["distinct_bigrams"] < LOOP_BELOW)


def against(per_concept: Any, method: str, baseline: str, concepts: Sequence[str], seed: int,
            rated: bool) -> dict[str, Any]:
    """Paired differences (over concepts, the same prompts) of ``method`` minus ``baseline``: the loop share and,
    when the answers were judged (``rated``), score and fluency."""
    from hooksteer.evaluate.stats import paired_difference_ci

    keys: list[Any] = [("loop_share", _loops), *((k, k) for k in ("score", "fluency") if rated)]
    return {"baseline": baseline, **{
        name: paired_difference_ci([per_concept(method, key)[c] for c in concepts],
                                   [per_concept(baseline, key)[c] for c in concepts], seed=seed).to_dict()
        for name, key in keys}}


def judged(per_concept: Any, method: str, concepts: Sequence[str], seed: int) -> dict[str, Any]:
    """A method's mean ratings and score over ``concepts`` [bootstrap 95 %], and its score's paired differences to
    prompt steering and to 0.9 × prompt steering (the same prompts)."""
    from hooksteer.evaluate.stats import bootstrap_ci, paired_difference_ci

    mine, prompt = per_concept(method, "score"), per_concept("prompt", "score")
    a, b = [mine[c] for c in concepts], [prompt[c] for c in concepts]
    return {"score": bootstrap_ci(a, seed=seed).to_dict(),
            **{key: sum(per_concept(method, key)[c] for c in concepts) / len(concepts)
               for key in ("concept", "instruction", "fluency")},
            "minus_prompt": paired_difference_ci(a, b, seed=seed).to_dict(),
            "minus_share_prompt": paired_difference_ci(a, [0.9 * x for x in b], seed=seed).to_dict()}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import torch

    from hooksteer.io import atomic_write_text

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = [Path(r) for r in args.run]
    splits = [json.loads((r / "split.json").read_text()) for r in runs]
    n_methods = len(method_rows(args.psr, args.alphas))
    calls = n_methods * sum(len(x["held_out_concepts"]) * math.ceil(len(x["eval_prompts"]) / args.batch_size)
                            for x in splits)
    per_concept = [len(x["eval_prompts"]) - (len(x["eval_prompts"]) // 2 if args.half == "report" else 0)
                   for x in splits]  # the report half: all but the selection half's n // 2
    n_answers = n_methods * sum(len(x["held_out_concepts"]) * n for x, n in zip(splits, per_concept, strict=True))
    estimate = calls * args.max_new_tokens * SECONDS_PER_TOKEN_STEP
    if args.answers is not None:
        estimate = 0.0
    log(f"estimate: {n_answers} answers ({n_methods} methods) of ≤ {args.max_new_tokens} tokens in {calls} batches "
        f"≈ {estimate / 60:.0f} min on the 2-core CPU")
    began = time.perf_counter()
    first = json.loads((runs[0] / "settings.json").read_text())
    # the generator the runs evaluated with (oracle_forms: the embedded model's bridge, else the model itself)
    generator = None if args.answers is not None else (
        common.load_bridge(False, first["seed"]) if first.get("model") is None and not args.tiny
        else common.load_model(args.tiny, first["seed"], first.get("model")))
    methods = [name for name, _, _ in method_rows(args.psr, args.alphas)]
    records = saved_records(Path(args.answers), methods) if args.answers is not None else []
    judge = None
    if args.judge and args.answers is None:  # rated by the unsteered model (as oracle_forms' judge)
        judge = common.make_judge(args.tiny, common.load_model(args.tiny, first["seed"], first.get("model")))
    for i, run in enumerate(runs if args.answers is None else []):
        records += generate_run(run, args.tiny, generator, args, f"{i}:" if len(runs) > 1 else "", judge)
    report = {"benchmark": PROG, "command": " ".join(["benchmarks/answer_length.py", *(argv or sys.argv[1:])]),
              "runs": [str(r) for r in runs], "psr": args.psr, "alphas": args.alphas,
              "max_new_tokens": args.max_new_tokens, "tiny": args.tiny, "answers_from": args.answers,
              "half": args.half,
              "baseline": args.baseline, "rows": summarise(records, methods, args.seed, args.baseline),
              "seconds": {"total": 0.0}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.answers is None or Path(args.answers).resolve() != (out / "answers.json").resolve():
        atomic_write_text(out / "answers.json", json.dumps(records, indent=1))
    common.save_report(report, out, began, markdown)
    return report


def _interval(d: Mapping[str, Any], digits: int = 1) -> str:
    return f"{d['mean']:.{digits}f} [{d['low']:.{digits}f}, {d['high']:.{digits}f}]"


def markdown(report: Mapping[str, Any]) -> str:
    from hooksteer.evaluate.report import table

    rows = report["rows"]
    lines = ["# Answer length in tokens, long greedy answers", "", f"`{report['command']}`", "",
             f"{rows[0]['n_concepts']} held-out concepts × every eval prompt of {len(report['runs'])} run(s), at most "
             f"{report['max_new_tokens']} new tokens; a PSR at α = " + ", ".join(f"{a:g}" for a in report["alphas"]) +
             ". Tokens: written before the end-of-text token; 'ended': the answer stopped before the limit; 'loops': share "
             f"of answers with fewer than {LOOP_BELOW:g} distinct word bigrams.", ""]
    body = [[r["method"], _interval(r["tokens"]), _interval(r["minus_none_tokens"]),
             "yes" if r["minus_none_tokens"]["excludes_zero"] else "no", fmt(r["tokens_ratio"], 2),
             fmt(r["ended_share"], 2), fmt(r["words"], 1), fmt(r["words_ratio"], 2), fmt(r["distinct_bigrams"], 2),
             fmt(r["loop_share"], 2),
             "–" if r["agrees_with_saved"] is None else f"{fmt(r['agrees_with_saved'], 2)} of {r['n_checked']}"]
            for r in rows]
    lines.append(table(body, ("method", "tokens [95 %]", "− unsteered [95 %]", "excludes 0", "tokens ÷ unsteered",
                              "ended", "words", "words ÷ unsteered", "distinct bigrams", "loops",
                              "agrees with the saved answer")))
    scored = [r for r in rows if "judged" in r]
    if scored:
        body = [[r["method"], fmt(r["judged"]["concept"], 2), fmt(r["judged"]["instruction"], 2),
                 fmt(r["judged"]["fluency"], 2), _interval(r["judged"]["score"], 3),
                 _interval(r["judged"]["minus_prompt"], 3), _interval(r["judged"]["minus_share_prompt"], 3)]
                for r in scored]
        lines += ["", f"Judged at {report['max_new_tokens']} tokens (the evaluation's judge; mean over concepts):", "",
                  table(body, ("method", "concept", "instruction", "fluency", "score [95 %]", "− prompt [95 %]",
                               "− 0.9× prompt [95 %]"))]
    if report.get("baseline") is not None:
        keys = [k for k in ("score", "fluency", "loop_share") if k in rows[0]["vs_baseline"]]
        body = [[r["method"], *(_interval(r["vs_baseline"][k], 3) for k in keys)] for r in rows
                if r["method"] != report["baseline"]]
        lines += ["", f"Paired with `{report['baseline']}` (row − it, over concepts [95 %]):", "",
                  table(body, ("method", *(f"− it: {k.replace('_', ' ')}" for k in keys)))]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
