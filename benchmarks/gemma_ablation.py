"""Which of ours' factors costs delta LM loss: walk from SAELens's JumpReLU to ours, one at a time.

    python benchmarks/gemma_ablation.py          # 21 min on the 2-core CPU (2026-12-03)

On the ``gemma_pareto`` cache and batches (the embedded Gemma 3 270M, ``blocks.6.hook_resid_post``,
d_sae 4096, batch 256, the same schedule), trains in lockstep SAELens's own ``JumpReLUTrainingSAE``
and ours configured to match it exactly (its units, bandwidth, initial threshold, one learning
rate for every parameter, fixed lambda, no threshold ceiling), then ours with one of its own
choices switched on at a time, and ours as shipped. Every SAE is saved, reloaded by stock SAELens
and evaluated with ``evals`` on the held-out documents. Writes ``<out>/ablation.json`` and
``<out>/ablation.md``.

A variant's ``sae`` fields go over the ``short_budget`` recipe's; ``--variants`` picks a subset,
``--extra NAME=JSON`` adds one (e.g. ``--extra 'wide={"jumprelu_bandwidth": 0.003}'``).
"""

import argparse
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import matplotlib
import torch
from gemma_pareto import DEAD_FEATURE_WINDOW, Bench, batches_of, first_batch_statistics, save
from sae_lens import SAE
from sae_lens.saes.sae import TrainingSAE, TrainStepOutput

from sae_lens_jumprelu.architectures import ARCHITECTURES, set_normalisation
from sae_lens_jumprelu.atomic import write_text_atomic
from sae_lens_jumprelu.data.activation_cache import ActivationCache
from sae_lens_jumprelu.data.models import load_model
from sae_lens_jumprelu.data.sites import resolve_sites
from sae_lens_jumprelu.recipes import SHORT_BUDGET, Recipe
from sae_lens_jumprelu.training.lockstep import train_in_lockstep
from sae_lens_jumprelu.training_sae import JumpReLUSTETrainingSAE

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# SAELens's JumpReLU defaults, in its units: E||x|| = sqrt(d_in), i.e. E||x||^2 ~ d_in = 640.
SAE_LENS_UNITS = {
    "normalized_mean_squared_norm": 640.0,
    "jumprelu_bandwidth": 0.05,
    "jumprelu_init_threshold": 0.01,
}
AS_SAE_LENS = {
    **SAE_LENS_UNITS,
    "threshold_lr_scale": 1.0,
    "threshold_ceiling_decay": None,
    "target_l0": None,
    "l0_coefficient": 0.1,
}
# lambda 0.1 at E||x||^2 = 640 in ours' units (3.4): the MSE term scales with E||x||^2.
OURS_UNITS_LAMBDA = 0.1 * 3.4 / 640


@dataclass(frozen=True)
class Variant:
    name: str
    sae: dict[str, Any] = field(default_factory=dict)
    """``JumpReLUSTETrainingSAEConfig`` fields over ``short_budget``'s."""
    saelens: bool = False
    """SAELens's own ``JumpReLUTrainingSAE`` at lambda 0.1 instead of ours."""


