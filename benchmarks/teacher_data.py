"""Prompt-steering data quality on the embedded model: phrasing search and teacher-target hit rate.

1. **Phrasing search** (:func:`hooksteer.data.teacher.search_phrasing`): every steering template ×
   placement style on a small dev set of *training* concepts and prompts, sampled; reports the mean
   concept score (EmbeddingJudge, 0–2) and the share of answers rated on-concept (≥ 1) per cell.
2. **Teacher targets** (:func:`hooksteer.data.teacher.generate_teacher_targets`): for (concept, prompt)
   pairs of the training split, ``n_candidates`` samples each with the chosen phrasing; reports the
   candidate hit rate (judge says on-concept and fluent), the pair hit rate and how many pairs got no
   acceptable candidate.

    python benchmarks/teacher_data.py [--dev-concepts 4 --dev-prompts 3 --pairs-concepts 8 --pairs-prompts 4]

Results go to ``runs/benchmarks/teacher_data/`` (JSON + markdown). Concepts and prompts come from the
seeded split of :func:`hooksteer.data.splits.make_split` (training side only).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dev-concepts", type=int, default=4)
    parser.add_argument("--dev-prompts", type=int, default=3)
    parser.add_argument("--samples", type=int, default=2, help="samples per (concept, prompt) in the search")
    parser.add_argument("--pairs-concepts", type=int, default=8)
    parser.add_argument("--pairs-prompts", type=int, default=4)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/benchmarks/teacher_data")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import hooksteer as hs
    from hooksteer.data.base_prompts import load_base_prompts
    from hooksteer.data.concepts import STEERING_TEMPLATES, load_concepts
    from hooksteer.data.splits import make_split
    from hooksteer.data.teacher import TeacherConfig, generate_teacher_targets, search_phrasing
    from hooksteer.evaluate.judges import EmbeddingJudge, LMPerplexity

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = hs.load_bridge()
    concepts, prompts = load_concepts(seed=args.seed), load_base_prompts(strict=False)
    split = make_split(concepts, prompts, seed=args.seed)
    train_concepts = split.select(concepts, split.train_concepts)
    train_prompts = split.select(prompts, split.train_prompts)
    judge = EmbeddingJudge(perplexity=LMPerplexity(model))

    started = time.perf_counter()
    search = search_phrasing(model, train_concepts[: args.dev_concepts], train_prompts[: args.dev_prompts], judge,
                             n_samples=args.samples, max_new_tokens=args.max_new_tokens, seed=args.seed)
    search_s = time.perf_counter() - started
    best_index = list(STEERING_TEMPLATES).index(search.template) if search.template in STEERING_TEMPLATES else 0

    pairs_concepts = train_concepts[args.dev_concepts: args.dev_concepts + args.pairs_concepts]
    pairs = [(c, p) for c in pairs_concepts for p in train_prompts[args.dev_prompts: args.dev_prompts + args.pairs_prompts]]
    config = TeacherConfig(n_candidates=args.candidates, max_new_tokens=args.max_new_tokens, style=search.style,
                           phrasing=best_index, seed=args.seed)
    teacher = generate_teacher_targets(model, pairs, judge, config)

    lines = ["## Phrasing search (dev set: "
             f"{args.dev_concepts} training concepts × {args.dev_prompts} prompts × {args.samples} samples, T=0.8)", "",
             "| template | style | mean concept (0–2) | on-concept share |", "|---|---|---|---|"]
    for row in sorted(search.table, key=lambda r: -r["mean_concept"]):
        lines.append(f"| {row['template']} | {row['style']} | {row['mean_concept']:.2f} | {row['hit_rate']:.2f} |")
    stats = teacher.stats
    lines += ["", f"best: `{search.template}` ({search.style}); search took {search_s:.0f} s", "",
              f"## Teacher targets ({len(pairs)} pairs × {args.candidates} candidates, best phrasing)", "",
              f"- candidate hit rate (concept ≥ {config.min_concept}, fluency ≥ {config.min_fluency}): "
              f"{stats['candidate_hit_rate']:.2f}",
              f"- pairs with an acceptable target: {stats['pair_hit_rate']:.2f}; "
              f"pairs without one: {stats['n_pairs_without_target']} of {stats['n_pairs']}",
              f"- seconds: {stats['seconds']}"]
    report = "\n".join(lines)
    print(report)
    (out / "results.md").write_text(report + "\n")
    (out / "results.json").write_text(json.dumps({
        "args": vars(args), "search": {"best_template": search.template, "best_style": search.style,
                                       "table": search.table, "seconds": search_s},
        "teacher": stats, "split_seed": split.seed}, indent=2))
    print(f"\nsaved {out}/results.md and results.json")


if __name__ == "__main__":
    main()
