"""Why SAELens's built-in JumpReLU (quadratic penalty) beats ours on synthetic MCC: a diagnosis.

    python benchmarks/sparsity_mechanisms.py          # ~8 min on 2 CPU cores

Our SAE configured like SAELens's defaults (raw units, bandwidth 0.05, theta_init 0.01, b_dec at
zero, quadratic penalty around target 4) trained with and without SAELens's hard-coded gradient
clip at 1.0 (``max_grad_norm=1.0`` re-applies it after GradientGuard undoes it), and our
short_budget target mode with and without the same clip, and with the controller settings used
before (integral rate 0.05, gain 1) without the clip. Same batches, same held-out samples.
"""

import argparse
import json
from functools import partial
from pathlib import Path
from typing import Any

from common import Job, run_jobs
from sae_lens.saes.sae import TrainingSAE

from sae_lens_jumprelu import JumpReLUSTETrainingSAE
from sae_lens_jumprelu.data.synthetic import SyntheticTask
from sae_lens_jumprelu.recipes import SHORT_BUDGET

SAE_LENS_DEFAULTS: dict[str, Any] = {
    "normalize_to_unit_mean_square": False,
    "jumprelu_bandwidth": 0.05,
    "jumprelu_init_threshold": 0.01,
    "init_b_dec_to_mean": False,
    "threshold_lr_scale": 1.0,
    "jumprelu_sparsity_loss_mode": "quadratic",
    "l0_coefficient": 1.0,
}


def ours(d_in: int, target_l0: float, **fields: Any) -> TrainingSAE[Any]:
    return JumpReLUSTETrainingSAE(SHORT_BUDGET.sae_config(d_in, 512, target_l0=target_l0, **fields))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--target-l0", type=float, default=4.0)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/sparsity_mechanisms.json")
    )
    args = parser.parse_args()
    k = args.target_l0
    jobs: list[Job] = [
        (
            {"run": "SAELens-like quadratic, no clip"},
            partial(ours, target_l0=k, max_grad_norm=None, **SAE_LENS_DEFAULTS),
            SHORT_BUDGET,
        ),
        (
            {"run": "SAELens-like quadratic, clip 1.0"},
            partial(ours, target_l0=k, max_grad_norm=1.0, **SAE_LENS_DEFAULTS),
            SHORT_BUDGET,
        ),
        (
            {"run": "short_budget target mode, no clip"},
            partial(ours, target_l0=k, max_grad_norm=None),
            SHORT_BUDGET,
        ),
        (
            {"run": "short_budget target mode, clip 1.0"},
            partial(ours, target_l0=k, max_grad_norm=1.0),
            SHORT_BUDGET,
        ),
        (
            {"run": "short_budget, old controller (rate 0.05, gain 1), no clip"},
            partial(ours, target_l0=k, max_grad_norm=None, target_l0_rate=0.05, target_l0_gain=1.0),
            SHORT_BUDGET,
        ),
    ]
    rows = run_jobs(jobs, args.steps, SyntheticTask())
    print(f"\ntarget L0 {k:g}, {args.steps} steps x 4096 samples\n")
    print("| run | L0 | FVU | MCC | dead |\n|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['run']} | {r['l0']:.2f} | {r['fvu']:.4f} | {r['mcc']:.3f} "
            f"| {r['frac_dead']:.1%} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"steps": args.steps, "target_l0": k, "rows": rows}, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
