"""Training-step time and memory: our sparse JumpReLU step against our dense step, SAELens's
built-in JumpReLU, TopK and BatchTopK trainers and the bare encoder matmul (the floor).

    python benchmarks/training_step_speed.py                      # ~1.5 h on 2 CPU cores
    python benchmarks/training_step_speed.py --quick              # ~5 min: d_sae 4096, no quality
    python benchmarks/training_step_speed.py --sections speed memory

Sections (results merged into one JSON, by section):

- speed: d_in 640, batch 4096, L0 64 for every SAE, d_sae 4096 / 16384 / 65536. A step is
  ``training_forward_pass`` as SAELens's ``SAETrainer`` calls it, ``loss.backward()``, then
  ``Adam.step()`` and ``zero_grad()`` (the same optimizer for all). Forward+backward and the
  Adam part are timed separately; the trainer's firing statistics and gradient clip are not
  included. All contenders run in this process with torch's default threads, interleaved (each
  repeat times every contender once, in rotating order); ratios are medians over repeats of
  per-repeat ratios, so a slow period of the machine hits both sides of a ratio.
  JumpReLU thresholds are set per latent so that each latent fires on exactly
  ``64 * 4096 / d_sae`` tokens of the benchmark batch (L0 = 64); TopK and BatchTopK use k = 64.
  The floor is ``x @ W_enc`` (fresh output, as the issue defines it); the same GEMM into a
  preallocated output is shown too.
- memory: peak resident memory of one step above the resident memory before it (Linux
  VmHWM after resetting it through /proc/self/clear_refs), in a fresh process per SAE and
  size, after one warm-up step (so Adam's state already exists) and ``malloc_trim``.
- crossover: our sparse vs dense step as L0 / d_sae grows, at d_sae 16384.
- quality: SAELens's synthetic benchmark (``synthetic_quality.py``'s task and recipe), our SAE
  with the sparse step on and off, two seeds each, so on/off differences can be read against
  seed-to-seed differences.
"""

import argparse
import ctypes
import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from common import Job, run_jobs
from sae_lens import (
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    JumpReLUTrainingSAE,
    JumpReLUTrainingSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
)
from sae_lens.saes.sae import TrainCoefficientConfig, TrainingSAE, TrainStepInput

from sae_lens_jumprelu import JumpReLUSTETrainingSAE, JumpReLUSTETrainingSAEConfig
from sae_lens_jumprelu.data.synthetic import SyntheticTask
from sae_lens_jumprelu.recipes import SHORT_BUDGET
from sae_lens_jumprelu.sparse_step import free_scratch_buffer

D_IN, BATCH, L0 = 640, 4096, 64
SIZES = (4096, 16384, 65536)
REPEATS = {4096: 7, 16384: 5, 65536: 3}
OUT = Path("benchmarks/results/training_step_speed.json")


# ---- contenders --------------------------------------------------------------------------------


@torch.no_grad()
def fire_exactly(encoder_input: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, l0: float):
    """Per-latent thresholds under which every latent fires on the same number of tokens of
    the batch, giving mean L0 ``l0``: midway between the fires-th and (fires + 1)-th largest
    pre-activation of each (midway, so that the SAE's own rounding of them does not matter)."""
    n_rows, d_sae = encoder_input.shape[0], W_enc.shape[1]
    fires = max(1, round(l0 * n_rows / d_sae))
    chunk = max(1, (1 << 24) // n_rows)
    thresholds = []
    for i in range(0, d_sae, chunk):
        pre = encoder_input @ W_enc[:, i : i + chunk] + b_enc[i : i + chunk]
        top = torch.topk(pre, fires + 1, dim=0).values.float()
        thresholds.append((top[-1] + top[-2]) / 2)
    return torch.cat(thresholds)


def ours(sparse_step: str, d_sae: int, x: torch.Tensor, l0: float = L0) -> TrainingSAE[Any]:
    sae = JumpReLUSTETrainingSAE(
        JumpReLUSTETrainingSAEConfig(d_in=D_IN, d_sae=d_sae, sparse_step=sparse_step)
    )
    sae._prepare_step(x)  # the first batch's normalisation and b_dec, as in training
    with torch.no_grad():
        x_enc = sae._normalised_input(x) - sae.b_dec * sae.cfg.apply_b_dec_to_input
        sae.set_threshold(fire_exactly(x_enc, sae.W_enc, sae.b_enc, l0))
    return sae


def sae_lens_jumprelu(d_sae: int, x: torch.Tensor) -> TrainingSAE[Any]:
    sae = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(d_in=D_IN, d_sae=d_sae))
    with torch.no_grad():
        sae.threshold.copy_(fire_exactly(sae.process_sae_in(x), sae.W_enc, sae.b_enc, L0))
    return sae


