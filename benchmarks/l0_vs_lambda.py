"""Achieved L0 against a fixed sparsity coefficient over five decades: ours vs SAELens jumprelu.

    python benchmarks/l0_vs_lambda.py            # ~12 min on 2 CPU cores
    python benchmarks/l0_vs_lambda.py --quick

SAELens issues #494/#719 report its coefficient saturating: final L0 barely moves above lambda
~0.1-1, and short runs leave L0 flat. Both SAEs train with SAELens's own SAETrainer on the same
synthetic batches for the same steps, at each lambda; the table shows whether L0 keeps
responding. Lambdas are in each SAE's own loss units (ours: E||x||^2 = 1 as in the paper; SAELens:
raw activations, which here have E||x||^2 of about 3), so compare the shape of each column.
"""

import argparse
import json
import time
from pathlib import Path

from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig

from sae_lens_jumprelu import JumpReLUSTETrainingSAE
from sae_lens_jumprelu.recipes import SHORT_BUDGET
from sae_lens_jumprelu.synthetic import SyntheticTask, score_on_synthetic, train_on_synthetic

LAMBDAS = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--d-sae", type=int, default=512)
    parser.add_argument("--quick", action="store_true", help="150 steps")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/l0_vs_lambda.json"))
    args = parser.parse_args()
    steps = 150 if args.quick else args.steps

    task = SyntheticTask()
    model = task.build()
    settings = SHORT_BUDGET.trainer_settings(total_samples=steps * SHORT_BUDGET.batch_size)
    d_in = task.hidden_dim
    rows = []
    for lam in LAMBDAS:
        saes = {
            "ours": JumpReLUSTETrainingSAE(SHORT_BUDGET.sae_config(d_in, args.d_sae, l0_coefficient=lam)),
            "SAELens jumprelu": JumpReLUTrainingSAE(
                JumpReLUTrainingSAEConfig(d_in=d_in, d_sae=args.d_sae, l0_coefficient=lam)
            ),
        }
        row: dict[str, float] = {"lambda": lam}
        for name, sae in saes.items():
            start = time.perf_counter()
            train_on_synthetic(sae, model, settings, seed=0)
            scores = score_on_synthetic(sae, model, n_samples=50_000)
            row[f"{name} L0"], row[f"{name} FVU"] = scores.l0, scores.fvu
            print(f"lambda={lam:g} {name}: L0={scores.l0:.2f} FVU={scores.fvu:.4f} "
                  f"({time.perf_counter() - start:.0f}s)", flush=True)
        rows.append(row)

    print(f"\n{steps} steps x {settings.batch_size} samples, d_sae={args.d_sae}\n")
    print("| lambda | ours L0 | ours FVU | SAELens jumprelu L0 | SAELens jumprelu FVU |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['lambda']:g} | {r['ours L0']:.2f} | {r['ours FVU']:.4f} | "
              f"{r['SAELens jumprelu L0']:.2f} | {r['SAELens jumprelu FVU']:.4f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"steps": steps, "rows": rows}, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
