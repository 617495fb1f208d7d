"""The SAE architectures ``sae-jumprelu sweep`` compares, each with its sparsity knob and grid.

Ours (``jumprelu_ste``, by target L0 or by fixed lambda) and SAELens's own ``jumprelu``, ``topk``,
``batchtopk`` and ``gated`` training SAEs, built from SAELens's config classes and trained by
SAELens's ``SAETrainer``. The built-ins see activations through SAELens's own scalar
normalisation (``normalize_activations="expected_average_only_in"``, E||x|| = sqrt(d_in), the
units their default thresholds, bandwidths and coefficients assume); ours normalises itself to
E||x||^2 = 3.4 (``short_budget``; ``paper``: 1, the paper's units).

The grids were measured on the default sweep's setting (the embedded Gemma 3 270M,
``blocks.9.hook_resid_post``, 100k tokens, d_sae 1024, batch 256, lr 1e-3 with warm-up and
decay, 2026-12-03; docs/sweep/results.csv and docs/results.md): the comment on each grid gives
the held-out L0 it reached.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from sae_lens import (
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    GatedTrainingSAE,
    GatedTrainingSAEConfig,
    JumpReLUTrainingSAE,
    JumpReLUTrainingSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
)
from sae_lens.saes.sae import TrainingSAE

from sae_lens_jumprelu.data.activations import StreamStatistics
from sae_lens_jumprelu.recipes import Recipe
from sae_lens_jumprelu.training_sae import JumpReLUSTETrainingSAE

SaeBuilder = Callable[[int, int, float, Recipe, dict[str, Any]], TrainingSAE[Any]]
"""``(d_in, d_sae, value of the knob, our recipe, common config fields)`` -> a fresh SAE."""


@dataclass(frozen=True)
class Architecture:
    """One contender of the sweep."""

    name: str
    """Name on the command line and in results.csv."""
    label: str
    """Legend text of the plots."""
    knob: str
    """The config field the grid sets (``target_l0``, ``k``, ``l0_coefficient``...)."""
    grid: tuple[float, ...]
    """Default values of ``knob``, chosen so that the L0 ranges of all architectures overlap."""
    build: SaeBuilder
    """Makes the SAE for one value of the knob."""
    self_normalising: bool = False
    """True for ours (a fixed E||x||^2 inside the SAE); the built-ins use SAELens's scaler."""

    def setting(self, value: float) -> str:
        return f"{self.knob}={value:g}"


def _ours_target(
    d_in: int, d_sae: int, value: float, recipe: Recipe, common: dict[str, Any]
) -> TrainingSAE[Any]:
    return JumpReLUSTETrainingSAE(recipe.sae_config(d_in, d_sae, target_l0=value, **common))


def _ours_lambda(
    d_in: int, d_sae: int, value: float, recipe: Recipe, common: dict[str, Any]
) -> TrainingSAE[Any]:
    return JumpReLUSTETrainingSAE(recipe.sae_config(d_in, d_sae, l0_coefficient=value, **common))


def _builtin_common(common: dict[str, Any]) -> dict[str, Any]:
    return {**common, "normalize_activations": "expected_average_only_in"}


def _sae_lens_jumprelu(
    d_in: int, d_sae: int, value: float, recipe: Recipe, common: dict[str, Any]
) -> TrainingSAE[Any]:
    # The paper's lambda * L0 ("step"), SAELens's defaults otherwise (theta_init 0.01, eps 0.05).
    cfg = JumpReLUTrainingSAEConfig(
        d_in=d_in, d_sae=d_sae, l0_coefficient=value, **_builtin_common(common)
    )
    return JumpReLUTrainingSAE(cfg)


def _topk(
    d_in: int, d_sae: int, value: float, recipe: Recipe, common: dict[str, Any]
) -> TrainingSAE[Any]:
    cfg = TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=int(value), **_builtin_common(common))
    return TopKTrainingSAE(cfg)


def _batchtopk(
    d_in: int, d_sae: int, value: float, recipe: Recipe, common: dict[str, Any]
) -> TrainingSAE[Any]:
    # Trains with a batch-level top-k; saved as a JumpReLU SAE with one threshold learnt as an
    # EMA of the smallest kept activation (SAELens's BatchTopKTrainingSAE).
    cfg = BatchTopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=value, **_builtin_common(common))
    return BatchTopKTrainingSAE(cfg)


def _gated(
    d_in: int, d_sae: int, value: float, recipe: Recipe, common: dict[str, Any]
) -> TrainingSAE[Any]:
    cfg = GatedTrainingSAEConfig(
        d_in=d_in, d_sae=d_sae, l1_coefficient=value, **_builtin_common(common)
    )
    return GatedTrainingSAE(cfg)


_L0_GRID = (8.0, 16.0, 32.0, 64.0)

ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture(
            "jumprelu_ste_target",
            "ours, target L0",
            "target_l0",
            _L0_GRID,
            _ours_target,
            self_normalising=True,
        ),
        Architecture(
            "jumprelu_ste_lambda",
            "ours, fixed lambda",
            "l0_coefficient",
            # held-out L0 for 3e-4, 1e-3, 3e-3 (and 1e-2): 28.8, 12.6, 7.1 (5.2)
            (1e-4, 3e-4, 1e-3, 3e-3),
            _ours_lambda,
            self_normalising=True,
        ),
        Architecture(
            "jumprelu",
            "SAELens jumprelu",
            "l0_coefficient",
            # held-out L0 206, 204, 204, 193 for 0.1, 0.3, 1, 3: Adam moves theta by at most
            # ~lr per step, ~0.33 over these 390 scheduled steps whatever lambda is, so its
            # initial theta sets the L0. Started higher it lands lower but kills latents:
            # theta_0 0.1: L0 95-117, 49-55% dead; 0.3: L0 21-27, 96-97% dead, for lambda
            # 0.03-1 (2026-12-04, docs/results.md). It reaches L0 44-115 at ~1000 steps; two
            # values show it here
            (0.1, 1.0),
            _sae_lens_jumprelu,
        ),
        Architecture("topk", "SAELens topk", "k", _L0_GRID, _topk),
        # saved as JumpReLU with its EMA threshold: held-out L0 7.8, 15.5, 31.7, 63.3
        Architecture("batchtopk", "SAELens batchtopk", "k", _L0_GRID, _batchtopk),
        Architecture(
            "gated",
            "SAELens gated",
            "l1_coefficient",
            # held-out L0 85.7, 13.0, 2.4 for 3, 10, 20: these are interpolated for L0 ~64-8
            (4.0, 6.5, 9.0, 13.0),
            _gated,
        ),
    )
}


def get_architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose from {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def set_normalisation(
    arch: Architecture, sae: TrainingSAE[Any], stats: StreamStatistics, init_b_dec_to_mean: bool
) -> float | None:
    """Ours: a fixed E||x||^2 inside the SAE (returns None). Built-ins: the factor SAELens's
    trainer scales inputs by, SAELens's own estimate sqrt(d_in) / E||x||
    (``ActivationScaler.estimate_scaling_factor``) on the same batches; with
    ``init_b_dec_to_mean`` their b_dec starts at the scaled mean, as ours does."""
    if arch.self_normalising:
        sae.set_mean_squared_norm(stats.mean_squared_norm)  # type: ignore[attr-defined]
        return None
    factor = math.sqrt(sae.cfg.d_in) / stats.mean_norm
    if init_b_dec_to_mean:
        with torch.no_grad():
            sae.b_dec.copy_((stats.mean * factor).to(sae.b_dec))
    return factor
