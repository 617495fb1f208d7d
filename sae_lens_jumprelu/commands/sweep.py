"""``sae-jumprelu sweep``: JumpReLU vs TopK vs BatchTopK vs Gated on one activation stream.

Every SAE of every architecture and sparsity setting is trained in lockstep by its own SAELens
``SAETrainer`` on the same batches, drawn from one LM forward pass per batch of contexts (or an
activation cache), with the same optimiser settings; then all are saved in SAELens format,
reloaded with plain ``sae_lens.SAE`` and evaluated together on held-out text (L0, FVU, delta LM
loss, firing frequencies). ``sweep_report`` writes the table and the figures.
"""

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from sae_lens.saes.sae import TrainingSAE
from transformer_lens import HookedTransformer

from sae_lens_jumprelu.architectures import (
    ARCHITECTURES,
    Architecture,
    get_architecture,
    set_normalisation,
)
from sae_lens_jumprelu.atomic import prepare_output, staged_dir
from sae_lens_jumprelu.commands import pipeline
from sae_lens_jumprelu.commands.jobs import LanguageModelRun
from sae_lens_jumprelu.commands.sweep_report import SweepRow, write_report
from sae_lens_jumprelu.convert.sae_lens_format import fold_saved_decoder_norms
from sae_lens_jumprelu.data.activations import StreamStatistics
from sae_lens_jumprelu.data.corpus import TokenCorpus
from sae_lens_jumprelu.data.sites import Site
from sae_lens_jumprelu.training.lockstep import train_in_lockstep


