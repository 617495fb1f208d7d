"""``sae-jumprelu sweep``: JumpReLU vs TopK vs BatchTopK vs Gated on one activation stream.

Every SAE of every architecture and sparsity setting is trained in lockstep by its own SAELens
``SAETrainer`` on the same batches, drawn from one LM forward pass per batch of contexts (or an
activation cache), with the same optimiser settings; then all are saved in SAELens format,
reloaded with plain ``sae_lens.SAE`` and evaluated together on held-out text (L0, FVU, delta LM
loss, firing frequencies). ``sweep_report`` writes the table and the figures.
"""

import math
import time
from dataclasses import asdict, dataclass, field, replace
from itertools import chain, islice
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from sae_lens import SAE
from sae_lens.saes.sae import TrainingSAE
from torch import Tensor
from transformer_lens import HookedTransformer

from sae_lens_jumprelu.architectures import ARCHITECTURES, Architecture, get_architecture
from sae_lens_jumprelu.atomic import prepare_output, staged_dir
from sae_lens_jumprelu.commands.jobs import LanguageModelRun
from sae_lens_jumprelu.commands.sweep_report import SweepRow, write_report
from sae_lens_jumprelu.commands.train import TrainJob, _cached_sites, load_corpus
from sae_lens_jumprelu.convert.sae_lens_format import fold_saved_decoder_norms
from sae_lens_jumprelu.data.activation_cache import ActivationCache
from sae_lens_jumprelu.data.activations import (
    SiteBatch,
    iter_site_activations,
    shuffled_batches,
    special_token_ids,
)
from sae_lens_jumprelu.data.corpus import TokenCorpus
from sae_lens_jumprelu.data.models import EMBEDDED_MODEL, load_model
from sae_lens_jumprelu.data.sites import Site, default_site_spec, resolve_sites
from sae_lens_jumprelu.evals import evaluate_saes, record_in_cfg
from sae_lens_jumprelu.recipes import Recipe
from sae_lens_jumprelu.training.lockstep import train_in_lockstep

# Tokens per shuffle buffer: 32 forward passes of 16 contexts of 128 (as ``train``).
_BUFFER_TOKENS = 65_536
# Batches whose statistics (mean, E||x||, E||x||^2) set every SAE's normalisation.
_STAT_BATCHES = 8


@dataclass(frozen=True)
class SweepJob(LanguageModelRun):
    """Everything ``sae-jumprelu sweep`` can be told; the defaults are the embedded run."""

    site: str | None = None
    """One site spec (``resid:9``, ``mlp:3``, a hook name); None: the middle residual stream."""
    # 100k tokens: the whole default run (22 SAEs) costs ~25 CPU-minutes, 14 min wall on 2 cores
    # (README, "Compare architectures", 2026-12-03); 200k at d_sae 2048 would be ~2.5 times that.
    tokens: int = 100_000
    """Training tokens, the same for every SAE."""
    # The SAE matmuls scale with d_sae: 2048 would double the training time of the default.
    d_sae: int = 1024
    """Latents per SAE."""
    architectures: tuple[str, ...] = tuple(ARCHITECTURES)
    """Architectures to train (see ``architectures.ARCHITECTURES``)."""
    grids: dict[str, tuple[float, ...]] = field(default_factory=dict)
    """Sparsity settings per architecture, overriding its default grid (architecture -> values
    of its knob: target L0, k, or the L0/L1 coefficient)."""
    out: Path = Path("sae-jumprelu-sweep")
    """Output directory: results.csv/.md, PNGs, run.json, saes/<architecture>/<setting>/."""
    # Each SAE costs one full spliced forward pass (262k-token unembedding) per held-out batch.
    eval_tokens: int = 2048
    """Held-out tokens for L0, FVU and delta LM loss (documents never trained on; with
    ``activations``, the first of the cache's held-out contexts)."""
    batch_size: int = 256
    """Activations per training step, for every SAE (``train``'s measured default)."""
    lr: float | None = None
    """Learning rate of every SAE; None: our recipe's (``train``'s default)."""
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

    def recipe_settings(self) -> Recipe:
        """Our recipe with this sweep's batch size and learning rate (the recipe's if None)."""
        recipe = self.our_recipe()
        return replace(recipe, batch_size=self.batch_size, lr=self.lr or recipe.lr)

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


