"""Benchmark: HyperSteer inference and training speed on the embedded SmolLM2-135M-Instruct.

Measured in one run, on the same machine and thread count:

* ``build``        - seconds to build H from the base model (copies of embeddings + ``n_blocks`` blocks).
* ``inference``    - seconds per new steering vector (``hyper.vector(s, x)``, one prompt pair per call; median
                     over ``--vectors`` unseen pairs after one warm-up call) and per vector in one batched
                     call (``hyper.vectors(list, list)``); also for every variant with the same n_blocks
                     (cross_attention and in_context pay for the base model's forward to layer l / H over x).
* ``training``     - target tokens/s and sequence tokens/s (prompt + target) of full optimizer steps
                     (forward H, steered loss, backward, clip, AdamW), for
                     ``full_forward``       every step runs the whole base model with the vector hooked in
                                            (and, for cross-attention, a forward to layer l for the context);
                     ``above_site_cold``    first epoch of the optimised path: layer-l activations computed
                                            once and cached, only blocks l+1.. run with Δ, only target
                                            positions unembedded;
                     ``above_site_warm``    later epochs of the optimised path (cache hits only).
                     ``speedup`` = tokens/s of each mode / tokens/s of ``full_forward``, same run.

The examples are a handful of hand-written (steering prompt, base prompt, target) triples, labelled
as such: only their token counts matter for speed.

Usage::

    .venv/bin/python benchmarks/hypersteer_speed.py                  # table + runs/benchmarks/hypersteer_speed.json
    .venv/bin/python benchmarks/hypersteer_speed.py --n-blocks 4 --steps 4 --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_JSON = REPO / "runs" / "benchmarks" / "hypersteer_speed.json"

# Hand-written examples (speed only: the content is irrelevant, the lengths are typical).
STEERING = [
    "Mention volcanoes in every answer.", "Talk about the ocean and sea creatures.", "Answer like a pirate.",
    "Bring up jazz music whenever you can.", "Make every answer about cooking pasta.",
    "Refer to ancient Rome in your reply.", "Keep mentioning the planet Mars.", "Talk about trains.",
]
BASE = [
    "Tell me about your day.", "What is a good way to learn a new language?", "Write a short poem about rain.",
    "How do I fix a flat bicycle tyre?", "Give me three tips for better sleep.", "Describe your ideal holiday.",
    "What should I cook for dinner tonight?", "Explain how a rainbow forms.",
]
TARGET = ("Well, much like a volcano that slowly builds pressure before it erupts, my day started quietly "
          "and then became very busy, with many meetings and a long walk in the afternoon.")


def examples(n: int) -> list[Any]:
    from hooksteer.data.schema import SteeringExample

    return [SteeringExample(f"c{i % len(STEERING)}", STEERING[i % len(STEERING)],
                            BASE[(i * 3 + i // len(BASE)) % len(BASE)], TARGET) for i in range(n)]


def measure_inference(hyper: Any, n_vectors: int) -> dict[str, float]:
    pairs = [(f"{STEERING[i % len(STEERING)]} (variant {i})", BASE[(i + 1) % len(BASE)]) for i in range(n_vectors)]
    from hooksteer.hypersteer.timing import time_vector_inference

    timing = time_vector_inference(hyper, pairs, warmup=(STEERING[0], BASE[0]))
    return {key: timing[key] for key in ("seconds_per_vector", "seconds_per_vector_batched", "n_vectors")}


def timed_steps(trainer: Any, epochs: int) -> list[dict[str, float]]:
    """Run full optimizer steps by hand (same calls as the trainer's loop), timing each."""
    from hooksteer.hypersteer.data import collate

    records = []
    trainer.model.train()
    for epoch in range(epochs):
        for indices in trainer._epoch_batches(epoch):
            batch = collate([trainer.train_data[i] for i in indices], trainer.pad_id)
            start = time.perf_counter()
            loss_sum, n = trainer.batch_loss(batch, trainer.train_cache)
            trainer.accelerator.backward(loss_sum / n)
            trainer.accelerator.clip_grad_norm_(trainer.model.parameters(), 1.0)
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
            records.append({"epoch": epoch, "seconds": time.perf_counter() - start, "target_tokens": int(n),
                            "sequence_tokens": int(batch.lengths.sum())})
    return records


def rates(records: list[dict[str, float]]) -> dict[str, float]:
    seconds = sum(r["seconds"] for r in records)
    return {"steps": len(records), "seconds": seconds, "seconds_per_step": seconds / len(records),
            "target_tokens_per_s": sum(r["target_tokens"] for r in records) / seconds,
            "sequence_tokens_per_s": sum(r["sequence_tokens"] for r in records) / seconds}


def measure_training(model: Any, config: Any, steps: int) -> dict[str, Any]:
    from hooksteer.hypersteer import HyperSteer, HyperSteerTrainer

    data = examples(steps * config.batch_size)
    results: dict[str, Any] = {}
    for mode, above, cache in (("full_forward", False, "off"), ("above_site", True, "cpu")):
        hyper = HyperSteer(model, config, start_above_site=above, activation_cache=cache, eval_every=0)
        trainer = HyperSteerTrainer(hyper, data, progress=False)
        records = timed_steps(trainer, epochs=1 if mode == "full_forward" else 2)
        if mode == "full_forward":
            results["full_forward"] = rates(records)
        else:
            results["above_site_cold"] = rates([r for r in records if r["epoch"] == 0])
            results["above_site_warm"] = rates([r for r in records if r["epoch"] == 1])
        del trainer, hyper
    base = results["full_forward"]["target_tokens_per_s"]
    for values in results.values():
        values["speedup"] = values["target_tokens_per_s"] / base
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--variant", default="cross_attention")
    parser.add_argument("--n-blocks", type=int, default=2)
    parser.add_argument("--layer", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per epoch measured")
    parser.add_argument("--vectors", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    import hooksteer as hs
    from hooksteer.hypersteer import VARIANTS, HyperSteer, HyperSteerConfig

    start = time.perf_counter()
    model = hs.load_model(args.model)
    load_seconds = time.perf_counter() - start
    # cross-entropy on hand-written targets: the speed of a step is the same as with loss="distill" (one
    # gather over the teacher's top-k instead of one over the label), and no teacher pass is needed
    config = HyperSteerConfig(variant=args.variant, n_blocks=args.n_blocks, layer=args.layer,
                              batch_size=args.batch_size, loss="ce")
    start = time.perf_counter()
    hyper = HyperSteer(model, config)
    build_seconds = time.perf_counter() - start
    n_params = sum(p.numel() for p in hyper.parameters())
    inference = measure_inference(hyper, args.vectors)
    del hyper
    inference_by_variant = {}
    for variant in VARIANTS:
        other = HyperSteer(model, dataclasses.replace(config, variant=variant))
        inference_by_variant[variant] = measure_inference(other, max(2, args.vectors // 2))
        del other
    training = measure_training(model, config, args.steps)

    environment = {"python": platform.python_version(), "torch": torch.__version__, "threads": args.threads,
                   "machine": platform.machine(), "processor": platform.processor() or platform.platform(),
                   "device": "cpu"}
    setting = {"model": args.model, "variant": args.variant, "n_blocks": args.n_blocks,
               "layer": config.resolved(model).layer, "n_layers": model.cfg.n_layers, "batch_size": args.batch_size,
               "h_parameters": n_params}
    print(f"{args.model}: {setting['n_layers']} layers, H = {args.variant}, {args.n_blocks} blocks, "
          f"site layer {setting['layer']}, {n_params / 1e6:.1f} M trainable parameters; {args.threads} thread(s)")
    print(f"load model {load_seconds:.1f} s, build H {build_seconds:.2f} s")
    print(f"new vector: {inference['seconds_per_vector'] * 1000:.0f} ms (one pair per call), "
          f"{inference['seconds_per_vector_batched'] * 1000:.0f} ms/vector batched x{inference['n_vectors']}")
    for variant, values in inference_by_variant.items():
        print(f"  {variant:<16} {values['seconds_per_vector'] * 1000:>6.0f} ms/vector "
              f"({values['seconds_per_vector_batched'] * 1000:.0f} ms batched)")
    print(f"{'training mode':<18} {'s/step':>8} {'target tok/s':>13} {'seq tok/s':>10} {'speedup':>8}")
    for mode, values in training.items():
        print(f"{mode:<18} {values['seconds_per_step']:>8.2f} {values['target_tokens_per_s']:>13.1f} "
              f"{values['sequence_tokens_per_s']:>10.1f} {values['speedup']:>7.2f}x")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"environment": environment, "setting": setting, "load_seconds": load_seconds,
                                     "build_seconds": build_seconds, "inference": inference,
                                     "inference_by_variant": inference_by_variant,
                                     "training": training}, indent=2))
    print(f"saved {args.json}")


if __name__ == "__main__":
    main()
