"""Scaling of ``train --distributed`` with the number of processes on this CPU (1 vs 2).

    HF_HUB_OFFLINE=1 python benchmarks/distributed_scaling.py            # ~10 min on 2 shared cores
    HF_HUB_OFFLINE=1 python benchmarks/distributed_scaling.py --tokens 4096

Each run is the real command, ``torchrun --nproc-per-node N -m sae_lens_jumprelu train
--distributed MODE ...``, on the embedded Gemma 3 270M and corpus; the number read is
``run.json``'s ``collect_and_train`` seconds (model passes + all-to-all/all-reduce + SAE steps;
model loading and evaluation excluded), as training tokens per second per SAE.

- ``data``: one SAE (resid:3), the model's passes split over the ranks, gradients all-reduced.
- ``sae``: four SAEs (resid:3, mlp:3 at two targets each), split two and two over the ranks,
  activations exchanged all-to-all.

Threads: 1 process gets both cores (OMP_NUM_THREADS=2) and also one (=1); 2 processes one each.
The machine has 2 cores and is shared with other jobs, so expect little gain and some noise.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "distributed_scaling.json"
SITES = {"data": ["--site", "resid:3"], "sae": ["--site", "resid:3", "--site", "mlp:3"]}
TARGETS = {"data": ["--target-l0", "32"], "sae": ["--target-l0", "16", "--target-l0", "32"]}


def run(mode: str, procs: int, threads: int, tokens: int, out: Path) -> dict[str, float]:
    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={procs}",
        "-m", "sae_lens_jumprelu", "train", "--distributed", mode, *SITES[mode], *TARGETS[mode],
        "--tokens", str(tokens), "--context-size", "128", "--d-sae", "2048",
        "--batch-size", "1024", "--eval-tokens", "128", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    record = json.loads((out / "run.json").read_text())
    seconds = record["seconds"]["collect_and_train"]
    return {
        "mode": mode,
        "processes": procs,
        "threads_per_process": threads,
        "saes": len(record["metrics"]),
        "tokens_per_sae": tokens,
        "train_seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
        "sae_tokens_per_s": round(tokens * len(record["metrics"]) / seconds, 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16384, help="training tokens per SAE")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("data", "sae"):
            for procs, threads in ((1, 2), (1, 1), (2, 1)):
                out = Path(tmp) / f"{mode}-{procs}x{threads}"
                rows.append(run(mode, procs, threads, args.tokens, out))
                print(json.dumps(rows[-1]), flush=True)
    print("\n| mode | processes x threads | SAEs | train s | tokens/s per SAE | vs 1x2 |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        base = next(
            r
            for r in rows
            if r["mode"] == row["mode"] and (r["processes"], r["threads_per_process"]) == (1, 2)
        )
        print(
            f"| {row['mode']} | {row['processes']} x {row['threads_per_process']} | {row['saes']} "
            f"| {row['train_seconds']} | {row['tokens_per_s']} "
            f"| {row['tokens_per_s'] / base['tokens_per_s']:.2f} |"
        )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"tokens_per_sae": args.tokens, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
