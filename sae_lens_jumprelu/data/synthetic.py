"""Training and scoring SAEs on SAELens's synthetic ground-truth data (``sae_lens.synthetic``).

Known feature directions with Zipfian firing let a run be scored on feature recovery (MCC between
decoder rows and true features) as well as reconstruction; the demo, the quality benchmark and
the tests all use these helpers.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from sae_lens.saes.sae import SAE, TrainingSAE, TrainStepOutput
from sae_lens.synthetic import (
    SyntheticModel,
    ZipfianFiringProbabilityConfig,
    mean_correlation_coefficient,
)
from sae_lens.synthetic.synthetic_model import SyntheticModelConfig
from sae_lens.synthetic.training import SyntheticActivationIterator
from sae_lens.training.sae_trainer import SAETrainer

from sae_lens_jumprelu.metrics import FVUAccumulator
from sae_lens_jumprelu.training.lockstep import train_in_lockstep
from sae_lens_jumprelu.training.settings import TrainerSettings


@dataclass(frozen=True)
class SyntheticTask:
    """A synthetic dataset: ``num_features`` true directions in ``hidden_dim`` dimensions."""

    num_features: int = 512
    """Number of ground-truth features."""
    hidden_dim: int = 64
    """Dimension of the activations (the SAE's d_in)."""
    max_firing_prob: float = 0.2
    """Firing probability of the most frequent feature (Zipfian down to ``min_firing_prob``)."""
    min_firing_prob: float = 0.002
    """Firing probability of the rarest feature."""
    magnitude_std: float = 0.3
    """Standard deviation of a firing feature's magnitude (mean 1)."""
    bias_norm: float = 1.0
    """Norm of the constant offset added to every activation (as LM residuals have a mean)."""
    seed: int = 0
    """Seed of the feature directions and firing probabilities."""

    def build(self, device: str = "cpu") -> SyntheticModel:
        cfg = SyntheticModelConfig(
            num_features=self.num_features,
            hidden_dim=self.hidden_dim,
            firing_probability=ZipfianFiringProbabilityConfig(
                max_prob=self.max_firing_prob, min_prob=self.min_firing_prob
            ),
            std_firing_magnitudes=self.magnitude_std,
            mean_firing_magnitudes=1.0,
            bias=self.bias_norm,
            seed=self.seed,
        )
        return SyntheticModel(cfg, device=device)


StepCallback = Callable[[int, TrainStepOutput], None]


def train_on_synthetic(
    sae: TrainingSAE[Any],
    model: SyntheticModel,
    settings: TrainerSettings,
    seed: int = 0,
    on_step: StepCallback | None = None,
) -> SAETrainer[Any, Any]:
    """Train ``sae`` with SAELens's own ``SAETrainer`` on batches sampled from ``model``
    (``training.lockstep.train_in_lockstep``, so ``on_step(step, output)`` sees every step)."""
    torch.manual_seed(seed)
    data = SyntheticActivationIterator(
        feature_dict=model.feature_dict,
        activations_generator=model.activation_generator,
        batch_size=settings.batch_size,
    )
    callback = None if on_step is None else lambda _name, step, output: on_step(step, output)
    trainers = train_in_lockstep(
        {"sae": sae}, {"sae": "x"}, ({"x": batch} for batch in data), settings, callback
    )
    return trainers["sae"]


@dataclass(frozen=True)
class SyntheticScores:
    """Scores of one SAE on held-out synthetic samples."""

    l0: float
    """Mean number of active latents per sample."""
    fvu: float
    """sum ||x - x_hat||^2 / sum ||x - mean(x)||^2."""
    mcc: float
    """Mean max cosine between true features and decoder rows (Hungarian-matched, SAELens)."""
    frac_dead: float
    """Fraction of latents that never fired on the evaluation samples."""
    true_l0: float
    """Mean number of true features firing per sample."""


@torch.no_grad()
def score_on_synthetic(
    sae: SAE[Any], model: SyntheticModel, n_samples: int = 100_000, seed: int = 12345
) -> SyntheticScores:
    sae.eval()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # the same held-out samples for every SAE
    fvu, fired = FVUAccumulator(), torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    l0_sum = true_l0_sum = 0.0
    for start in range(0, n_samples, 8192):
        hidden, features = model.sample_with_features(min(8192, n_samples - start))
        acts = sae.encode(hidden)
        fvu.add(hidden, sae.decode(acts))
        active = acts != 0
        fired |= active.any(dim=0).cpu()
        l0_sum += active.sum().item()
        true_l0_sum += (features != 0).sum().item()
    torch.random.set_rng_state(generator_state)
    return SyntheticScores(
        l0=l0_sum / n_samples,
        fvu=fvu.compute(),
        mcc=mean_correlation_coefficient(sae.W_dec.float(), model.feature_dict.feature_vectors),
        frac_dead=1.0 - fired.float().mean().item(),
        true_l0=true_l0_sum / n_samples,
    )
