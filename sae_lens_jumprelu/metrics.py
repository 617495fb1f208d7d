"""Reconstruction and sparsity metrics shared by the demo, benchmarks and evals."""

import torch
from jaxtyping import Float, Int
from torch import Tensor


class FVUAccumulator:
    """Fraction of variance unexplained over many batches, centred on the data mean:
    ``sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` (SAELens's explained variance is not centred
    the same way). Accumulated in float64 from first and second moments."""

    def __init__(self) -> None:
        self.n = 0
        self.sq_error = 0.0
        self.sum_x: Tensor | None = None
        self.sum_sq_x = 0.0

    @torch.no_grad()
    def add(self, x: Float[Tensor, "batch d_in"], x_hat: Float[Tensor, "batch d_in"]) -> None:
        x64 = x.reshape(-1, x.shape[-1]).double()
        self.n += x64.shape[0]
        self.sq_error += (x64 - x_hat.reshape(x64.shape).double()).pow(2).sum().item()
        self.sum_sq_x += x64.pow(2).sum().item()
        batch_sum = x64.sum(dim=0)
        self.sum_x = batch_sum if self.sum_x is None else self.sum_x + batch_sum

    def compute(self) -> float:
        if self.n == 0 or self.sum_x is None:
            raise ValueError("FVU of no data: add at least one batch first")
        total_variance = self.sum_sq_x - self.sum_x.pow(2).sum().item() / self.n
        return self.sq_error / total_variance


def fvu(x: Float[Tensor, "batch d_in"], x_hat: Float[Tensor, "batch d_in"]) -> float:
    """One-batch FVU; see ``FVUAccumulator``."""
    acc = FVUAccumulator()
    acc.add(x, x_hat)
    return acc.compute()


def histogram_quantile(counts: Int[Tensor, " n_values"], q: float) -> int:
    """The ``q``-quantile of integers given as a histogram (``counts[v]`` values equal to v):
    the smallest v with at least a fraction q of the values <= v, numpy's "inverted_cdf"
    (an L0 that actually occurred, never an interpolation between two)."""
    if not 0 <= q <= 1:
        raise ValueError(f"quantile q must be in [0, 1], got {q}")
    total = int(counts.sum())
    if total == 0:
        raise ValueError("quantile of an empty histogram: add at least one value")
    cumulative = counts.cumsum(0)
    # numpy's inverted_cdf: the first v whose cumulative count reaches q * total (v = 0 for q = 0
    # only if some value is 0: the first non-empty bin)
    needed = max(q * total, 1e-12)
    return int(torch.searchsorted(cumulative.double(), torch.tensor([needed]).double()).item())
