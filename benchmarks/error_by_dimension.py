"""Where saved SAEs' reconstruction error lies: a site's top-variance dimensions against the rest.

    python benchmarks/error_by_dimension.py gemma-pareto-work-mlp/cache blocks.6.hook_mlp_out \
        gemma-pareto-work-mlp/saes/blocks.6.hook_mlp_out/*/*/*

Reads the first ``--tokens`` activations of a ``collect`` cache in stored order, runs each SAE
(any directory ``sae_lens.SAE.load_from_disk`` reads) on them and prints a table: L0, FVU, the
FVU within the ``--top`` dimensions of largest variance and within the others, the share of
the squared error in the top ones, and how many latents fire on more than 10% of the tokens
(with their share of all firings). On a site whose variance sits in a few dimensions this says
whether an SAE loses there or in the rest.
"""

import argparse
from pathlib import Path

import torch
from jaxtyping import Float
from sae_lens import SAE
from torch import Tensor

from sae_lens_jumprelu.data.activation_cache import ActivationCache


def error_split(x: Float[Tensor, "tokens d_in"], sae: SAE, top: torch.Tensor) -> dict[str, float]:
    """The row of one SAE; ``top`` indexes the dimensions of largest variance."""
    centred = (x - x.mean(dim=0)).pow(2)
    rest = torch.ones(x.shape[1], dtype=torch.bool)
    rest[top] = False
    with torch.no_grad():
        acts = sae.encode(x)
        error = (x - sae.decode(acts)).pow(2)
    fires = acts > 0
    dense = fires.float().mean(dim=0) > 0.1
    return {
        "l0": fires.sum(dim=-1).float().mean().item(),
        "fvu": (error.sum() / centred.sum()).item(),
        "fvu_top": (error[:, top].sum() / centred[:, top].sum()).item(),
        "fvu_rest": (error[:, rest].sum() / centred[:, rest].sum()).item(),
        "error_share_top": (error[:, top].sum() / error.sum()).item(),
        "dense_latents": int(dense.sum()),
        "dense_firing_share": (fires[:, dense].sum() / fires.sum()).item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cache", type=Path)
    parser.add_argument("hook_name")
    parser.add_argument("saes", type=Path, nargs="+")
    parser.add_argument("--tokens", type=int, default=20_480)
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    cache = ActivationCache(args.cache)
    x = cache.head(args.hook_name, args.tokens).float()
    variance = (x - x.mean(dim=0)).pow(2).mean(dim=0)
    top = variance.argsort(descending=True)[: args.top]
    print(
        f"{x.shape[0]} tokens; the top {args.top} dimensions hold "
        f"{variance[top].sum() / variance.sum():.1%} of the centred variance\n"
    )
    print(
        f"| SAE | L0 | FVU | FVU top {args.top} | FVU rest | error in top {args.top} "
        "| latents >10% | their firings |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    for path in args.saes:
        r = error_split(x, SAE.load_from_disk(str(path)), top)
        print(
            f"| {path} | {r['l0']:.1f} | {r['fvu']:.4f} | {r['fvu_top']:.4f} "
            f"| {r['fvu_rest']:.4f} | {r['error_share_top']:.0%} | {r['dense_latents']} "
            f"| {r['dense_firing_share']:.0%} |"
        )


if __name__ == "__main__":
    main()
