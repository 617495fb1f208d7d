"""Several SAEs trained in lockstep by SAELens's own ``SAETrainer``s on one activation stream.

The loop is SAELens's ``MultiSAETrainer``'s (one ``SAETrainer`` per SAE, driven through its public
``step`` / ``maybe_reset_sparsity`` seams) with a per-step callback, so every step's losses and
metrics reach the training curves; one LM forward pass feeds every SAE.
"""

from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

from sae_lens.saes.sae import TrainingSAE, TrainStepOutput
from sae_lens.training.sae_trainer import SAETrainer
from tqdm.auto import tqdm

from sae_lens_jumprelu.activations import SiteBatch
from sae_lens_jumprelu.trainer_settings import TrainerSettings

StepCallback = Callable[[str, int, TrainStepOutput], None]
"""``(sae name, step, output)`` after every optimizer step."""


def train_in_lockstep(
    saes: dict[str, TrainingSAE[Any]],
    hook_names: dict[str, str],
    batches: Iterator[SiteBatch],
    settings: TrainerSettings,
    on_step: StepCallback | None = None,
    progress: str | None = "training",
) -> dict[str, SAETrainer[Any, Any]]:
    """Train every SAE on ``batches[hook_names[name]]``; stops after ``settings.total_samples``
    or when the stream ends (the trainers then hold the steps actually taken)."""
    if set(saes) != set(hook_names):
        raise ValueError(f"saes {sorted(saes)} and hook_names {sorted(hook_names)} differ")
    trainers = make_trainers(saes, settings)
    trainer_cfg = settings.to_trainer_config()
    steps = trainer_cfg.total_training_steps
    for _ in tqdm(range(steps), desc=progress, unit="step", disable=progress is None):
        batch = next(batches, None)
        if batch is None:
            break
        for name, trainer in trainers.items():
            trainer.maybe_reset_sparsity()
            output = trainer.step(batch[hook_names[name]].to(settings.device))
            trainer.n_training_steps += 1
            if on_step is not None:
                on_step(name, trainer.n_training_steps, output)
    for trainer in trainers.values():
        trainer.set_final_sae_metadata()
    return trainers


def make_trainers(
    saes: dict[str, TrainingSAE[Any]], settings: TrainerSettings
) -> dict[str, SAETrainer[Any, Any]]:
    """One SAELens ``SAETrainer`` per SAE, fed step by step (no data provider of its own)."""
    for name, sae in saes.items():
        if sae.cfg.normalize_activations != "none":
            raise ValueError(
                f"SAE {name!r} has normalize_activations={sae.cfg.normalize_activations!r}, "
                "which needs SAELens's activation scaler (SAETrainer.fit); use 'none': this "
                "package's SAEs normalise themselves (normalize_to_unit_mean_square)"
            )
        sae.to(settings.device)
    trainer_cfg = settings.to_trainer_config()
    return {
        name: SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=iter(()))
        for name, sae in saes.items()
    }


class CurveRecorder:
    """``on_step`` that keeps each SAE's MSE, L0 and lambda per step, for the training-curve
    PNGs."""

    def __init__(self) -> None:
        self.history: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))

    def __call__(self, name: str, step: int, output: TrainStepOutput) -> None:
        series = self.history[name]
        series["step"].append(step)
        series["mse_loss"].append(output.losses["mse_loss"].item())
        for metric in ("l0", "l0_coefficient"):
            if metric in output.metrics:
                series[metric].append(float(output.metrics[metric]))  # type: ignore[arg-type]