VARIANTS = {
    v.name: v
    for v in (
        Variant("saelens_jumprelu", saelens=True),
        Variant("ours_as_saelens", AS_SAE_LENS),
        Variant("+ceiling", {**AS_SAE_LENS, "threshold_ceiling_decay": 0.9}),
        Variant("+target_44", {**AS_SAE_LENS, "target_l0": 44.0, "l0_coefficient": 0.001}),
        Variant(
            "+our_units",
            {
                **AS_SAE_LENS,
                "normalized_mean_squared_norm": 3.4,
                "jumprelu_bandwidth": 0.001,
                "jumprelu_init_threshold": 0.001,
                "threshold_lr_scale": 3.0,
                "l0_coefficient": OURS_UNITS_LAMBDA,
            },
        ),
        Variant("shipped_target_44", {"target_l0": 44.0}),
    )
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gemma_ablation"))
    parser.add_argument("--work", type=Path, default=Path("gemma-pareto-work"))
    parser.add_argument("--site", default="resid:6")
    parser.add_argument("--eval-tokens", type=int, default=13_000)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--extra", nargs="*", default=[], help="NAME=JSON of sae fields")
    return parser.parse_args()


def chosen_variants(args: argparse.Namespace) -> list[Variant]:
    variants = [VARIANTS[name] for name in args.variants]
    for spec in args.extra:
        name, _, fields = spec.partition("=")
        variants.append(Variant(name, json.loads(fields)))
    return variants


def build(variant: Variant, d_in: int, d_sae: int, recipe: Recipe) -> tuple[TrainingSAE[Any], bool]:
    """The fresh SAE, and whether it normalises itself (ours)."""
    if variant.saelens:
        arch = ARCHITECTURES["jumprelu"]
        return arch.build(d_in, d_sae, 0.1, recipe, {"device": "cpu"}), False
    cfg = recipe.sae_config(d_in, d_sae, **{"device": "cpu", **variant.sae})
    return JumpReLUSTETrainingSAE(cfg), True


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    cache = ActivationCache(args.work / "cache")
    if not cache.complete:
        raise SystemExit(f"no complete cache at {cache.path}: run benchmarks/gemma_pareto.py once")
    model = load_model(cache.manifest["model"])
    (site,) = resolve_sites(model, [args.site])
    stats = first_batch_statistics(cache, site.hook_name, args)
    recipe = replace(SHORT_BUDGET, batch_size=args.batch_size, lr=args.lr)
    steps = cache.tokens // args.batch_size * args.epochs
    saes: dict[str, TrainingSAE[Any]] = {}
    scaling: dict[str, float] = {}
    for variant in chosen_variants(args):
        torch.manual_seed(args.seed)
        sae, own = build(variant, site.d_in, args.d_sae, recipe)
        sae.cfg.metadata.hook_name = site.hook_name
        arch = ARCHITECTURES["jumprelu_ste_target" if own else "jumprelu"]
        factor = set_normalisation(arch, sae, stats, init_b_dec_to_mean=True)
        if factor is not None:
            scaling[variant.name] = factor
        saes[variant.name] = sae
    settings = replace(
        recipe.trainer_settings(steps * args.batch_size),
        lr=args.lr,
        extra={"dead_feature_window": DEAD_FEATURE_WINDOW},
    )
    curves: dict[str, list[float]] = {name: [] for name in saes}

    def record(name: str, step: int, output: TrainStepOutput) -> None:
        l0 = output.metrics.get("l0")
        if l0 is None:  # SAELens's own SAEs report no L0
            l0 = (output.feature_acts > 0).sum(dim=-1, dtype=torch.float32).mean()
        curves[name].append(float(l0))

    train_in_lockstep(
        saes,
        dict.fromkeys(saes, site.hook_name),
        batches_of(cache, site.hook_name, args.batch_size, args),
        settings,
        on_step=record,
        progress=f"{site.hook_name}: {len(saes)} SAEs",
        activation_scaling=scaling,
    )
    out = args.work / "ablation" / site.hook_name
    loaded = {name: SAE.load_from_disk(save(sae, out / name)) for name, sae in saes.items()}
    evaluations = Bench.of(args, cache, model, recipe).evaluate(site, loaded)
    rows = {name: ev.summary() for name, ev in evaluations.items()}
    results = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "variants": {v.name: v.sae for v in chosen_variants(args)},
        "results": rows,
        "batch_l0_per_step": curves,
        "seconds": time.perf_counter() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "ablation.json", json.dumps(results, indent=2, default=str))
    plot_l0_curves(curves, args.out / "batch_l0.png")
    table = markdown(rows)
    write_text_atomic(args.out / "ablation.md", table)
    print(table)
    print(f"total {results['seconds'] / 60:.1f} min")


def plot_l0_curves(curves: dict[str, list[float]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, l0 in curves.items():
        ax.plot(l0, label=name, linewidth=1)
    ax.set(xlabel="step", ylabel="batch L0", yscale="log", title="L0 during training")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(rows: dict[str, dict[str, float]]) -> str:
    lines = ["| variant | L0 | FVU | delta LM loss | dead |", "|---|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['l0']:.1f} | {r['fvu']:.4f} | {r['delta_lm_loss']:.3f} "
            f"| {r['frac_dead']:.1%} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
