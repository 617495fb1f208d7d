"""Why equal FVU can give a higher delta LM loss: per-token delta CE against norm and L0.

    python benchmarks/gemma_per_token.py         # ~15 min on the 2-core CPU

Trains, on the ``gemma_pareto`` cache and batches, ours at target 32, SAELens's TopK at k 32
and SAELens's JumpReLU at lambda 0.1 (each at the learning rate ``gemma_pareto`` chose for it),
then splices each into the embedded Gemma on the held-out contexts and records per token: the
activation norm ||x||, the SAE's L0 there, its squared error ||x - x_hat||^2 and the increase of
that position's next-token cross-entropy. Tokens are binned by norm decile and by L0; for each
bin the table gives each SAE's share of the total squared error and of the total delta CE, and
its mean delta CE. Writes ``<out>/per_token.json``, ``<out>/per_token.md`` and
``<out>/per_token.png``.
"""

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import matplotlib
import torch
from gemma_pareto import OURS, Bench, Run, first_batch_statistics
from jaxtyping import Float, Int
from sae_lens import SAE
from torch import Tensor

from sae_lens_jumprelu.architectures import ARCHITECTURES
from sae_lens_jumprelu.atomic import write_text_atomic
from sae_lens_jumprelu.data.activation_cache import ActivationCache
from sae_lens_jumprelu.data.activations import special_token_ids
from sae_lens_jumprelu.data.models import load_model
from sae_lens_jumprelu.data.sites import resolve_sites
from sae_lens_jumprelu.progress import progress_bar
from sae_lens_jumprelu.recipes import SHORT_BUDGET

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# (architecture, setting, learning rate): the lrs gemma_pareto chose (2026-12-02 results).
CONTENDERS = ((OURS, 32.0, 1e-3), ("topk", 32.0, 3e-3), ("jumprelu", 0.1, 1e-3))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gemma_per_token"))
    parser.add_argument("--work", type=Path, default=Path("gemma-pareto-work"))
    parser.add_argument("--site", default="resid:6")
    parser.add_argument("--eval-tokens", type=int, default=13_000)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--contexts-per-pass", type=int, default=4)
    return parser.parse_args()


@torch.no_grad()
def per_token(
    model: Any,
    hook: str,
    saes: dict[str, SAE[Any]],
    contexts: Int[Tensor, "n ctx"],
    exclude: list[int],
    per_pass: int,
) -> dict[str, Tensor]:
    """Flat per-token records over the counted positions (not special, not predicting one)."""
    columns: dict[str, list[Tensor]] = {"norm": []}
    for name in saes:
        columns |= {f"{name}:l0": [], f"{name}:se": [], f"{name}:dce": []}
    passes = range(0, contexts.shape[0], per_pass)
    for start in progress_bar("per-token passes", iterable=passes, unit="pass"):
        tokens = contexts[start : start + per_pass]
        special = torch.isin(tokens, torch.tensor(exclude))
        counted = ~special[:, :-1] & ~special[:, 1:]  # position t predicts t + 1
        acts: dict[str, Tensor] = {}

        def keep(x: Tensor, hook: Any, acts: dict[str, Tensor] = acts) -> Tensor:
            acts["x"] = x.detach()
            return x

        clean = model.run_with_hooks(
            tokens, return_type="loss", loss_per_token=True, fwd_hooks=[(hook, keep)]
        )
        x = acts["x"][:, :-1]
        columns["norm"].append(x.norm(dim=-1)[counted])
        for name, sae in saes.items():
            feats = sae.encode(acts["x"])
            x_hat = sae.decode(feats)
            mask = ~special[..., None]

            def splice(
                act: Tensor, hook: Any, x_hat: Tensor = x_hat, mask: Tensor = mask
            ) -> Tensor:
                return torch.where(mask, x_hat.to(act.dtype), act)

            spliced = model.run_with_hooks(
                tokens, return_type="loss", loss_per_token=True, fwd_hooks=[(hook, splice)]
            )
            columns[f"{name}:l0"].append((feats[:, :-1] > 0).sum(-1)[counted].float())
            columns[f"{name}:se"].append((x - x_hat[:, :-1]).pow(2).sum(-1)[counted])
            columns[f"{name}:dce"].append((spliced - clean)[counted])
    return {key: torch.cat(parts).double() for key, parts in columns.items()}


def bins_by(values: Float[Tensor, " n"], edges: list[float]) -> Int[Tensor, " n"]:
    return torch.bucketize(values, torch.tensor(edges, dtype=values.dtype))


