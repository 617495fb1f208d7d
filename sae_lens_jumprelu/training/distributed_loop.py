"""The training loop of a multi-process run: ``train_in_lockstep`` with ranks kept in step.

``data``: every rank holds a replica of every SAE and feeds it its own ``global / world``
activations; gradients and firing statistics are combined over ranks (``data_parallel``).
``sae``: every rank trains its own SAEs on the full global batch it received by all-to-all
(``sharding``). Either way all ranks take the same number of steps: before each step they agree
that every rank still has a batch, so a rank whose data ends first stops the job cleanly rather
than leaving the others waiting.
"""

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sae_lens.saes.sae import TrainingSAE
from sae_lens.training.sae_trainer import SAETrainer

from sae_lens_jumprelu.data.activations import SiteBatch
from sae_lens_jumprelu.progress import progress_bar
from sae_lens_jumprelu.training import checkpoint
from sae_lens_jumprelu.training.data_parallel import replicate, snapshot, sync_trainer_stats
from sae_lens_jumprelu.training.distributed import Dist
from sae_lens_jumprelu.training.lockstep import StepCallback, check_finite_weights, make_trainers
from sae_lens_jumprelu.training.settings import TrainerSettings
from sae_lens_jumprelu.training.sharding import ContextPosition

Mode = Literal["data", "sae"]


@dataclass(frozen=True)
class CheckpointPlan:
    directory: Path
    every: int
    """Steps between checkpoints (the last step is not checkpointed: the run saves its SAEs)."""
    position: ContextPosition
    """Where the data reading has got; recorded so a resumed run skips what was read."""
    sae_names: list[str]
    """Every SAE of the run, on whatever rank."""


def train_sharded(
    saes: dict[str, TrainingSAE[Any]],
    hook_names: dict[str, str],
    batches: Iterator[SiteBatch],
    settings: TrainerSettings,
    dist: Dist,
    mode: Mode,
    *,
    on_step: StepCallback | None = None,
    checkpoints: CheckpointPlan | None = None,
    resume: Path | None = None,
    progress: str | None = "training",
) -> dict[str, SAETrainer[Any, Any]]:
    """Train this rank's ``saes`` (data: all of them; sae: its own) for
    ``settings.total_samples`` global samples; ``settings.batch_size`` is the global batch."""
    if mode == "data":
        for sae in saes.values():
            replicate(sae, dist)
    trainers = make_trainers(saes, settings)
    if resume is not None:
        for name, trainer in trainers.items():
            checkpoint.load_trainer_state(resume, name, trainer)
    step = checkpoint.read_progress(resume).step if resume is not None else 0
    total = settings.to_trainer_config().total_training_steps
    bar = progress_bar(progress, dist.is_main, total=total, initial=step, unit="step")
    while step < total:
        batch = next(batches, None)
        if not dist.all_true(batch is not None):
            break
        assert batch is not None
        for name, trainer in trainers.items():
            trainer.maybe_reset_sparsity()
            before = snapshot(trainer)
            output = trainer.step(batch[hook_names[name]].to(settings.device))
            trainer.n_training_steps += 1
            if mode == "data":
                sync_trainer_stats(trainer, before, dist, settings.batch_size)
            if on_step is not None:
                on_step(name, trainer.n_training_steps, output)
        step += 1
        bar.update()
        if checkpoints is not None and step % checkpoints.every == 0 and step < total:
            _save(checkpoints, trainers, step, dist, mode)
    bar.close()
    if step < total and dist.is_main:
        warnings.warn(
            f"the activations ran out after step {step} of {total}: the SAEs trained on fewer "
            "tokens than asked for",
            stacklevel=2,
        )
    check_finite_weights({name: trainer.sae for name, trainer in trainers.items()})
    return trainers


def _save(
    plan: CheckpointPlan,
    trainers: dict[str, SAETrainer[Any, Any]],
    step: int,
    dist: Dist,
    mode: Mode,
) -> None:
    # Ranks read at slightly different paces: skip, on resume, whatever any rank has read.
    position = dist.max_int(plan.position.next_context)
    progress = checkpoint.Progress(step, position, plan.sae_names)
    checkpoint.save_checkpoint(plan.directory, trainers, progress, dist, replicated=mode == "data")
