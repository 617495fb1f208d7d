"""Achieved L0 against a fixed sparsity coefficient over five decades: ours vs SAELens jumprelu.

    python benchmarks/l0_vs_lambda.py            # ~10 min on 2 CPU cores
    python benchmarks/l0_vs_lambda.py --quick

SAELens issues #494/#719 report its coefficient saturating: final L0 barely moves above lambda
~0.1-1, and short runs leave L0 flat. Both SAEs train with SAELens's own SAETrainer on the same
synthetic batches for the same steps at each lambda (same optimiser settings); the table shows
whether L0 keeps responding. Both losses are in the same units on this data: ours normalises to
E||x||^2 = 3.4 (short_budget) and SAELens trains on the raw activations, whose E||x||^2 is 3.4.
"""

import argparse
import json
from functools import partial
from pathlib import Path
from typing import Any

from common import run_jobs
from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
from sae_lens.saes.sae import TrainingSAE

from sae_lens_jumprelu import JumpReLUSTETrainingSAE
from sae_lens_jumprelu.data.synthetic import SyntheticTask
from sae_lens_jumprelu.recipes import SHORT_BUDGET

LAMBDAS = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]


def ours(d_in: int, d_sae: int, lam: float) -> TrainingSAE[Any]:
    return JumpReLUSTETrainingSAE(SHORT_BUDGET.sae_config(d_in, d_sae, l0_coefficient=lam))


def sae_lens_jumprelu(d_in: int, d_sae: int, lam: float) -> TrainingSAE[Any]:
    cfg = JumpReLUTrainingSAEConfig(d_in=d_in, d_sae=d_sae, l0_coefficient=lam)
    return JumpReLUTrainingSAE(cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--d-sae", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="150 steps")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/l0_vs_lambda.json"))
    args = parser.parse_args()
    steps = 150 if args.quick else args.steps

    task = SyntheticTask()
    makers = {"ours": ours, "SAELens jumprelu": sae_lens_jumprelu}
    jobs = [
        ({"lambda": lam, "sae": name}, partial(make, d_sae=args.d_sae, lam=lam), SHORT_BUDGET)
        for lam in LAMBDAS
        for name, make in makers.items()
    ]
    rows = run_jobs(jobs, steps, task, args.workers)
    by_key = {(r["lambda"], r["sae"]): r for r in rows}

    print(f"\n{steps} steps x {SHORT_BUDGET.batch_size} samples, d_sae={args.d_sae}\n")
    print("| lambda | ours L0 | ours FVU | SAELens jumprelu L0 | SAELens jumprelu FVU |")
    print("|---|---|---|---|---|")
    for lam in LAMBDAS:
        a, b = by_key[(lam, "ours")], by_key[(lam, "SAELens jumprelu")]
        print(f"| {lam:g} | {a['l0']:.2f} | {a['fvu']:.4f} | {b['l0']:.2f} | {b['fvu']:.4f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"steps": steps, "d_sae": args.d_sae, "rows": rows}, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
