"""Data-parallel SAE training: one replica of each SAE per rank, each on its share of the batch.

SAELens's ``SAETrainer`` calls ``training_forward_pass`` (not ``forward``), so a
``DistributedDataParallel`` wrapper would see nothing; the all-reduce is explicit instead.
Every rank computes the loss on ``global_batch / world`` activations (a mean over its rows), and
each gradient is averaged over ranks the moment backward finishes with it (a post-accumulate-grad
hook), before the trainer's clip, ``GradientGuard`` and Adam see it: the replicas then take the
step one process would take on the whole global batch, and stay identical. The trainer's firing
statistics (dead latents, feature frequencies) are combined over ranks after each step, and
``JumpReLUSTETrainingSAE`` combines the batch statistics it acts on (its ``cross_replica_mean``
and ``cross_replica_max``).
"""

from dataclasses import dataclass
from typing import Any

import torch
from sae_lens.saes.sae import TrainingSAE
from sae_lens.training.sae_trainer import SAETrainer

from sae_lens_jumprelu.training.distributed import Dist
from sae_lens_jumprelu.training_sae import JumpReLUSTETrainingSAE


def replicate(sae: TrainingSAE[Any], dist: Dist) -> None:
    """Make ``sae`` one replica of a data-parallel SAE: rank 0's weights everywhere, gradients
    averaged over ranks. Call once, before training (and after loading a checkpoint)."""
    if not dist.active:
        return
    dist.broadcast_module_(sae)
    if isinstance(sae, JumpReLUSTETrainingSAE):
        # Its GradientGuard averages each gradient before recording its norm.
        sae.cross_replica_mean = dist.mean_
        sae.cross_replica_max = dist.max_
        return

    def average(param: torch.Tensor) -> None:
        assert param.grad is not None
        dist.mean_(param.grad)

    # Registered before any other hook on these parameters, so it runs first.
    for param in sae.parameters():
        if param.requires_grad:
            param.register_post_accumulate_grad_hook(average)


@dataclass
class FiringSnapshot:
    """A trainer's counters before a step, to combine the step's increments over ranks."""

    act_freq_scores: torch.Tensor
    n_training_samples: int


def snapshot(trainer: SAETrainer[Any, Any]) -> FiringSnapshot:
    return FiringSnapshot(trainer.act_freq_scores.clone(), trainer.n_training_samples)


def sync_trainer_stats(
    trainer: SAETrainer[Any, Any], before: FiringSnapshot, dist: Dist, global_batch: int
) -> None:
    """After a step on this rank's rows: firing counts summed over ranks, "steps since fired"
    reset wherever any rank saw a latent fire, samples counted globally."""
    if not dist.active:
        return
    increment = dist.sum_(trainer.act_freq_scores - before.act_freq_scores)
    trainer.act_freq_scores = before.act_freq_scores + increment
    # Each rank holds (previous + 1), or 0 where its rows fired, and "previous" is shared: the
    # minimum over ranks is what one process would hold.
    dist.min_(trainer.n_forward_passes_since_fired)
    trainer.n_training_samples = before.n_training_samples + global_batch
