"""What ``sae-jumprelu train`` (one process or distributed) and ``collect`` are told, and the
steps of a training run they share: building an SAE for a site, and finishing the run."""

import json
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from transformer_lens import HookedTransformer

from sae_lens_jumprelu.atomic import prepare_output, staged_dir
from sae_lens_jumprelu.commands.jobs import LanguageModelRun
from sae_lens_jumprelu.commands.pipeline import describe, evaluate_saved, seeded
from sae_lens_jumprelu.data.sites import Site
from sae_lens_jumprelu.evals import SAEEvaluation, write_evaluations
from sae_lens_jumprelu.plots import plot_training_curve
from sae_lens_jumprelu.training_sae import JumpReLUSTETrainingSAE

DistributedMode = Literal["none", "data", "sae"]
DISTRIBUTED_MODES: tuple[str, ...] = typing.get_args(DistributedMode)


@dataclass(frozen=True)
class TrainJob(LanguageModelRun):
    """Everything ``sae-jumprelu train`` can be told; the defaults are the embedded run."""

    sites: list[str] = field(default_factory=list)
    """Site specs (``resid:6``, ``attn:0-3``, ``mlp:*``, hook names); empty: the middle
    residual stream. One SAE per site, all fed by one forward pass."""
    target_l0: list[float] = field(default_factory=list)
    """Mean active latents to reach (target mode), one SAE per value and site; the default when
    no lambda is given: 32."""
    l0_coefficient: list[float] = field(default_factory=list)
    """Fixed lambdas of the L0 penalty (the paper's mode) instead of targets: a sweep whose SAEs
    share one forward pass."""
    distributed: DistributedMode = "none"
    """Under torchrun: ``data`` (every rank runs the model on its share of the contexts and
    trains a replica of every SAE on global batch / ranks, gradients all-reduced) or ``sae``
    (the SAEs are spread over the ranks; each rank receives every rank's activations at its
    SAEs' hooks); ``none``: one process."""
    dist_timeout: float = 300.0
    """Seconds a rank waits for the others in a collective before the job fails."""
    checkpoint_every: int = 0
    """Write a checkpoint (``<out>/checkpoints``) every this many steps; 0: none."""
    resume: Path | None = None
    """Resume from this checkpoint (a ``step_<N>`` directory, or ``<out>/checkpoints`` for
    the newest), with any number of ranks."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.distributed not in DISTRIBUTED_MODES:
            raise ValueError(
                f"distributed={self.distributed!r}: choose one of {list(DISTRIBUTED_MODES)}"
            )
        if not self.dist_timeout > 0:
            raise ValueError(f"dist_timeout must be positive seconds, got {self.dist_timeout}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.distributed != "none" and self.activations is not None:
            raise ValueError(
                "--distributed trains from the model's activations; --activations (a cache) "
                "is single-process for now"
            )
        if self.distributed == "none" and (self.checkpoint_every or self.resume is not None):
            raise ValueError(
                "--checkpoint-every and --resume belong to distributed runs: launch with "
                "`torchrun --nproc-per-node 1 -m sae_lens_jumprelu train --distributed data ...` "
                "(one process works too)"
            )

    def check_output(self) -> None:
        """Fail before the model loads when ``out`` exists (unless ``overwrite``, or it holds
        the checkpoints being resumed) or cannot be written."""
        resuming = self.resume is not None and self.out.resolve() in self.resume.resolve().parents
        prepare_output(self.out, self.overwrite or resuming)

    def check_reachable(self) -> None:
        """Fail before the model loads when a target or the token budget cannot work."""
        batch = self.recipe_settings().batch_size
        if self.tokens < batch:
            raise ValueError(
                f"--tokens {self.tokens} is less than one batch of {batch}: give more tokens or "
                "a smaller --batch-size"
            )
        for target in self.target_l0:
            if not 0 < target <= self.d_sae / 2:
                raise ValueError(
                    f"--target-l0 {target:g} cannot be reached with --d-sae {self.d_sae}: a "
                    f"target must be in (0, d_sae / 2 = {self.d_sae / 2:g}] (above half the "
                    "latents, an SAE stops being sparse); lower it or raise --d-sae"
                )

    def sparsity_settings(self) -> dict[str, dict[str, float]]:
        """Label -> config fields, one SAE per label and site."""
        if self.l0_coefficient and self.target_l0:
            raise ValueError("give --target-l0 or --l0-coefficient, not both")
        if self.l0_coefficient:
            return {f"l0_coefficient={v:g}": {"l0_coefficient": v} for v in self.l0_coefficient}
        return {f"target_l0={v:g}": {"target_l0": v} for v in self.target_l0 or [32.0]}

    def sae_names(self, sites: list[Site]) -> dict[str, tuple[Site, dict[str, float]]]:
        """SAE name (the hook name, plus the setting when there are several) -> its site and
        sparsity setting."""
        settings = self.sparsity_settings()
        return {
            site.hook_name if len(settings) == 1 else f"{site.hook_name}@{label}": (site, fields)
            for site in sites
            for label, fields in settings.items()
        }


@dataclass
class TrainResult:
    out: Path
    sae_dirs: dict[str, Path]
    """SAE name (hook name, plus @setting in a sweep) -> SAELens-format SAE directory."""
    evaluations: dict[str, SAEEvaluation]
    curves: dict[str, Path]
    seconds: dict[str, float]
    targets: dict[str, float | None] = field(default_factory=dict)
    """SAE name -> its target L0 (None with a fixed lambda)."""

    def moved_to(self, out: Path) -> "TrainResult":
        """The same result with its paths under ``out`` instead of ``self.out``."""

        def move(path: Path) -> Path:
            return out / path.relative_to(self.out)

        return replace(
            self,
            out=out,
            sae_dirs={name: move(path) for name, path in self.sae_dirs.items()},
            curves={name: move(path) for name, path in self.curves.items()},
        )


def new_sae(
    job: TrainJob,
    site: Site,
    sparsity: dict[str, float],
    dataset: str,
    mean_squared_norm: float,
    exclude: list[int],
) -> JumpReLUSTETrainingSAE:
    """A fresh SAE for ``site``, from its own seed (``pipeline.seeded``), normalised by
    ``mean_squared_norm``."""
    cfg = job.our_recipe().sae_config(
        site.d_in,
        job.d_sae,
        device=job.device,
        reshape_activations="hook_z" if site.is_attention_z else "none",
        **sparsity,
    )
    with seeded(job.seed, f"{site.hook_name}:{sorted(sparsity.items())}"):
        sae = JumpReLUSTETrainingSAE(cfg)
    describe(sae, job, site, dataset, exclude)
    sae.cfg.metadata.activation_mean_squared_norm = mean_squared_norm
    sae.set_mean_squared_norm(mean_squared_norm)
    return sae


def finish_run(
    job: TrainJob,
    model: HookedTransformer,
    names: dict[str, tuple[Site, dict[str, float]]],
    save_saes: Callable[[Path], dict[str, Path]],
    histories: dict[str, dict[str, list[float]]],
    held_out: torch.Tensor,
    exclude: list[int],
    seconds: dict[str, float],
    norms: dict[str, float],
    dataset: str,
) -> TrainResult:
    """Save the SAEs (``save_saes(saes_dir)``), evaluate them, write metrics, curves and
    ``run.json``: all into a directory beside ``job.out``, renamed into place once complete."""
    with staged_dir(job.out, overwrite=True, carry=("checkpoints",)) as out:
        sae_dirs = save_saes(out / "saes")
        evaluations = evaluate_saved(model, sae_dirs, held_out, exclude, job.device, seconds)
        write_evaluations(evaluations, out)
        targets = {name: names[name][1].get("target_l0") for name in sae_dirs}
        curves = {
            name: plot_training_curve(
                histories[name], sae_dirs[name] / "training_curve.png", targets[name]
            )
            for name in sae_dirs
        }
        summary = {
            "job": job.record(),
            "model": model.cfg.model_name,
            "dataset": dataset,
            "mean_squared_norm": norms,
            "seconds": seconds,
            "metrics": {name: e.summary() for name, e in evaluations.items()},
        }
        (out / "run.json").write_text(json.dumps(summary, indent=2))
        result = TrainResult(out, sae_dirs, evaluations, curves, seconds, targets)
    return result.moved_to(job.out)
