"""Feature recovery against the E||x||^2 our SAE normalises its inputs to (synthetic data).

    python benchmarks/normalisation_scale.py          # ~25 min on 2 CPU cores

The short_budget recipe at target L0 4 and 8, 1000 steps of 4096 (``synthetic_quality.py``'s
task and settings), with ``normalized_mean_squared_norm`` 1 (the paper's), 2, 3.4
(short_budget's; this data's own E||x||^2, the units SAELens's built-in JumpReLU trains in), 10 and
64 (= d_in: unit variance per dimension, SAELens's ``expected_average_only_in``); seed 1 too at
3.4.
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


def ours(d_in: int, target_l0: float, scale: float) -> TrainingSAE[Any]:
    cfg = SHORT_BUDGET.sae_config(
        d_in, 512, target_l0=target_l0, normalized_mean_squared_norm=scale
    )
    return JumpReLUSTETrainingSAE(cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/normalisation_scale.json")
    )
    args = parser.parse_args()
    runs = [(4, s, 0) for s in (1.0, 2.0, 3.4, 64.0)] + [(4, 3.4, 1)]
    runs += [(8, s, 0) for s in (1.0, 2.0, 3.4, 10.0, 64.0)] + [(8, 3.4, 1)]
    jobs: list[Job] = [
        (
            {"target_l0": t, "normalized_mean_squared_norm": s, "seed": seed},
            partial(ours, target_l0=t, scale=s),
            SHORT_BUDGET,
        )
        for t, s, seed in runs
    ]
    rows = run_jobs(jobs, args.steps, SyntheticTask())
    args.out.write_text(json.dumps({"steps": args.steps, "rows": rows}, indent=1))
    print("| target | E||x||^2 | seed | L0 | FVU | MCC | dead |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['target_l0']} | {r['normalized_mean_squared_norm']:g} | {r['seed']} "
            f"| {r['l0']:.2f} | {r['fvu']:.4f} | {r['mcc']:.3f} | {r['frac_dead']:.1%} |"
        )


if __name__ == "__main__":
    main()
