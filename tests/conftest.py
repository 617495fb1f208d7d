"""Shared fixtures: a seed, tiny config/SAE factories and a train-step helper.

The package is imported under jaxtyping's import hook so the shape annotations in
``sae_lens_jumprelu`` are checked by beartype while the tests run (STYLE.md, practice 5).
The hook only instruments modules imported inside the ``with`` block, so this must be the
first import of the package in the test session.
"""

import importlib
import os

os.environ.setdefault("TQDM_DISABLE", "1")

import sys  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from jaxtyping import install_import_hook  # noqa: E402

# The tensors here are tiny: with two intra-op threads on a 2-core runner, OpenMP wake-up
# latency made each elementwise op ~100x slower (30 SAE steps: 18 s vs 0.4 s).
torch.set_num_threads(1)

PACKAGE = Path(__file__).resolve().parent.parent / "sae_lens_jumprelu"
# Not checked: in ``config`` beartype would reject a bad Literal (an unknown kernel, say) in the
# dataclass __init__ before __post_init__, hiding the ValueError users actually get; the same
# holds for ``convert.weights`` (a wrong-shaped tensor must reach the ConversionError).
UNCHECKED_MODULES = {"config", "convert.weights"}
CHECKED_MODULES = sorted(
    f"sae_lens_jumprelu.{name}"
    for path in PACKAGE.rglob("*.py")
    if path.name not in ("__init__.py", "__main__.py")
    for name in [".".join(path.relative_to(PACKAGE).with_suffix("").parts)]
    if name not in UNCHECKED_MODULES
)
assert "sae_lens_jumprelu" not in sys.modules, (
    "imported before the jaxtyping hook: shapes unchecked"
)
# PEP 484's numeric tower (an int where float is annotated, as in target_l0=50), as mypy reads it.
TYPECHECKER = "beartype.beartype(conf=beartype.BeartypeConf(is_pep484_tower=True))"
with install_import_hook(CHECKED_MODULES, TYPECHECKER):
    # The hook instruments only what is imported inside this block: import every module now.
    for module in CHECKED_MODULES:
        importlib.import_module(module)

from sae_lens.saes.sae import TrainStepInput  # noqa: E402

from sae_lens_jumprelu import JumpReLUSTETrainingSAE, JumpReLUSTETrainingSAEConfig  # noqa: E402

# The tiny default: d_in=2, d_sae=3, thresholds and bandwidth of the order of the
# pre-activations so that hand-computed cases exercise both sides of the jump.
TINY_DEFAULTS: dict[str, Any] = {
    "d_in": 2,
    "d_sae": 3,
    "jumprelu_init_threshold": 0.1,
    "jumprelu_bandwidth": 0.1,
    "l0_coefficient": 1.0,
    # hand-computed cases: theta is the parameter itself, b_dec starts at zero and inputs are
    # normalised to the paper's E||x||^2 = 1
    "threshold_lr_scale": 1.0,
    "init_b_dec_to_mean": False,
    "normalized_mean_squared_norm": 1.0,
}


@pytest.fixture(autouse=True)
def seed() -> int:
    """Every test starts from the same global torch RNG state."""
    torch.manual_seed(0)
    return 0


@pytest.fixture
def make_cfg() -> Callable[..., JumpReLUSTETrainingSAEConfig]:
    """``make_cfg(**overrides)``: the tiny config with any field replaced."""

    def factory(**overrides: Any) -> JumpReLUSTETrainingSAEConfig:
        return JumpReLUSTETrainingSAEConfig(**{**TINY_DEFAULTS, **overrides})

    return factory


@pytest.fixture
def make_sae(
    make_cfg: Callable[..., JumpReLUSTETrainingSAEConfig],
) -> Callable[..., JumpReLUSTETrainingSAE]:
    """``make_sae(**overrides)``: a fresh SAE built from ``make_cfg(**overrides)``."""

    def factory(**overrides: Any) -> JumpReLUSTETrainingSAE:
        return JumpReLUSTETrainingSAE(make_cfg(**overrides))

    return factory


def step_input(x: torch.Tensor, step: int = 0, l0: float = 1.0) -> TrainStepInput:
    """The ``TrainStepInput`` SAELens's trainer would pass for batch ``x`` at ``step``."""
    return TrainStepInput(
        sae_in=x,
        coefficients={"l0": l0},
        dead_neuron_mask=None,
        n_training_steps=step,
        is_logging_step=False,
    )


@pytest.fixture
def make_step_input() -> Callable[..., TrainStepInput]:
    return step_input


def _batches(xs: list[torch.Tensor]) -> Iterator[torch.Tensor]:
    yield from xs
    raise AssertionError("the trainer asked for more batches than the test provided")


@pytest.fixture
def make_batches() -> Callable[[list[torch.Tensor]], Iterator[torch.Tensor]]:
    """A data provider for ``SAETrainer`` that yields the given batches in order, then fails."""
    return _batches