@dataclass(frozen=True)
class SweepJob(LanguageModelRun):
    """Everything ``sae-jumprelu sweep`` can be told; the defaults are the embedded run."""

    site: str | None = None
    """One site spec (``resid:9``, ``mlp:3``, a hook name); None: the middle residual stream."""
    # 100k tokens: the whole default run (22 SAEs) costs ~25 CPU-minutes, 14 min wall on 2 cores
    # (README, "Compare architectures", 2026-12-03); 200k at d_sae 2048 would be ~2.5 times that.
    tokens: int = 100_000
    # The SAE matmuls scale with d_sae: 2048 would double the training time of the default.
    d_sae: int = 1024
    architectures: tuple[str, ...] = tuple(ARCHITECTURES)
    """Architectures to train (see ``architectures.ARCHITECTURES``)."""
    grids: dict[str, tuple[float, ...]] = field(default_factory=dict)
    """Sparsity settings per architecture, overriding its default grid (architecture -> values
    of its knob: target L0, k, or the L0/L1 coefficient)."""
    out: Path = Path("sae-jumprelu-sweep")
    # Each SAE costs one full spliced forward pass (262k-token unembedding) per held-out batch.
    eval_tokens: int = 2048
    dead_feature_window: int = 50
    """Steps without firing before SAELens's trainer calls a latent dead, which switches on
    TopK's and BatchTopK's auxiliary loss; SAELens's 1000 is longer than the default run."""
    init_b_dec_to_mean: bool = True
    """Start the built-ins' b_dec at the mean of the first batches, as ours does (SAELens 6.54
    starts it at zero, which leaves most latents dead in short runs, DESIGN.md section 5)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.architectures:
            raise ValueError("--architectures is empty: name at least one of " + _valid())
        for name in (*self.architectures, *self.grids):
            get_architecture(name)
        extra = sorted(set(self.grids) - set(self.architectures))
        if extra:
            raise ValueError(f"grids given for {extra}, which are not in --architectures")
        for name, values in self.grids.items():
            if not values or any(not v > 0 for v in values):
                raise ValueError(f"the grid of {name} must be positive values, got {values}")
        if self.tokens < self.batch_size:
            raise ValueError(
                f"--tokens {self.tokens} is less than one batch of {self.batch_size}: "
                "train on more tokens or use a smaller --batch-size"
            )

    def settings(self) -> list[tuple[Architecture, float]]:
        """(architecture, value of its knob) for every SAE, in table order."""
        pairs = []
        for name in self.architectures:
            arch = ARCHITECTURES[name]
            pairs += [(arch, float(v)) for v in self.grids.get(name, arch.grid)]
        return pairs


@dataclass
class SweepResult:
    out: Path
    rows: list[SweepRow]
    """One per (architecture, setting), in ``SweepJob.settings`` order."""
    sae_dirs: dict[str, Path]
    """``architecture/setting`` -> SAELens-format SAE directory."""
    seconds: dict[str, float]
    files: dict[str, Path]
    """results.csv, results.md, run.json and the PNGs."""


def run_sweep(
    job: SweepJob,
    model: HookedTransformer | None = None,
    corpus: TokenCorpus | None = None,
) -> SweepResult:
    """Train, save, reload and evaluate every SAE of ``job.settings()`` on one stream.

    ``model`` and ``corpus`` replace ``job.model`` and ``job.dataset`` (a model without a
    tokenizer needs a ``corpus`` of token ids).
    """
    prepare_output(job.out, job.overwrite)  # before a minute of model loading
    torch.manual_seed(job.seed)  # the shuffle buffer's order
    seconds: dict[str, float] = {}
    cache = pipeline.open_cache(job)
    if model is None:
        model = pipeline.load_run_model(job, cache, seconds)
    exclude = pipeline.excluded_tokens(job, model)
    site = _one_site(pipeline.run_sites(model, [job.site] if job.site else [], cache), job.site)
    data = pipeline.read_activations(job, model, [site], cache, corpus)
    stats = data.statistics(site.hook_name)
    names = {f"{arch.name}/{arch.setting(v)}": (arch, v) for arch, v in job.settings()}
    saes: dict[str, TrainingSAE[Any]] = {}
    scaling: dict[str, float] = {}
    for name, (arch, value) in names.items():
        saes[name], factor = _new_sae(job, arch, value, site, stats, data.dataset, exclude)
        if factor is not None:
            scaling[name] = factor
    # Every SAE gets our recipe's schedule (warm-up, decay), computed for this batch size.
    settings = replace(
        job.recipe_settings().trainer_settings(job.tokens, job.device),
        extra={"dead_feature_window": job.dead_feature_window},
    )
    trainers = pipeline.timed(
        seconds,
        "collect_and_train",
        lambda: train_in_lockstep(
            saes,
            dict.fromkeys(saes, site.hook_name),
            data.batches,
            settings,
            progress=f"training {len(saes)} SAEs on {model.cfg.model_name}",
            activation_scaling=scaling,
        ),
    )
    with staged_dir(job.out, overwrite=True) as staging:
        sae_dirs = {name: _save(sae, staging / "saes" / name) for name, sae in saes.items()}
        evaluations = pipeline.evaluate_saved(
            model, sae_dirs, data.held_out, exclude, job.device, seconds
        )
        final_dirs = {name: job.out / "saes" / name for name in saes}
        rows = [
            SweepRow.of(
                arch, value, evaluations[name], trainers[name].n_training_samples, final_dirs[name]
            )
            for name, (arch, value) in names.items()
        ]
        meta = {
            "job": job.record(),
            "model": model.cfg.model_name,
            "hook_name": site.hook_name,
            "dataset": data.dataset,
            "mean_norm": stats.mean_norm,
            "mean_squared_norm": stats.mean_squared_norm,
            "seconds": seconds,
        }
        frequencies = {name: evaluations[name].feature_frequency for name in names}
        files = write_report(rows, frequencies, meta, staging)
    moved = {key: job.out / path.relative_to(staging) for key, path in files.items()}
    return SweepResult(job.out, rows, final_dirs, seconds, moved)


def _valid() -> str:
    return ", ".join(ARCHITECTURES)


def _one_site(sites: list[Site], spec: str | None) -> Site:
    if len(sites) != 1:
        raise ValueError(
            f"a sweep compares SAEs on one site, but {spec!r} names {len(sites)} "
            f"({', '.join(s.hook_name for s in sites[:4])}...): give one, e.g. resid:6"
        )
    return sites[0]


def _new_sae(
    job: SweepJob,
    arch: Architecture,
    value: float,
    site: Site,
    stats: StreamStatistics,
    dataset: str,
    exclude: list[int],
) -> tuple[TrainingSAE[Any], float | None]:
    """The SAE, from its own seed, and the factor SAELens's trainer scales its inputs by (None
    for ours)."""
    common = {
        "device": job.device,
        "reshape_activations": "hook_z" if site.is_attention_z else "none",
    }
    with pipeline.seeded(job.seed, f"{arch.name}/{arch.setting(value)}"):
        sae = arch.build(site.d_in, job.d_sae, value, job.our_recipe(), common)
    pipeline.describe(sae, job, site, dataset, exclude)
    return sae, set_normalisation(arch, sae, stats, job.init_b_dec_to_mean)


def _save(sae: TrainingSAE[Any], path: Path) -> Path:
    """SAELens inference format with unit-norm decoder rows where that is exact (not TopK),
    into the sweep's staging directory."""

    sae.save_inference_model(path)
    fold_saved_decoder_norms(path)
    return path