def summarise(rec: dict[str, Tensor], names: list[str]) -> dict[str, Any]:
    norm = rec["norm"]
    deciles = torch.quantile(norm, torch.linspace(0.1, 0.9, 9, dtype=norm.dtype)).tolist()
    by_norm = bins_by(norm, deciles)
    median = float(norm.median())
    high = norm > 10 * median  # dictionary_learning's remove_high_norm cut
    out: dict[str, Any] = {
        "tokens": int(norm.numel()),
        "norm_deciles": deciles,
        "median_norm": median,
        "high_norm_tokens": int(high.sum()),
        "saes": {},
    }
    for name in names:
        se, dce, l0 = rec[f"{name}:se"], rec[f"{name}:dce"], rec[f"{name}:l0"]
        rows = []
        for b in range(10):
            sel = by_norm == b
            rows.append(
                {
                    "norm_decile": b + 1,
                    "mean_norm": float(norm[sel].mean()),
                    "mean_l0": float(l0[sel].mean()),
                    "share_se": float(se[sel].sum() / se.sum()),
                    "share_dce": float(dce[sel].sum() / dce.sum()),
                    "mean_dce": float(dce[sel].mean()),
                    "rel_se": float(se[sel].sum() / norm[sel].pow(2).sum()),
                }
            )
        l0_edges = [4, 8, 16, 32, 64, 128]
        by_l0 = bins_by(l0, l0_edges)
        l0_rows = [
            {
                "l0_bin": f"<={l0_edges[b]}" if b < len(l0_edges) else f">{l0_edges[-1]}",
                "tokens": int((by_l0 == b).sum()),
                "mean_dce": float(dce[by_l0 == b].mean()) if (by_l0 == b).any() else math.nan,
                "mean_norm": float(norm[by_l0 == b].mean()) if (by_l0 == b).any() else math.nan,
            }
            for b in range(len(l0_edges) + 1)
        ]
        out["saes"][name] = {
            "mean_dce": float(dce.mean()),
            "fvu_uncentred": float(se.sum() / norm.pow(2).sum()),
            "corr_dce_rel_se": float(torch.corrcoef(torch.stack([dce, se / norm.pow(2)]))[0, 1]),
            "corr_l0_norm": float(torch.corrcoef(torch.stack([l0, norm]))[0, 1]),
            "high_norm_share_se": float(se[high].sum() / se.sum()),
            "high_norm_share_dce": float(dce[high].sum() / dce.sum()),
            "by_norm": rows,
            "by_l0": l0_rows,
        }
    return out


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"{summary['tokens']} held-out tokens; median ||x|| {summary['median_norm']:.0f}; "
        f"{summary['high_norm_tokens']} tokens above 10x the median.",
        "",
        "| SAE | mean delta CE | corr(delta CE, SE/||x||^2) | corr(L0, ||x||) "
        "| >10x-median tokens: share of SE / of delta CE |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, s in summary["saes"].items():
        lines.append(
            f"| {name} | {s['mean_dce']:.3f} | {s['corr_dce_rel_se']:.2f} | "
            f"{s['corr_l0_norm']:.2f} | {s['high_norm_share_se']:.1%} / "
            f"{s['high_norm_share_dce']:.1%} |"
        )
    lines += ["", "By norm decile (1 = lowest): mean L0, share of SE, share of delta CE, "
              "mean delta CE, relative SE", ""]  # fmt: skip
    names = list(summary["saes"])
    lines.append("| decile | " + " | ".join(names) + " |")
    lines.append("|---|" + "---|" * len(names))
    for b in range(10):
        cells = []
        for name in names:
            r = summary["saes"][name]["by_norm"][b]
            cells.append(
                f"L0 {r['mean_l0']:.0f}, {r['share_se']:.0%}, {r['share_dce']:.0%}, "
                f"{r['mean_dce']:.3f}, {r['rel_se']:.3f}"
            )
        lines.append(f"| {b + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, s in summary["saes"].items():
        deciles = [r["norm_decile"] for r in s["by_norm"]]
        axes[0].plot(deciles, [r["mean_dce"] for r in s["by_norm"]], "o-", label=name)
        axes[1].plot(deciles, [r["rel_se"] for r in s["by_norm"]], "o-", label=name)
        axes[2].plot(deciles, [r["mean_l0"] for r in s["by_norm"]], "o-", label=name)
    for ax, title in zip(axes, ("mean delta CE (nats)", "SE / ||x||^2", "mean L0"), strict=True):
        ax.set_xlabel("activation-norm decile (held-out tokens)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    cache = ActivationCache(args.work / "cache")
    model = load_model(cache.manifest["model"])
    held_out = cache.held_out_tokens()
    assert held_out is not None, "run benchmarks/gemma_pareto.py first: it collects the cache"
    held_out = held_out[: math.ceil(args.eval_tokens / held_out.shape[1])]
    pareto_args = argparse.Namespace(
        work=args.work / "per-token", d_sae=args.d_sae, epochs=args.epochs, seed=args.seed,
        batch_size=args.batch_size,
    )  # fmt: skip
    recipe = replace(SHORT_BUDGET, batch_size=args.batch_size)
    bench = Bench(pareto_args, cache, model, special_token_ids(model), held_out, recipe)
    (site,) = resolve_sites(model, [args.site])
    stats = first_batch_statistics(cache, site.hook_name, pareto_args)
    runs = [Run(ARCHITECTURES[a], v, lr) for a, v, lr in CONTENDERS]
    saes = bench.train_and_reload(site, stats, runs)
    labels = {run.name: f"{run.architecture.label} {run.architecture.setting(run.value)}"
              for run in runs}  # fmt: skip
    named = {labels[name]: sae for name, sae in saes.items()}
    rec = per_token(model, site.hook_name, named, held_out, bench.exclude, args.contexts_per_pass)
    summary = summarise(rec, list(named))
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "per_token.json", json.dumps(summary, indent=2))
    write_text_atomic(args.out / "per_token.md", markdown(summary))
    plot(summary, args.out / "per_token.png")
    print(markdown(summary))


if __name__ == "__main__":
    main()
