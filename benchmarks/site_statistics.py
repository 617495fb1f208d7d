"""How a cached site's activations are spread: norms, the mean's share, the dominant dimensions.

    python benchmarks/site_statistics.py gemma-pareto-work-mlp/cache blocks.6.hook_mlp_out

Reads the first ``--tokens`` activations of a ``collect`` cache in stored order and prints a
table: RMS norm and norm quantiles, the share of E||x||^2 carried by the top 1% of tokens and by
the mean, and the share of the centred variance in the top 10 dimensions (what an SAE's FVU is
dominated by).
"""

import argparse
from pathlib import Path

import torch

from sae_lens_jumprelu.data.activation_cache import ActivationCache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cache", type=Path)
    parser.add_argument("hook_name")
    parser.add_argument("--tokens", type=int, default=40_960)
    args = parser.parse_args()
    cache = ActivationCache(args.cache)
    x = cache.head(args.hook_name, args.tokens).float()
    norms = x.norm(dim=-1)
    squared = norms.pow(2)
    quantiles = torch.quantile(norms, torch.tensor([0.1, 0.5, 0.9, 0.99]))
    mean = x.mean(dim=0)
    variance = (x - mean).pow(2).mean(dim=0).sort(descending=True).values
    top_tokens = squared.sort(descending=True).values[: len(squared) // 100]
    rows = {
        "tokens": f"{x.shape[0]}",
        "RMS norm": f"{squared.mean().sqrt():.4g}",
        "norm p10 / p50 / p90 / p99": " / ".join(f"{q:.4g}" for q in quantiles.tolist()),
        "E||x||^2 share of the top 1% of tokens": f"{top_tokens.sum() / squared.sum():.1%}",
        "E||x||^2 share of the mean": f"{mean.pow(2).sum() / squared.mean():.1%}",
        "centred variance in the top 10 dimensions": f"{variance[:10].sum() / variance.sum():.1%}",
    }
    print(f"| {args.hook_name} | |\n|---|---:|")
    for name, value in rows.items():
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
