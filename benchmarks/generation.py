"""Generation speed: hooksteer's paths vs Hugging Face ``generate``, steered vs unsteered, peak memory.

Every case runs in its own subprocess (fair imports, its own peak RSS), greedy, a fixed number of new
tokens (EOS ignored), on the embedded SmolLM2-135M-Instruct weights, all cases in the same run.

    python benchmarks/generation.py [--new-tokens 64] [--batches 1 16] [--repeats 2] [--json out.json]

Cases:
    hf                      transformers ``generate`` on the dequantized HF copy (the baseline)
    bridge                  hooksteer.generation on a TransformerBridge (the default fast path: HF loop on the
                            bridge's weight-sharing HF twin, steering hooks replayed as torch hooks)
    bridge+steer            the same, inside ``hs.steer`` with a constant vector at layer 6
    bridge+per_token        the same, with a per-token coefficient schedule
    hookpoints              hooksteer.generation on a TransformerBridge with ``fast=False`` (HF loop through
                            every TransformerLens hook point of the bridge)
    hookpoints+steer        the same, steered
    hooked                  hooksteer.generation on a HookedTransformer (TransformerLens loop)
    hooked+steer            the same, steered

Asserted: greedy tokens of ``bridge`` and ``hookpoints`` equal those of ``hf`` (unsteered); a ``hooked``
mismatch is reported (TransformerLens's own attention/left-padding numerics) but not fatal.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

# Hand-written everyday requests (benchmark inputs only; not an evaluation set).
PROMPTS = [
    "Tell me about your day.", "Write two sentences about the weather today.", "How do I boil an egg?",
    "Give me three tips for learning a language.", "What is a good name for a cat?",
    "Describe a walk in the park.", "How can I sleep better?", "Suggest a weekend activity.",
    "Explain what a budget is.", "Write a short thank-you note to a friend.", "What should I cook tonight?",
    "How do plants grow?", "Describe your favourite season.", "Give me advice for a job interview.",
    "What makes a good story?", "How do I stay focused while studying?",
]
CASES = ["hf", "bridge", "bridge+steer", "bridge+per_token", "hookpoints", "hookpoints+steer", "hooked", "hooked+steer"]


def run_case(case: str, batch: int, new_tokens: int, repeats: int, tokens_out: str, device: str = "cpu") -> dict:
    import torch

    import hooksteer as hs
    from hooksteer.generation import chat_prompts, generate_tokens

    started = time.perf_counter()
    if case == "hf":
        model, tokenizer = hs.models.load_hf_model(device=device)
    elif case.startswith(("bridge", "hookpoints")):
        model = hs.load_bridge(device=device)
        tokenizer = model.tokenizer
    else:
        model = hs.load_model(progress=False, device=device)
        tokenizer = model.tokenizer
    on_cuda = torch.device(device).type == "cuda"
    load_s = time.perf_counter() - started
    texts = [hs.format_chat(tokenizer, p) for p in PROMPTS[:batch]] if case == "hf" else chat_prompts(
        model, PROMPTS[:batch])

    def generate() -> list[torch.Tensor]:
        if case == "hf":
            encoded = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left").to(model.device)
            out = model.generate(**encoded, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            return list(out[:, encoded["input_ids"].shape[1]:])
        return generate_tokens(model, texts, max_new_tokens=new_tokens, stop_at_eos=False,
                               fast=not case.startswith("hookpoints"))

    vector = hs.SteeringVector("blocks.6.hook_resid_post",
                               torch.randn(576, generator=torch.Generator().manual_seed(0)) * 0.5)
    timings = []
    for _ in range(repeats):
        begin = time.perf_counter()
        if case.endswith("+steer"):
            with hs.steer(model, vector):
                rows = generate()
        elif case.endswith("+per_token"):
            with hs.steer(model, vector, per_token=torch.linspace(0.0, 2.0, 512)):
                rows = generate()
        else:
            rows = generate()
        if on_cuda:
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - begin)
    Path(tokens_out).write_text(json.dumps([row.tolist() for row in rows]))
    best = min(timings)
    return {
        "case": case, "batch": batch, "new_tokens": new_tokens, "seconds": best, "all_seconds": timings,
        "tokens_per_s": batch * new_tokens / best, "load_s": load_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": torch.cuda.get_device_name() if on_cuda else "cpu",
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if on_cuda else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per case (default: torch's own)")
    parser.add_argument("--device", default="cpu", help="torch device for every case, e.g. cuda (default cpu)")
    parser.add_argument("--json", default="runs/benchmarks/generation.json")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "BATCH"), help=argparse.SUPPRESS)
    parser.add_argument("--tokens-out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        result = run_case(args.child[0], int(args.child[1]), args.new_tokens, args.repeats, args.tokens_out, args.device)
        print("RESULT " + json.dumps(result))
        return

    out_dir = Path(args.json).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for batch in args.batches:
        for case in args.cases:
            tokens_file = out_dir / f"tokens-{case}-{batch}.json"
            command = [sys.executable, __file__, "--child", case, str(batch), "--new-tokens", str(args.new_tokens),
                       "--repeats", str(args.repeats), "--tokens-out", str(tokens_file), "--device", args.device]
            env = {**os.environ, "TQDM_DISABLE": "1"}
            if args.threads:
                env["OMP_NUM_THREADS"] = str(args.threads)
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"case {case} batch {batch} failed:\n{done.stderr[-3000:]}")
            result = json.loads(line[len("RESULT "):])
            result["tokens"] = json.loads(tokens_file.read_text())
            results.append(result)
            print(f"  {case:18s} batch {batch:2d}: {result['seconds']:7.2f} s  "
                  f"{result['tokens_per_s']:7.1f} tok/s  peak {result['peak_rss_mb']:.0f} MB", flush=True)

    print(f"\nGreedy generation, {args.new_tokens} new tokens, SmolLM2-135M-Instruct, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch threads: {args.threads or 'default'}, device: {results[0]['device'] if results else args.device}\n")
    print("| case | batch | s | tokens/s | × HF | × same path unsteered | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    by_key = {(r["case"], r["batch"]): r for r in results}
    failures: list[str] = []
    notes: list[str] = []
    for r in results:
        hf = by_key.get(("hf", r["batch"]))
        base = by_key.get((r["case"].split("+")[0], r["batch"]))
        vs_hf = f"{r['tokens_per_s'] / hf['tokens_per_s']:.2f}" if hf else "-"
        vs_plain = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}" if base and "+" in r["case"] else "-"
        print(f"| {r['case']} | {r['batch']} | {r['seconds']:.2f} | {r['tokens_per_s']:.1f} | {vs_hf} | "
              f"{vs_plain} | {r['peak_rss_mb']:.0f} |")
        if hf and r["case"] in ("bridge", "hookpoints", "hooked") and r["tokens"] != hf["tokens"]:
            differing = sum(a != b for a, b in zip(r["tokens"], hf["tokens"], strict=True))
            message = f"{r['case']} batch {r['batch']}: greedy tokens differ from HF in {differing} of {r['batch']} rows"
            (notes if r["case"] == "hooked" else failures).append(message)
    for r in results:
        r.pop("tokens")
    Path(args.json).write_text(json.dumps({"new_tokens": args.new_tokens, "threads": args.threads, "results": results,
                                           "token_mismatches": failures, "hooked_mismatches": notes}, indent=2))
    print(f"\nsaved {args.json}")
    for note in notes:
        print("NOTE (HookedTransformer):", note)
    if failures:
        sys.exit("NOT IDENTICAL: " + "; ".join(failures))
    print("greedy tokens identical to HF for the unsteered bridge paths (fast twin and hook points)")


if __name__ == "__main__":
    main()
