"""Training and scoring SAEs on SAELens's synthetic ground-truth data (``sae_lens.synthetic``).

Known feature directions with Zipfian firing let a run be scored on feature recovery (MCC between
decoder rows and true features) as well as reconstruction; the demo, the quality benchmark and
the tests all use these helpers.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.saes.sae import SAE, TrainingSAE, TrainStepOutput
from sae_lens.synthetic import (
    SyntheticModel,
    ZipfianFiringProbabilityConfig,
    mean_correlation_coefficient,
)
from sae_lens.synthetic.synthetic_model import SyntheticModelConfig
from sae_lens.synthetic.training import SyntheticActivationIterator
from sae_lens.training.sae_trainer import SAETrainer
from tqdm.auto import tqdm

from sae_lens_jumprelu.metrics import FVUAccumulator


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


@dataclass(frozen=True)
class TrainerSettings:
    """The SAELens ``SAETrainerConfig`` fields a run sets; the rest keep SAELens's defaults."""

    total_samples: int = 4096 * 1000
    batch_size: int = 4096
    lr: float = 3e-4
    lr_warm_up_steps: int = 0
    lr_decay_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)
    """Any other ``SAETrainerConfig`` field."""

    def to_trainer_config(self) -> SAETrainerConfig:
        return SAETrainerConfig(
            total_training_samples=self.total_samples,
            train_batch_size_samples=self.batch_size,
            lr=self.lr,
            lr_end=self.lr,
            lr_warm_up_steps=self.lr_warm_up_steps,
            lr_decay_steps=self.lr_decay_steps,
            adam_beta1=self.adam_beta1,
            adam_beta2=self.adam_beta2,
            device=self.device,
            logger=LoggingConfig(log_to_wandb=False),
            **self.extra,
        )


StepCallback = Callable[[int, TrainStepOutput], None]


def train_on_synthetic(
    sae: TrainingSAE[Any],
    model: SyntheticModel,
    settings: TrainerSettings,
    seed: int = 0,
    on_step: StepCallback | None = None,
) -> SAETrainer[Any, Any]:
    """Train ``sae`` with SAELens's own ``SAETrainer`` on batches sampled from ``model``.

    Driven through the trainer's public per-step seams (as SAELens's ``MultiSAETrainer`` does)
    so that ``on_step(step, output)`` sees every step's losses and metrics. Unlike
    ``SAETrainer.fit`` this does not estimate SAELens's activation scaler, so SAEs configured
    with ``normalize_activations="expected_average_only_in"`` are refused; ours normalise
    themselves (``normalize_to_unit_mean_square``).
    """
    if sae.cfg.normalize_activations not in ("none",):
        raise ValueError(
            f"train_on_synthetic does not run SAELens's activation scaler; got "
            f"normalize_activations={sae.cfg.normalize_activations!r}: use 'none' (this "
            "package's SAEs normalise themselves) or SAETrainer.fit"
        )
    torch.manual_seed(seed)
    data = SyntheticActivationIterator(
        feature_dict=model.feature_dict,
        activations_generator=model.activation_generator,
        batch_size=settings.batch_size,
    )
    trainer = SAETrainer(cfg=settings.to_trainer_config(), sae=sae, data_provider=data)
    sae.to(settings.device)
    for _ in tqdm(range(trainer.cfg.total_training_steps), desc="training", unit="step"):
        trainer.maybe_reset_sparsity()
        output = trainer.step(next(data))
        trainer.n_training_steps += 1
        if on_step is not None:
            on_step(trainer.n_training_steps, output)
    trainer.set_final_sae_metadata()
    return trainer


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
