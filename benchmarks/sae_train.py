"""Train an SAE on the embedded model (sae-lens, packaged corpora) and compare steering vectors against it.

1. Train (or, with ``--sae``, load) a TopK SAE at ``--hook`` on Wikipedia intros + BBC News; print its
   held-out explained variance, L0 and dead fraction.
2. Vectors at the same hook: DiffMean "sport" (BBC sport articles vs the other four BBC categories),
   DiffMean "love/hate" (hand-written contrast set), the SAE feature that best separates sport from
   the rest (scaled by its typical max activation), and a random direction (control).
3. For each: top features by cosine with their top-activating held-out snippets, the SAE's encoding of
   the vector, and the share of its steering effect (KL on next-token distributions, all vectors scaled to
   ``--strength`` × the median residual norm) kept by its top-k feature reconstruction, k = 1, 5, 20.

Run (2-core CPU shared with other jobs; ~10 min for training, a few minutes for the comparison):

    .venv/bin/python benchmarks/sae_train.py                                # train + compare
    .venv/bin/python benchmarks/sae_train.py --sae runs/sae/l20             # compare only

Results go to ``<out>/comparison.json`` (and the SAE's ``metrics.json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hook", default="blocks.20.hook_resid_post")
    parser.add_argument("--sae", help="existing SAE folder (skip training)")
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--d-sae", type=int, default=2048)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-tokens", type=int, default=512)
    parser.add_argument("--eval-tokens", type=int, default=10_000)
    parser.add_argument("--out", default="runs/sae/l20")
    parser.add_argument("--ks", default="1,5,20")
    parser.add_argument("--strength", type=float, default=0.5, help="vector norm as a fraction of the median "
                                                                    "residual norm at the hook")
    parser.add_argument("--prompts", type=int, default=12, help="texts for the KL measurement")
    parser.add_argument("--snippet-texts", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


def first_sentences(text: str, n_chars: int = 300) -> str:
    cut = text[:n_chars]
    return cut[: cut.rfind(".") + 1] if "." in cut[40:] else cut


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    import hooksteer as hs
    from analysis.corpora import bbc_news, load_corpus, split_texts
    from analysis.sae_compare import (
        compare_vector,
        load_sae,
        steering_effect_retained,
        top_activating_snippets,
    )
    from analysis.sae_training import SAETrainingSettings, evaluate_sae, train_sae
    from hooksteer.data.contrast import contrast_texts
    from hooksteer.methods import diffmean, random_like
    from hooksteer.methods.sae_feature import find_concept_features, sae_feature_vector

    report: dict = {"args": vars(args), "machine": f"CPU, torch threads={args.threads}"}
    model = hs.load_model(progress=False)
    settings = SAETrainingSettings(hook_name=args.hook, d_sae=args.d_sae, k=args.k, training_tokens=args.tokens,
                                   train_batch_size_tokens=args.batch_tokens, lr=args.lr,
                                   eval_tokens=args.eval_tokens, seed=args.seed)
    corpus = load_corpus(settings.corpora, seed=settings.seed)
    _, heldout = split_texts(corpus, settings.heldout_texts, seed=settings.seed)

    start = time.perf_counter()
    if args.sae:
        sae = load_sae(args.sae)
        metrics = evaluate_sae(model, sae, heldout, max_tokens=args.eval_tokens, progress=True)
        out = Path(args.sae)
    else:
        result = train_sae(model, settings, args.out)
        sae, metrics, out = result.sae, result.metrics, result.path
        report["train_seconds"] = time.perf_counter() - start
        print(f"trained in {report['train_seconds']:.0f} s; saved to {out}")
    report["sae"] = {"path": str(out), "hook": args.hook, "d_sae": int(sae.cfg.d_sae), **metrics.to_dict()}
    print(f"SAE held-out ({metrics.n_tokens} tokens): explained variance {metrics.explained_variance:.3f}, "
          f"L0 {metrics.l0:.1f}, dead fraction {metrics.dead_fraction:.3f}")

    # ---- vectors
    sport = [first_sentences(t) for t in bbc_news(limit=60, seed=1, categories=["sports"])]
    other = [first_sentences(t) for t in bbc_news(limit=60, seed=1, categories=["business", "politics", "tech",
                                                                                   "entertainment"])]
    love, hate = contrast_texts("love_hate")
    residual_norm = statistics.median(
        float(n) for acts in hs.activations.collect_activations(model, heldout[:8], args.hook)
        for n in acts[1:].norm(dim=-1))
    target_norm = args.strength * residual_norm
    found = find_concept_features(model, sae, sport, other, k=5)
    vectors = {
        "diffmean_sport": diffmean(model, sport, other, args.hook, aggregation="mean"),
        "diffmean_love_hate": diffmean(model, love, hate, args.hook, aggregation="mean"),
        "sae_feature_sport": sae_feature_vector(sae, found.feature_ids[0], model=model, texts=sport),
    }
    vectors["random_control"] = random_like(vectors["diffmean_sport"], seed=args.seed)
    report["residual_norm_median"] = residual_norm
    report["sport_features"] = {"ids": found.feature_ids, "scores": found.scores}

    prompts = [first_sentences(t, 200) for t in heldout[-args.prompts:]]
    snippet_texts = heldout[: args.snippet_texts]
    ks = [int(k) for k in args.ks.split(",")]
    report["vectors"] = {}
    comparisons = {name: compare_vector(vector, sae, k=5) for name, vector in vectors.items()}
    wanted = sorted({f for cmp in comparisons.values() for f in cmp.top_features[:3]})
    snippets = top_activating_snippets(model, sae, wanted, snippet_texts, n=3, window=6, progress=True)
    reference = torch.cat([a[1:] for a in hs.activations.collect_activations(model, prompts[:4], args.hook)])
    for name, vector in vectors.items():
        cmp = comparisons[name]
        scaled = vector * (target_norm / vector.norm())
        delta = compare_vector(scaled, sae, k=5, reference=reference)
        retained = steering_effect_retained(model, scaled, sae, ks=ks, prompts=prompts)
        retained_omp = steering_effect_retained(model, scaled, sae, ks=ks, prompts=prompts, selection="omp")
        report["vectors"][name] = {
            "norm": vector.norm(), "comparison_direct": cmp.summary(), "comparison_delta": delta.summary(),
            "snippets": {str(f): [(s.activation, s.text) for s in snippets[f]] for f in cmp.top_features[:3]},
            "retained_cosine_selection": [r.to_dict() for r in retained],
            "retained_omp_selection": [r.to_dict() for r in retained_omp],
        }
        print(f"\n== {name} (norm {vector.norm():.2f}, steered at norm {target_norm:.1f})")
        print("  top features by cosine:", ", ".join(f"{f} ({c:.3f})" for f, c in
                                                   zip(cmp.top_features, cmp.top_cosines, strict=True)))
        print(f"  encoding (delta on prompt activations): L0 {delta.encoding_l0}, participation "
              f"{delta.encoding_participation:.1f}, relative reconstruction "
              f"error {delta.reconstruction_error:.3f}, cosine {delta.reconstruction_cosine:.3f}")
        for feature in cmp.top_features[:3]:
            for s in snippets[feature][:2]:
                print(f"    f{feature} {s.activation:6.2f}  {s.text[:100]}")
        for r, o in zip(retained, retained_omp, strict=True):
            print(f"  k={r.k:3d}: retained {r.retained:6.3f} (cos {r.cosine:.3f}) | OMP retained {o.retained:6.3f} "
                  f"(cos {o.cosine:.3f})   KL(full||none) {r.kl_full:.3f}")
    report["total_seconds"] = time.perf_counter() - start
    (out / "comparison.json").write_text(json.dumps(report, indent=2, default=float))
    print(f"\nwrote {out / 'comparison.json'} ({report['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