def sae_lens_topk(d_sae: int, x: torch.Tensor) -> TrainingSAE[Any]:
    return TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D_IN, d_sae=d_sae, k=L0))


def sae_lens_batchtopk(d_sae: int, x: torch.Tensor) -> TrainingSAE[Any]:
    return BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=d_sae, k=L0))


CONTENDERS: dict[str, Callable[[int, torch.Tensor], TrainingSAE[Any]]] = {
    "ours, sparse step": partial(ours, "on"),
    "ours, dense step": partial(ours, "off"),
    "SAELens jumprelu": sae_lens_jumprelu,
    # SAELens's use_sparse_activations=True TopK fails in backward here (torch 2.13:
    # "Could not run 'aten::view' with arguments from the 'SparseCPU' backend").
    "SAELens topk": sae_lens_topk,
    "SAELens batchtopk": sae_lens_batchtopk,
}
FLOOR, FLOOR_OUT = "floor: x @ W_enc", "x @ W_enc into a preallocated output"


def batch() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(BATCH, D_IN, generator=generator) + 0.5


class Runner:
    """One SAE, its Adam, and a timed training step."""

    def __init__(self, sae: TrainingSAE[Any], x: torch.Tensor) -> None:
        self.sae, self.x = sae, x
        # A tiny lr keeps the weights, and so L0, the same over the repeats.
        self.optimizer = torch.optim.Adam(sae.parameters(), lr=1e-9)
        self.coefficients = {
            name: c.value if isinstance(c, TrainCoefficientConfig) else c
            for name, c in sae.get_coefficients().items()
        }

    def step(self) -> tuple[float, float, float]:
        """(forward+backward seconds, Adam seconds, L0 of the step)."""
        step_input = TrainStepInput(
            sae_in=self.x,
            coefficients=self.coefficients,
            dead_neuron_mask=torch.zeros(self.sae.cfg.d_sae, dtype=torch.bool),
            n_training_steps=0,
            is_logging_step=False,
        )
        start = time.perf_counter()
        out = self.sae.training_forward_pass(step_input)
        out.loss.backward()
        middle = time.perf_counter()
        self.optimizer.step()
        self.optimizer.zero_grad()
        end = time.perf_counter()
        acts = out.feature_acts.detach()
        active = acts.coalesce().values() if acts.is_sparse else acts
        return middle - start, end - middle, float((active != 0).sum()) / self.x.shape[0]


def median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


# ---- speed -------------------------------------------------------------------------------------


def speed(d_sae: int, repeats: int) -> dict[str, Any]:
    x = batch()
    torch.manual_seed(0)
    runners = {name: Runner(make(d_sae, x), x) for name, make in CONTENDERS.items()}
    W_enc = torch.randn(D_IN, d_sae) / D_IN**0.5
    gemm_out = torch.empty(BATCH, d_sae)
    timed: dict[str, Callable[[], tuple[float, float, float]]] = {
        FLOOR: lambda: (_seconds(lambda: x @ W_enc), 0.0, float("nan")),
        FLOOR_OUT: lambda: (_seconds(lambda: torch.mm(x, W_enc, out=gemm_out)), 0.0, float("nan")),
        **{name: runner.step for name, runner in runners.items()},
    }
    for run in timed.values():  # warm-up: allocations, Adam state
        run()
    times: dict[str, dict[str, list[float]]] = {n: {"fb": [], "adam": [], "l0": []} for n in timed}
    names = list(timed)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fb, adam, l0 = timed[name]()
            times[name]["fb"].append(fb)
            times[name]["adam"].append(adam)
            times[name]["l0"].append(l0)
        print(f"  d_sae {d_sae}: repeat {r + 1}/{repeats} done", flush=True)
    floor = times[FLOOR]["fb"]
    sparse = times["ours, sparse step"]
    ours_sparse = [a + b for a, b in zip(sparse["fb"], sparse["adam"], strict=True)]
    rows = []
    for name, t in times.items():
        steps = [a + b for a, b in zip(t["fb"], t["adam"], strict=True)]
        rows.append(
            {
                "d_sae": d_sae,
                "sae": name,
                "fwd_bwd_s": statistics.median(t["fb"]),
                "adam_s": statistics.median(t["adam"]),
                "step_s": statistics.median(steps),
                "tokens_per_s": BATCH / statistics.median(steps),
                "fwd_bwd_over_floor": median_ratio(t["fb"], floor),
                "step_over_floor": median_ratio(steps, floor),
                "step_over_ours_sparse": median_ratio(steps, ours_sparse),
                "l0": statistics.median(t["l0"]),
                "fwd_bwd_all_s": t["fb"],
                "adam_all_s": t["adam"],
            }
        )
    return {"d_sae": d_sae, "repeats": repeats, "rows": rows, **_entries_per_token(d_sae, x)}