@dataclass(frozen=True)
class StreamStatistics:
    """Of the first training batches; sets every SAE's normalisation."""

    mean: Float[Tensor, " d_in"]
    mean_norm: float
    """E||x||; SAELens scales inputs by sqrt(d_in) / E||x||."""
    mean_squared_norm: float
    """E||x||^2; ours scales inputs by 1 / sqrt(E||x||^2)."""

    @classmethod
    def of(cls, x: Float[Tensor, "n d_in"]) -> "StreamStatistics":
        x = x.reshape(x.shape[0], -1).double()
        norms = x.norm(dim=-1)
        return cls(x.mean(dim=0).float(), norms.mean().item(), norms.pow(2).mean().item())


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
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    torch.manual_seed(job.seed)
    cache = ActivationCache(job.activations) if job.activations is not None else None
    if model is None:
        name = cache.manifest["model"] if cache is not None else job.model
        model = load_model(name, device=job.device, dtype=job.dtype)
    seconds["load_model"] = time.perf_counter() - started
    exclude = special_token_ids(model) if job.exclude_special_tokens else []
    specs = [job.site] if job.site else []

    if cache is None:
        site = _one_site(resolve_sites(model, specs or [default_site_spec(model)]), job.site)
        if corpus is None:
            corpus = load_corpus(model, _corpus_job(job))
        held_out, dataset = corpus.held_out, corpus.source
        passes = iter_site_activations(
            model, [site], corpus.train, exclude_token_ids=exclude, progress="model forward passes"
        )
        batches = shuffled_batches(passes, [site.hook_name], job.batch_size, _BUFFER_TOKENS)
    else:
        site = _one_site(_cached_sites(model, cache, specs), job.site)
        batches = cache.iter_batches(job.batch_size, [site.hook_name], seed=job.seed)
        held_out, dataset = cache.held_out_tokens(), cache.manifest["dataset"]
        if held_out is None:
            raise ValueError(f"{job.activations} has no held-out tokens to evaluate on")
        held_out = held_out[: math.ceil(job.eval_tokens / held_out.shape[1])]
    stats, batches = _peek_statistics(batches, site.hook_name)
    if cache is not None:  # the whole cache's E||x||^2, as ``train`` uses
        stats = replace(stats, mean_squared_norm=cache.mean_squared_norm(site.hook_name))

    names = {f"{arch.name}/{arch.setting(v)}": (arch, v) for arch, v in job.settings()}
    saes: dict[str, TrainingSAE[Any]] = {}
    scaling: dict[str, float] = {}
    for name, (arch, value) in names.items():
        saes[name], factor = _new_sae(job, arch, value, site, stats, dataset, exclude)
        if factor is not None:
            scaling[name] = factor

    started = time.perf_counter()
    # Every SAE gets our recipe's schedule (warm-up, decay), computed for this batch size.
    recipe = job.recipe_settings()
    settings = replace(
        recipe.trainer_settings(job.tokens, job.device),
        extra={"dead_feature_window": job.dead_feature_window},
    )
    trainers = train_in_lockstep(
        saes,
        dict.fromkeys(saes, site.hook_name),
        batches,
        settings,
        progress=f"training {len(saes)} SAEs on {model.cfg.model_name}",
        activation_scaling=scaling,
    )
    seconds["collect_and_train"] = time.perf_counter() - started

    # Everything is written beside job.out and renamed into place once complete.
    with staged_dir(job.out, overwrite=True) as staging:
        sae_dirs = {name: _save(sae, staging / "saes" / name) for name, sae in saes.items()}
        # Evaluate what a user gets: the saved files loaded by stock SAELens.
        reloaded = {
            name: SAE.load_from_disk(path, device=job.device) for name, path in sae_dirs.items()
        }
        started = time.perf_counter()
        evaluations = evaluate_saes(model, reloaded, held_out, exclude, progress="evaluating")
        seconds["evaluate"] = time.perf_counter() - started
        for name, evaluation in evaluations.items():
            record_in_cfg(sae_dirs[name], evaluation)
        final_dirs = {name: job.out / "saes" / name for name in saes}
        rows = [
            SweepRow.of(
                arch, value, evaluations[name], trainers[name].n_training_samples, final_dirs[name]
            )
            for name, (arch, value) in names.items()
        ]
        frequencies = {name: evaluations[name].feature_frequency for name in names}
        meta = {
            "job": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(job).items()},
            "model": model.cfg.model_name,
            "hook_name": site.hook_name,
            "dataset": dataset,
            "mean_norm": stats.mean_norm,
            "mean_squared_norm": stats.mean_squared_norm,
            "seconds": seconds,
        }
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


