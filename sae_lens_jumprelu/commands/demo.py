"""The synthetic-data demo: train a JumpReLU SAE through SAELens's trainer, save, reload, score."""

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from sae_lens import SAE
from sae_lens.saes.sae import TrainStepOutput

from sae_lens_jumprelu.atomic import prepare_output, staged_dir
from sae_lens_jumprelu.data.synthetic import (
    SyntheticScores,
    SyntheticTask,
    score_on_synthetic,
    train_on_synthetic,
)
from sae_lens_jumprelu.recipes import get_recipe
from sae_lens_jumprelu.training_sae import JumpReLUSTETrainingSAE


@dataclass(frozen=True)
class DemoResult:
    scores: SyntheticScores
    """Held-out scores of the SAE as reloaded by plain SAELens."""
    sae_dir: Path
    """SAELens-format SAE (cfg.json + sae_weights.safetensors)."""
    curve_png: Path
    """Training curve."""


@dataclass(frozen=True)
class DemoJob:
    """Everything ``sae-jumprelu demo`` can be told."""

    out: Path = Path("sae-jumprelu-demo")
    """Output directory, written beside and renamed into place once complete."""
    target_l0: float = 8.0
    """Mean active latents per sample to reach (target mode)."""
    steps: int = 800
    """Training steps of one recipe batch (4096 samples)."""
    d_sae: int = 512
    """Number of latents."""
    recipe: str = "short_budget"
    """Training recipe (``recipes.py``)."""
    seed: int = 0
    """Seed of the synthetic task, the SAE and the batches."""
    overwrite: bool = False
    """Replace an existing ``out``."""

    def __post_init__(self) -> None:
        if not 0 < self.target_l0 < self.d_sae:
            raise ValueError(
                f"--target-l0 must be in (0, --d-sae); got {self.target_l0:g} with --d-sae "
                f"{self.d_sae}"
            )
        get_recipe(self.recipe)


def run_demo(job: DemoJob) -> DemoResult:
    from sae_lens_jumprelu.plots import plot_training_curve

    prepare_output(job.out, job.overwrite)

    task = SyntheticTask(seed=job.seed)
    model = task.build()
    chosen = get_recipe(job.recipe)
    sae = JumpReLUSTETrainingSAE(
        chosen.sae_config(task.hidden_dim, job.d_sae, target_l0=job.target_l0)
    )
    history: dict[str, list[float]] = defaultdict(list)

    def record(step: int, output: TrainStepOutput) -> None:
        history["step"].append(step)
        history["mse_loss"].append(output.losses["mse_loss"].item())
        for name in ("l0", "l0_coefficient"):
            history[name].append(float(output.metrics[name]))  # type: ignore[arg-type]

    train_on_synthetic(
        sae, model, chosen.trainer_settings(job.steps * chosen.batch_size), job.seed, record
    )
    with staged_dir(job.out, overwrite=True) as staging:
        sae.save_inference_model(staging / "sae")
        # Score what a user gets: the saved files loaded by stock SAELens.
        reloaded = SAE.load_from_disk(staging / "sae")
        with torch.no_grad():
            probe = model.sample(256)
            torch.testing.assert_close(reloaded(probe), sae(probe), rtol=1e-4, atol=1e-5)
        scores = score_on_synthetic(reloaded, model)
        plot_training_curve(dict(history), staging / "training_curve.png", job.target_l0)
    return DemoResult(
        scores=scores, sae_dir=job.out / "sae", curve_png=job.out / "training_curve.png"
    )