def _seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _entries_per_token(d_sae: int, x: torch.Tensor) -> dict[str, float]:
    """How many (token, latent) entries our sparse step keeps: active plus threshold windows."""
    torch.manual_seed(0)
    sae = ours("on", d_sae, x)
    Runner(sae, x).step()
    return {"ours_entries_per_token": sae.step_density * d_sae}


def print_speed(result: dict[str, Any]) -> None:
    print(f"\nd_sae {result['d_sae']}, d_in {D_IN}, batch {BATCH}, L0 {L0}, ", end="")
    print(f"{result['repeats']} repeats, our sparse step keeps ", end="")
    print(f"{result['ours_entries_per_token']:.0f} entries per token")
    print(
        "| SAE | fwd+bwd s | Adam s | step s | tokens/s | fwd+bwd / floor | step / floor | ", end=""
    )
    print("step / ours sparse | L0 |\n|---|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        print(
            f"| {r['sae']} | {r['fwd_bwd_s']:.3f} | {r['adam_s']:.3f} | {r['step_s']:.3f} | "
            f"{r['tokens_per_s']:.0f} | {r['fwd_bwd_over_floor']:.2f} | "
            f"{r['step_over_floor']:.2f} | {r['step_over_ours_sparse']:.2f} | {r['l0']:.1f} |"
        )


# ---- memory ------------------------------------------------------------------------------------


