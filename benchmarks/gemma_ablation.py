"""Why ours wins on the embedded Gemma: ``short_budget`` at target L0 32 with one factor reverted.

    python benchmarks/gemma_ablation.py          # ~12 min on the 2-core CPU

The protocol of ``gemma_pareto.py`` (its cache, held-out documents and evaluation), on
``blocks.6.hook_resid_post`` only: each row trains ours once with the recipe as shipped except
for the one change its label names. Writes ``<out>/ablation.json`` and ``<out>/ablation.md``.
"""

import json
import math
from dataclasses import replace
from typing import Any

from gemma_pareto import OURS, Bench, Run, ensure_cache, first_batch_statistics, parse_args

from sae_lens_jumprelu.activations import special_token_ids
from sae_lens_jumprelu.architectures import ARCHITECTURES
from sae_lens_jumprelu.atomic import write_text_atomic
from sae_lens_jumprelu.models import load_model
from sae_lens_jumprelu.recipes import SHORT_BUDGET, Recipe
from sae_lens_jumprelu.sites import resolve_sites

TARGET = 32.0


def with_sae(**fields: Any) -> Recipe:
    return replace(SHORT_BUDGET, sae={**SHORT_BUDGET.sae, **fields})


VARIANTS: dict[str, Recipe] = {
    "short_budget as shipped (batch 256)": SHORT_BUDGET,
    "no threshold ceiling": with_sae(threshold_ceiling_decay=None),
    "no lr warm-up or decay": replace(SHORT_BUDGET, lr_warm_up_fraction=0.0, lr_decay_fraction=0.0),
    "batch 1024 (train's old default)": replace(SHORT_BUDGET, batch_size=1024),
    "lr 3e-3": replace(SHORT_BUDGET, lr=3e-3),
    "threshold_lr_scale 1": with_sae(threshold_lr_scale=1.0),
}


def main() -> None:
    args = parse_args(__doc__, out="benchmarks/results/gemma_ablation", sites=("resid:6",))
    cache = ensure_cache(args)
    model = load_model(cache.manifest["model"])
    held_out = cache.held_out_tokens()
    assert held_out is not None
    held_out = held_out[: math.ceil(args.eval_tokens / held_out.shape[1])]
    (site,) = resolve_sites(model, args.sites[:1])
    stats = first_batch_statistics(cache, site.hook_name, args)
    rows = {}
    for label, recipe in VARIANTS.items():
        bench = Bench(args, cache, model, special_token_ids(model), held_out, recipe)
        run = Run(ARCHITECTURES[OURS], TARGET, recipe.lr)
        saes = bench.train_and_reload(site, stats, [run])
        rows[label] = bench.evaluate(site, saes)[run.name].summary()
    lines = [
        f"### ours at target L0 {TARGET:g}, {site.hook_name}, one factor reverted",
        "",
        "| variant | L0 | FVU | delta LM loss | dead |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, row in rows.items():
        lines.append(
            f"| {label} | {row['l0']:.1f} | {row['fvu']:.4f} | {row['delta_lm_loss']:.3f} "
            f"| {row['frac_dead']:.1%} |"
        )
    table = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "ablation.json", json.dumps(rows, indent=2))
    write_text_atomic(args.out / "ablation.md", table)
    print(table)


if __name__ == "__main__":
    main()