def _corpus_job(job: SweepJob) -> TrainJob:
    return TrainJob(
        model=job.model,
        dataset=job.dataset,
        tokens=job.tokens,
        context_size=job.context_size,
        eval_tokens=job.eval_tokens,
    )


def _peek_statistics(batches: Any, hook_name: str) -> tuple[StreamStatistics, Any]:
    """Statistics of the first batches, and the stream with them still in it."""
    head: list[SiteBatch] = list(islice(batches, _STAT_BATCHES))
    if not head:
        raise ValueError(
            "no full batch of activations to train on: the text or cache holds fewer tokens "
            "than one --batch-size (after special tokens are dropped); give more --tokens or a "
            "smaller --batch-size"
        )
    return StreamStatistics.of(torch.cat([batch[hook_name] for batch in head])), chain(
        head, batches
    )


def _new_sae(
    job: SweepJob,
    arch: Architecture,
    value: float,
    site: Site,
    stats: StreamStatistics,
    dataset: str,
    exclude: list[int],
) -> tuple[TrainingSAE[Any], float | None]:
    """The SAE, and the factor SAELens's trainer scales its inputs by (None for ours)."""
    torch.manual_seed(job.seed)  # each SAE's init does not depend on which others are swept
    common = {
        "device": job.device,
        "reshape_activations": "hook_z" if site.is_attention_z else "none",
    }
    sae = arch.build(site.d_in, job.d_sae, value, job.our_recipe(), common)
    metadata = sae.cfg.metadata
    metadata.hook_name = site.hook_name
    metadata.model_name = job.model or EMBEDDED_MODEL
    metadata.context_size = job.context_size
    metadata.prepend_bos = True
    metadata.dataset_path = dataset
    metadata.exclude_special_tokens = exclude
    return sae, set_normalisation(arch, sae, stats, job.init_b_dec_to_mean)


def set_normalisation(
    arch: Architecture, sae: TrainingSAE[Any], stats: StreamStatistics, init_b_dec_to_mean: bool
) -> float | None:
    """Ours: a fixed E||x||^2 inside the SAE (returns None). Built-ins: the factor SAELens's
    trainer scales inputs by, SAELens's own estimate sqrt(d_in) / E||x||
    (``ActivationScaler.estimate_scaling_factor``) on the same batches; with
    ``init_b_dec_to_mean`` their b_dec starts at the scaled mean, as ours does."""
    if arch.self_normalising:
        sae.set_mean_squared_norm(stats.mean_squared_norm)  # type: ignore[attr-defined]
        return None
    factor = math.sqrt(sae.cfg.d_in) / stats.mean_norm
    if init_b_dec_to_mean:
        with torch.no_grad():
            sae.b_dec.copy_((stats.mean * factor).to(sae.b_dec))
    return factor


def _save(sae: TrainingSAE[Any], path: Path) -> Path:
    """SAELens inference format with unit-norm decoder rows where that is exact (not TopK),
    into the sweep's staging directory."""

    sae.save_inference_model(path)
    fold_saved_decoder_norms(path)
    return path