def memory_worker(name: str, d_sae: int) -> None:
    """In a fresh process: one warm-up step, then the peak memory of one more step."""
    x = batch()
    torch.manual_seed(0)
    if name in (FLOOR, FLOOR_OUT):
        W_enc = torch.randn(D_IN, d_sae) / D_IN**0.5
        out = torch.empty(BATCH, d_sae) if name == FLOOR_OUT else None
        run = (lambda: torch.mm(x, W_enc, out=out)) if out is not None else (lambda: x @ W_enc)
    else:
        run = Runner(CONTENDERS[name](d_sae, x), x).step
    run()
    # Our sparse step keeps its block buffer between steps: freed, the measured step counts it.
    free_scratch_buffer()
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = _status_kb("VmRSS")
    run()
    print(json.dumps({"peak_mb": (_status_kb("VmHWM") - before) / 1024, "rss_mb": before / 1024}))


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def memory(sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    rows = []
    for d_sae in sizes:
        for name in [FLOOR, FLOOR_OUT, *CONTENDERS]:
            out = subprocess.run(
                [sys.executable, __file__, "--memory-worker", name, str(d_sae)],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append({"d_sae": d_sae, "sae": name, **json.loads(out.stdout.splitlines()[-1])})
            print(f"  memory d_sae {d_sae} {name}: {rows[-1]['peak_mb']:.0f} MB", flush=True)
    return rows


def print_memory(rows: list[dict[str, Any]]) -> None:
    sizes = sorted({r["d_sae"] for r in rows})
    print("\nPeak memory of one step above the memory before it (MB):")
    print("| SAE | " + " | ".join(f"d_sae {s}" for s in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for name in dict.fromkeys(r["sae"] for r in rows):
        peaks = {r["d_sae"]: r["peak_mb"] for r in rows if r["sae"] == name}
        print(f"| {name} | " + " | ".join(f"{peaks[s]:.0f}" for s in sizes) + " |")


# ---- crossover ---------------------------------------------------------------------------------


def crossover(d_sae: int, l0s: list[int], repeats: int) -> list[dict[str, Any]]:
    x = batch()
    rows = []
    for l0 in l0s:
        torch.manual_seed(0)
        sparse, dense = (Runner(ours(mode, d_sae, x, l0), x) for mode in ("on", "off"))
        sparse.step(), dense.step()
        t: dict[str, list[float]] = {"sparse": [], "dense": []}
        for r in range(repeats):
            for mode, runner in [("sparse", sparse), ("dense", dense)][:: 1 if r % 2 else -1]:
                fb, adam, _ = runner.step()
                t[mode].append(fb + adam)
        entries = sparse.sae.step_density * d_sae  # type: ignore[attr-defined]
        rows.append(
            {
                "d_sae": d_sae,
                "l0": l0,
                "l0_over_d_sae": l0 / d_sae,
                "entries_over_d_sae": entries / d_sae,
                "sparse_s": statistics.median(t["sparse"]),
                "dense_s": statistics.median(t["dense"]),
                "sparse_over_dense": median_ratio(t["sparse"], t["dense"]),
            }
        )
        print(f"  crossover L0 {l0}: sparse/dense {rows[-1]['sparse_over_dense']:.2f}", flush=True)
        del sparse, dense
    return rows


def print_crossover(rows: list[dict[str, Any]]) -> None:
    print(f"\nSparse vs dense step (incl. Adam) as L0 grows, d_sae {rows[0]['d_sae']}:")
    print("| L0 | L0 / d_sae | entries kept / d_sae | sparse s | dense s | sparse / dense |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['l0']} | {r['l0_over_d_sae']:.4f} | {r['entries_over_d_sae']:.4f} | "
            f"{r['sparse_s']:.3f} | {r['dense_s']:.3f} | {r['sparse_over_dense']:.2f} |"
        )


# ---- quality -----------------------------------------------------------------------------------


def synthetic_sae(d_in: int, target_l0: int, sparse_step: str) -> TrainingSAE[Any]:
    cfg = SHORT_BUDGET.sae_config(d_in, 512, target_l0=target_l0, sparse_step=sparse_step)
    return JumpReLUSTETrainingSAE(cfg)


def quality(steps: int, targets: list[int], seeds: list[int]) -> list[dict[str, Any]]:
    jobs: list[Job] = [
        (
            {"target_l0": k, "sparse_step": mode, "seed": seed},
            partial(synthetic_sae, target_l0=k, sparse_step=mode),
            SHORT_BUDGET,
        )
        for k in targets
        for seed in seeds
        for mode in ("on", "off")
    ]
    return run_jobs(jobs, steps, SyntheticTask())


def print_quality(rows: list[dict[str, Any]], steps: int) -> None:
    print(f"\nSynthetic task, {steps} steps, d_sae 512, sparse step on vs off:")
    print("| target L0 | seed | sparse step | L0 | FVU | MCC | dead | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['target_l0']} | {r['seed']} | {r['sparse_step']} | {r['l0']:.2f} | "
            f"{r['fvu']:.4f} | {r['mcc']:.3f} | {r['frac_dead']:.1%} | "
            f"{r['train_seconds']:.0f} |"
        )


# ---- main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sections",
        nargs="+",
        default=["speed", "memory", "crossover", "quality"],
        choices=["speed", "memory", "crossover", "quality"],
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--crossover-l0", type=int, nargs="+", default=[64, 256, 1024, 2048, 4096])
    parser.add_argument("--quality-steps", type=int, default=1500)
    parser.add_argument("--quick", action="store_true", help="d_sae 4096, 3 repeats, no quality")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--memory-worker", nargs=2, metavar=("SAE", "D_SAE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.memory_worker:
        memory_worker(args.memory_worker[0], int(args.memory_worker[1]))
        return
    if args.quick:
        args.sizes, args.crossover_l0 = [4096], [64, 1024]
        args.sections = [s for s in args.sections if s != "quality"]

    report: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    report["machine"] = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    if "speed" in args.sections:
        report["speed"] = [speed(s, 3 if args.quick else REPEATS.get(s, 3)) for s in args.sizes]
    if "memory" in args.sections:
        report["memory"] = memory(tuple(args.sizes))
    if "crossover" in args.sections:
        report["crossover"] = crossover(16384 if not args.quick else 4096, args.crossover_l0, 3)
    if "quality" in args.sections:
        seeds, targets = [0, 1], [4, 8]
        report["quality"] = {
            "steps": args.quality_steps,
            "rows": quality(args.quality_steps, targets, seeds),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))

    for result in report.get("speed", []):
        print_speed(result)
    if "memory" in report:
        print_memory(report["memory"])
    if "crossover" in report:
        print_crossover(report["crossover"])
    if "quality" in report:
        print_quality(report["quality"]["rows"], report["quality"]["steps"])
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
