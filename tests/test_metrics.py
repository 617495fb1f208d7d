"""Fraction of variance unexplained, centred on the data mean; quantiles of a histogram."""

import numpy as np
import pytest
import torch

from sae_lens_jumprelu.metrics import FVUAccumulator, fvu, histogram_quantile


def test_perfect_reconstruction_has_fvu_zero() -> None:
    x = torch.randn(50, 4)
    assert fvu(x, x.clone()) == 0.0


def test_mean_reconstruction_has_fvu_one() -> None:
    x = torch.randn(50, 4) * 3 + 2
    assert fvu(x, x.mean(dim=0, keepdim=True).expand_as(x)) == pytest.approx(1.0, rel=1e-6)


def test_hand_computed_two_by_two() -> None:
    # mean (2, 3); total variance (1 + 1) + (1 + 1) = 4; squared error 1 + 0 + 0 + 4 = 5
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    x_hat = torch.tensor([[0.0, 2.0], [3.0, 6.0]])
    assert fvu(x, x_hat) == pytest.approx(1.25, rel=1e-12)


def test_two_batches_equal_one_batch() -> None:
    x = torch.randn(100, 5) * 2 + 1
    x_hat = x + 0.3 * torch.randn(100, 5)
    acc = FVUAccumulator()
    acc.add(x[:37], x_hat[:37])
    acc.add(x[37:], x_hat[37:])
    assert acc.n == 100
    assert acc.compute() == pytest.approx(fvu(x, x_hat), rel=1e-12)


def test_centred_on_the_mean_of_all_batches() -> None:
    # Two batches with different means: the variance is about the pooled mean, not each
    # batch's own (per-batch centring would give 2 / 2 = 1 here, the pooled one 2 / 10 = 0.2).
    a, b = torch.tensor([[0.0], [2.0]]), torch.tensor([[4.0], [6.0]])
    acc = FVUAccumulator()
    acc.add(a, a + torch.tensor([[1.0], [0.0]]))
    acc.add(b, b + torch.tensor([[0.0], [1.0]]))
    # pooled mean 3: total variance 9 + 1 + 1 + 9 = 20; squared error 2
    assert acc.compute() == pytest.approx(0.1, rel=1e-12)


def test_large_offset_keeps_precision() -> None:
    # Moments in float64: an offset 1e4 times the spread still gives the two-pass answer.
    x = torch.randn(1000, 8, dtype=torch.float64) * 0.1 + 1e3
    x_hat = x + 0.05 * torch.randn(1000, 8, dtype=torch.float64)
    two_pass = ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert fvu(x, x_hat) == pytest.approx(two_pass.item(), rel=1e-6)


def test_empty_accumulator_raises() -> None:
    with pytest.raises(ValueError, match="no data"):
        FVUAccumulator().compute()


def test_histogram_quantile_hand_computed() -> None:
    # values 1, 1, 2, 4: half are <= 1, three quarters <= 2
    counts = torch.tensor([0, 2, 1, 0, 1])
    expected = {0.0: 1, 0.1: 1, 0.5: 1, 0.51: 2, 0.75: 2, 0.76: 4, 0.9: 4, 1.0: 4}
    assert {q: histogram_quantile(counts, q) for q in expected} == expected


def test_histogram_quantile_is_numpys_inverted_cdf() -> None:
    generator = np.random.default_rng(0)
    for _ in range(50):
        values = generator.integers(0, 12, size=int(generator.integers(1, 40)))
        counts = torch.bincount(torch.from_numpy(values), minlength=12)
        for q in (0.1, 0.5, 0.9, float(generator.random())):
            assert histogram_quantile(counts, q) == np.quantile(values, q, method="inverted_cdf")


def test_histogram_quantile_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="empty histogram"):
        histogram_quantile(torch.zeros(3, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\], got 1.5"):
        histogram_quantile(torch.tensor([1, 2]), 1.5)
