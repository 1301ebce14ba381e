"""Benchmark: cold vs warm loading of the embedded SmolLM2 model.

Every measurement runs in a fresh subprocess (so each pays the same import costs) against a fresh,
temporary ``HOOKSTEER_CACHE``:

* ``cold load_model``   - empty cache: dequantize the GGUF, save the HF copy, convert to TransformerLens.
* ``warm load_model``   - same cache again (median of ``--repeats`` runs).
* ``warm load_bridge``  - ``TransformerBridge`` booted from the cached HF copy (median of ``--repeats``).

For each, the child process reports the time to import ``torch``/``transformer_lens``/``hooksteer``
and the time of the load call itself; the parent also records the wall time of the whole process.

Usage::

    python benchmarks/load.py                       # table + runs/benchmarks/load.json
    python benchmarks/load.py --json out.json --repeats 5 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_JSON = REPO / "runs" / "benchmarks" / "load.json"
LOADERS = ("load_model", "load_bridge")


# --------------------------------------------------------------------------------------------------
# child: one measurement
# --------------------------------------------------------------------------------------------------


def child(loader: str, threads: int | None) -> dict[str, float]:
    """Import everything, run one loader, return the timings (seconds)."""
    start = time.perf_counter()
    import torch

    if threads:
        torch.set_num_threads(threads)
    import transformer_lens  # noqa: F401 - imported here so its cost is counted as import time

    from hooksteer import models

    imported = time.perf_counter()
    if loader == "load_model":
        model = models.load_model(progress=False)
    else:
        model = models.load_bridge()
    loaded = time.perf_counter()
    assert model.cfg.n_layers == 30
    return {"import_s": imported - start, "load_s": loaded - imported}


# --------------------------------------------------------------------------------------------------
# parent: orchestration and reporting
# --------------------------------------------------------------------------------------------------


def run_child(loader: str, cache: Path, threads: int | None) -> dict[str, float]:
    """Run one measurement in a fresh interpreter and return its timings plus process wall time."""
    env = dict(os.environ, HOOKSTEER_CACHE=str(cache), HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    command = [sys.executable, str(Path(__file__).resolve()), "--child", loader]
    if threads:
        command += ["--threads", str(threads)]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{loader} child failed (rc={done.returncode}):\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "process_s": wall}


def median_run(loader: str, cache: Path, threads: int | None, repeats: int) -> dict[str, Any]:
    runs = [run_child(loader, cache, threads) for _ in range(repeats)]
    summary = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    return {**summary, "runs": runs}


def measure(repeats: int, threads: int | None) -> dict[str, dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="hooksteer-bench-") as tmp:
        cache = Path(tmp)
        print(f"cold load_model (empty cache {cache}) ...", flush=True)
        results = {"cold load_model": median_run("load_model", cache, threads, 1)}
        print(f"warm load_model x{repeats} ...", flush=True)
        results["warm load_model"] = median_run("load_model", cache, threads, repeats)
        print(f"warm load_bridge x{repeats} ...", flush=True)
        results["warm load_bridge"] = median_run("load_bridge", cache, threads, repeats)
    return results


def table(results: dict[str, dict[str, Any]]) -> str:
    cold = results["cold load_model"]
    header = f"{'case':<18} {'import s':>9} {'load s':>9} {'process s':>10} {'cold/this load':>15} {'cold/this process':>18}"
    lines = [header]
    for name, row in results.items():
        load_ratio = cold["load_s"] / row["load_s"]
        process_ratio = cold["process_s"] / row["process_s"]
        lines.append(
            f"{name:<18} {row['import_s']:9.2f} {row['load_s']:9.2f} {row['process_s']:10.2f} "
            f"{load_ratio:14.1f}x {process_ratio:17.1f}x"
        )
    return "\n".join(lines)


def environment(threads: int | None) -> dict[str, Any]:
    from importlib.metadata import version

    import torch
    import transformer_lens  # noqa: F401
    import transformers

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "transformer_lens": version("transformer-lens"),
        "torch_threads": threads or torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help=f"output JSON (default {DEFAULT_JSON})"
    )
    parser.add_argument("--repeats", type=int, default=3, help="warm runs per case (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in the children")
    parser.add_argument("--child", choices=LOADERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.threads)))
        return
    env = environment(args.threads)
    results = measure(args.repeats, args.threads)
    print()
    print(table(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"environment": env, "results": results}, indent=2))
    print(f"\nsaved {args.json}")


if __name__ == "__main__":
    main()
