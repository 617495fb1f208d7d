"""Several SAEs trained in lockstep by SAELens's own ``SAETrainer``s on one activation stream.

The loop is SAELens's ``MultiSAETrainer``'s (one ``SAETrainer`` per SAE, driven through its public
``step`` / ``maybe_reset_sparsity`` seams) with a per-step callback, so every step's losses and
metrics reach the training curves; one LM forward pass feeds every SAE.
"""

import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

from sae_lens.saes.sae import TrainingSAE, TrainStepOutput
from sae_lens.training.sae_trainer import SAETrainer

from sae_lens_jumprelu.data.activations import SiteBatch
from sae_lens_jumprelu.progress import progress_bar
from sae_lens_jumprelu.training.settings import TrainerSettings

StepCallback = Callable[[str, int, TrainStepOutput], None]
"""``(sae name, step, output)`` after every optimizer step."""


def train_in_lockstep(
    saes: dict[str, TrainingSAE[Any]],
    hook_names: dict[str, str],
    batches: Iterator[SiteBatch],
    settings: TrainerSettings,
    on_step: StepCallback | None = None,
    progress: str | None = "training",
    activation_scaling: dict[str, float] | None = None,
) -> dict[str, SAETrainer[Any, Any]]:
    """Train every SAE on ``batches[hook_names[name]]``; stops after ``settings.total_samples``
    or when the stream ends (the trainers then hold the steps actually taken).

    ``activation_scaling[name]`` is the scalar SAELens's trainer multiplies that SAE's inputs by
    (for ``normalize_activations="expected_average_only_in"``); it is folded into the weights
    at the end, as ``SAETrainer.fit`` does, so the trained SAE takes raw activations.
    """
    if set(saes) != set(hook_names):
        raise ValueError(f"saes {sorted(saes)} and hook_names {sorted(hook_names)} differ")
    trainers = make_trainers(saes, settings, activation_scaling)
    trainer_cfg = settings.to_trainer_config()
    steps = trainer_cfg.total_training_steps
    for step in progress_bar(progress, iterable=range(steps), unit="step"):
        batch = next(batches, None)
        if batch is None:
            warnings.warn(
                f"the activations ran out after step {step} of {steps}: the SAEs trained on "
                "fewer tokens than asked for",
                stacklevel=2,
            )
            break
        for name, trainer in trainers.items():
            trainer.maybe_reset_sparsity()
            output = trainer.step(batch[hook_names[name]].to(settings.device))
            trainer.n_training_steps += 1
            if on_step is not None:
                on_step(name, trainer.n_training_steps, output)
    for trainer in trainers.values():
        if trainer.activation_scaler.scaling_factor is not None:
            trainer.sae.fold_activation_norm_scaling_factor(
                trainer.activation_scaler.scaling_factor
            )
            trainer.activation_scaler.scaling_factor = None
    check_finite_weights(saes)
    # No ``set_final_sae_metadata``: its window statistics mislead on a short run; the held-out
    # evaluation writes its own (``evals.record_in_cfg``).
    return trainers


def check_finite_weights(saes: dict[str, TrainingSAE[Any]]) -> None:
    """Refuse to hand on an SAE whose training diverged (NaN or inf weights): saved, it would
    look like a result."""
    for name, sae in saes.items():
        bad = [p for p, value in sae.named_parameters() if not bool(value.isfinite().all())]
        if bad:
            raise ValueError(
                f"training diverged: {name} has NaN or inf in {bad} (nothing was saved); "
                "lower --lr or check the activations for NaN"
            )


def make_trainers(
    saes: dict[str, TrainingSAE[Any]],
    settings: TrainerSettings,
    activation_scaling: dict[str, float] | None = None,
) -> dict[str, SAETrainer[Any, Any]]:
    """One SAELens ``SAETrainer`` per SAE, fed step by step (no data provider of its own)."""
    scaling = activation_scaling or {}
    for name, sae in saes.items():
        _check_normalisation(name, sae, scaling.get(name))
        sae.to(settings.device)
    trainer_cfg = settings.to_trainer_config()
    trainers = {
        name: SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=iter(()))
        for name, sae in saes.items()
    }
    for name, factor in scaling.items():
        trainers[name].activation_scaler.scaling_factor = factor
    return trainers


def _check_normalisation(name: str, sae: TrainingSAE[Any], factor: float | None) -> None:
    mode = sae.cfg.normalize_activations
    if mode == "expected_average_only_in" and factor is None:
        raise ValueError(
            f"SAE {name!r} has normalize_activations='expected_average_only_in': give its "
            "scaling factor in activation_scaling (SAELens: sqrt(d_in) / E||x||)"
        )
    if mode not in ("none", "expected_average_only_in"):
        raise ValueError(
            f"SAE {name!r} has normalize_activations={mode!r}, which needs SAELens's "
            "SAETrainer.fit; use 'none' (this package's SAEs normalise themselves, "
            "normalize_to_unit_mean_square) or 'expected_average_only_in' with "
            "activation_scaling"
        )
    if factor is not None and mode != "expected_average_only_in":
        raise ValueError(
            f"SAE {name!r} got an activation scaling factor but has normalize_activations="
            f"{mode!r}; set it to 'expected_average_only_in'"
        )


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
