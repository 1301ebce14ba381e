"""Steer the embedded GGUF in real llama.cpp with an exported control vector; compare with hooksteer.

Builds a DiffMean love/hate vector on the embedded SmolLM2-135M-Instruct (hooksteer's dequantised
float32 HookedTransformer), exports it with ``hooksteer.llamacpp.export_gguf``, applies the file in
llama.cpp (llama-cpp-python 0.3.36, Q4_1 weights) through ``llama_set_adapter_cvec`` after parsing
it with llama.cpp's own GGUF reader, and reports how well the next-token log-prob shifts agree
(Pearson correlation over the union of both steered top-k tokens; same steered top-1). Also: the
same file applied one layer too early/late in llama.cpp (the mapping is exact only at offset 0), a
two-layer set, and a ``hook_resid_pre`` vector. Prints llama-cpp-python's recorded build time.

Needs llama-cpp-python: ``make llamacpp`` (or ``make test-llamacpp``) builds it once.

    .venv/bin/python benchmarks/llamacpp_agreement.py [--layer 10] [--coefficients 2 4 8] [--out runs/llamacpp]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

WHEELS = Path(os.environ.get("HOOKSTEER_CACHE", Path.home() / ".cache" / "hooksteer")) / "wheels"
PROMPTS = (
    "Tell me about your day.",
    "Write two sentences about the weather today.",
    "What do you think of your neighbours?",
    "Describe your favourite food.",
    "How was the film you saw last night?",
    "Give me your opinion of Mondays.",
)


def build_record(version: str) -> dict | None:
    """The build time recorded by scripts/install_llamacpp.sh, if any."""
    path = WHEELS / f"llama_cpp_python-{version}.build.json"
    return json.loads(path.read_text()) if path.is_file() else None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layer", type=int, default=10)
    parser.add_argument("--coefficients", type=float, nargs="+", default=[2.0, 4.0, 8.0])
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/llamacpp")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import llama_cpp

    import hooksteer as hs
    from hooksteer.data.contrast import contrast_texts
    from hooksteer.llamacpp import LlamaCppModel, export_gguf
    from hooksteer.llamacpp_agreement import shift_agreement
    from hooksteer.models import find_default_gguf

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = build_record(llama_cpp.__version__)
    start = time.perf_counter()
    model = hs.load_model()
    positive, negative = contrast_texts("love_hate")
    hook = f"blocks.{args.layer}.hook_resid_post"
    vector = hs.methods.diffmean(model, positive, negative, hook, aggregation="mean")
    prompts = [model.to_tokens(hs.format_chat(model, p), prepend_bos=False)[0].tolist() for p in PROMPTS]
    llm = LlamaCppModel(find_default_gguf(), n_ctx=256, n_threads=args.threads)
    base = None
    results: dict = {"llama_cpp_python": llama_cpp.__version__, "build": record, "layer": args.layer,
                     "vector_norm": vector.norm(), "prompts": list(PROMPTS), "top_k": args.top_k, "cases": []}

    def run(name: str, steering, file: str, shift: int = 0) -> dict:
        nonlocal base
        path = export_gguf(steering, out / file, model=model)
        report = shift_agreement(model, llm, path, steering, prompts, top_k=args.top_k, shift=shift, base=base)
        base = report.pop("base")
        report["name"] = name
        results["cases"].append(report)
        print(f"{name:<34} corr mean {report['mean_correlation']:.3f} min {report['min_correlation']:.3f}  "
              f"top-1 same {report['top1_agreement']:.2f}  top-1 changed {report['top1_changed_by_steering']:.2f}  "
              f"|Δ| torch {sum(r['mean_abs_shift_torch'] for r in report['prompts']) / len(prompts):.2f}")
        return report

    print(f"DiffMean love/hate at {hook}, norm {vector.norm():.2f}; {len(prompts)} chat prompts; top-k {args.top_k}")
    for c in args.coefficients:
        run(f"x{c:g} at {hook}", vector * c, f"love_x{c:g}.gguf")
    strong = max(args.coefficients)
    for shift in (-1, 1):
        run(f"x{strong:g}, applied at layer {args.layer + shift} (wrong)", vector * strong,
            f"love_x{strong:g}.gguf", shift=shift)
    pre = hs.methods.diffmean(model, positive, negative, f"blocks.{args.layer + 1}.hook_resid_pre", aggregation="mean")
    run(f"x{strong:g} at blocks.{args.layer + 1}.hook_resid_pre", pre * strong, "love_pre.gguf")
    early = hs.methods.diffmean(model, positive, negative, "blocks.5.hook_resid_post", aggregation="mean")
    two = hs.SteeringSet([early * (strong / 2), vector * (strong / 2)])
    run(f"x{strong / 2:g} at layers 5 + {args.layer}", two, "love_two_layers.gguf")
    llm.close()
    results["seconds"] = time.perf_counter() - start
    unsteered = results["cases"][0]
    results["unsteered_top1_agreement"] = unsteered["unsteered_top1_agreement"]
    results["unsteered_logit_correlation"] = [r["unsteered_logit_correlation"] for r in unsteered["prompts"]]
    print(f"unsteered: top-1 same {unsteered['unsteered_top1_agreement']:.2f}, logit correlation "
          f"{min(results['unsteered_logit_correlation']):.4f}-{max(results['unsteered_logit_correlation']):.4f} "
          "(Q4_1 in llama.cpp vs dequantised float32 in torch)")
    if record:
        print(f"llama-cpp-python {record['version']} build: {record['build_seconds']} s on {record['cpus']} cores "
              f"(CMAKE_ARGS {record['cmake_args']})")
    else:
        print(f"no build record in {WHEELS} (llama-cpp-python was not built by scripts/install_llamacpp.sh)")
    (out / "agreement.json").write_text(json.dumps(results, indent=2))
    print(f"Saved {out / 'agreement.json'} ({results['seconds']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
