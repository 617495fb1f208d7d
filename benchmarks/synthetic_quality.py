"""Ours vs SAELens's built-in JumpReLU and TopK at matched L0 and equal tokens, on synthetic data.

    python benchmarks/synthetic_quality.py             # ~15 min on 2 CPU cores
    python benchmarks/synthetic_quality.py --quick     # ~2 min smoke run

Every SAE is trained by SAELens's own SAETrainer on the same batches (same seed) from SAELens's
synthetic ground-truth model (known features, Zipfian firing) and scored on the same held-out
samples: L0, FVU = sum||x - x_hat||^2 / sum||x - mean(x)||^2, MCC against the true features,
fraction of dead latents. No dead-latent resampling anywhere. Writes a JSON file and prints a
Markdown table.
"""

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sae_lens import (
    JumpReLUTrainingSAE,
    JumpReLUTrainingSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
)
from sae_lens.saes.sae import TrainingSAE

from sae_lens_jumprelu import JumpReLUSTETrainingSAE
from sae_lens_jumprelu.recipes import SHORT_BUDGET
from sae_lens_jumprelu.synthetic import SyntheticTask, score_on_synthetic, train_on_synthetic


def contenders(d_in: int, d_sae: int, k: int) -> dict[str, TrainingSAE[Any]]:
    """The SAEs compared at target L0 ``k``; SAELens's at their defaults."""
    return {
        "ours (short_budget, target_l0)": JumpReLUSTETrainingSAE(
            SHORT_BUDGET.sae_config(d_in, d_sae, target_l0=k)
        ),
        "SAELens jumprelu (quadratic, target_l0)": JumpReLUTrainingSAE(
            JumpReLUTrainingSAEConfig(
                d_in=d_in, d_sae=d_sae, jumprelu_sparsity_loss_mode="quadratic", target_l0=k
            )
        ),
        "SAELens topk": TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--targets", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--d-sae", type=int, default=512)
    parser.add_argument("--quick", action="store_true", help="300 steps, one target")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/synthetic_quality.json"))
    args = parser.parse_args()
    if args.quick:
        args.steps, args.targets = 300, args.targets[:1]

    task = SyntheticTask()
    model = task.build()
    settings = SHORT_BUDGET.trainer_settings(total_samples=args.steps * SHORT_BUDGET.batch_size)
    rows = []
    for k in args.targets:
        for name, sae in contenders(task.hidden_dim, args.d_sae, k).items():
            start = time.perf_counter()
            train_on_synthetic(sae, model, settings, seed=0)
            scores = score_on_synthetic(sae, model)
            rows.append({"target_l0": k, "sae": name, **asdict(scores),
                         "seconds": time.perf_counter() - start})
            print(f"k={k} {name}: {scores}", flush=True)

    header = "| target L0 | SAE | L0 | FVU | MCC | dead |\n|---|---|---|---|---|---|"
    print(f"\nsynthetic: {task}\n{args.steps} steps x {settings.batch_size} samples, d_sae={args.d_sae}\n")
    print(header)
    for r in rows:
        print(f"| {r['target_l0']} | {r['sae']} | {r['l0']:.2f} | {r['fvu']:.4f} | "
              f"{r['mcc']:.3f} | {r['frac_dead']:.1%} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"task": asdict(task), "steps": args.steps, "rows": rows}, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
