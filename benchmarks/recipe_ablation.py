"""The measurements behind the ``short_budget`` recipe: each deviation from the paper, reverted.

    python benchmarks/recipe_ablation.py            # ~8 min on 2 idle CPU cores (2 workers)
    python benchmarks/recipe_ablation.py --quick

Every variant trains with SAELens's SAETrainer on the same synthetic batches (SAELens's synthetic
ground-truth model, 512 Zipfian features in 64 dimensions, d_sae 512) at the same target L0, and
is scored on the same held-out samples. Prints a Markdown table and writes JSON.
"""

import argparse
import json
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from common import Job, run_jobs
from sae_lens.saes.sae import TrainingSAE

from sae_lens_jumprelu import JumpReLUSTETrainingSAE
from sae_lens_jumprelu.data.synthetic import SyntheticTask
from sae_lens_jumprelu.recipes import PAPER, SHORT_BUDGET, Recipe


def variants() -> dict[str, Recipe]:
    sb = SHORT_BUDGET

    def with_sae(**fields: Any) -> Recipe:
        return replace(sb, sae={**sb.sae, **fields})

    return {
        "short_budget": sb,
        "paper optimiser (lr 7e-5, warm-up 1k, beta1 0)": replace(
            sb, lr=PAPER.lr, lr_warm_up_steps=PAPER.lr_warm_up_steps, adam_beta1=PAPER.adam_beta1
        ),
        "mean squared norm 1 (paper)": with_sae(normalized_mean_squared_norm=1.0),
        "log(theta) like the paper": with_sae(
            threshold_parametrization="log", threshold_lr_scale=1.0
        ),
        "threshold_lr_scale 1": with_sae(threshold_lr_scale=1.0),
        "threshold_lr_scale 10": with_sae(threshold_lr_scale=10.0),
        "b_dec starts at 0": with_sae(init_b_dec_to_mean=False),
        "b_dec not subtracted (paper)": with_sae(apply_b_dec_to_input=False),
        "unit-norm decoder rows (paper)": with_sae(decoder_init_norm=1.0, decoder_unit_norm=True),
        "lr 3e-4": replace(sb, lr=3e-4),
        "bandwidth 0.01": with_sae(jumprelu_bandwidth=0.01),
        "no gradient clip (paper)": with_sae(max_grad_norm=None),
        "controller rate 0.05, gain 1": with_sae(target_l0_rate=0.05, target_l0_gain=1.0),
    }


def ours(d_in: int, recipe: Recipe, target_l0: float) -> TrainingSAE[Any]:
    return JumpReLUSTETrainingSAE(recipe.sae_config(d_in, 512, target_l0=target_l0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--target-l0", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="150 steps")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/recipe_ablation.json"))
    args = parser.parse_args()
    steps = 150 if args.quick else args.steps
    jobs: list[Job] = [
        ({"variant": name}, partial(ours, recipe=recipe, target_l0=args.target_l0), recipe)
        for name, recipe in variants().items()
    ]
    results = run_jobs(jobs, steps, SyntheticTask(), args.workers)
    print(f"\ntarget L0 {args.target_l0:g}, {steps} steps x 4096 samples\n")
    print("| variant | L0 | FVU | MCC | dead |\n|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['variant']} | {r['l0']:.2f} | {r['fvu']:.4f} | {r['mcc']:.3f} "
            f"| {r['frac_dead']:.1%} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"steps": steps, "target_l0": args.target_l0, "rows": results}
    args.out.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
