"""The SAELens trainer settings a run chooses."""

from dataclasses import dataclass, field
from typing import Any

from sae_lens.config import LoggingConfig, SAETrainerConfig


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
