"""``sae-jumprelu train`` and ``collect``: JumpReLU SAEs on a language model's activations.

One forward pass feeds one SAE per site (streamed, or read back from an activation cache);
training is SAELens's ``SAETrainer``; results are SAELens-format SAEs, held-out metrics (L0, FVU,
delta LM loss) and training-curve PNGs.
"""

import json
import math
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE

from sae_lens_jumprelu.atomic import prepare_output, staged_dir
from sae_lens_jumprelu.commands.jobs import LanguageModelRun
from sae_lens_jumprelu.data.activation_cache import (
    ActivationCache,
    CacheSpec,
    check_cache_destination,
    write_activation_cache,
)
from sae_lens_jumprelu.data.activations import (
    iter_site_activations,
    peek_mean_squared_norms,
    shuffled_batches,
    special_token_ids,
)
from sae_lens_jumprelu.data.corpus import TokenCorpus, check_text_model, load_token_corpus
from sae_lens_jumprelu.data.models import EMBEDDED_MODEL, load_model
from sae_lens_jumprelu.data.sites import Site, default_site_spec, resolve_sites
from sae_lens_jumprelu.evals import SAEEvaluation, evaluate_saes, record_in_cfg, write_evaluations
from sae_lens_jumprelu.plots import plot_training_curve
from sae_lens_jumprelu.recipes import Recipe
from sae_lens_jumprelu.training.lockstep import CurveRecorder, train_in_lockstep
from sae_lens_jumprelu.training_sae import JumpReLUSTETrainingSAE

# Tokens per shuffle buffer of the streamed path: 32 forward passes of 16 contexts of 128.
_BUFFER_TOKENS = 65_536
# Batches whose E||x||^2 sets each SAE's normalisation when streaming (a cache has it exactly).
_NORM_BATCHES = 8


DISTRIBUTED_MODES = ("none", "data", "sae")


@dataclass(frozen=True)
class TrainJob(LanguageModelRun):
    """Everything ``sae-jumprelu train`` can be told; the defaults are the embedded run."""

    sites: list[str] = field(default_factory=list)
    """Site specs (``resid:6``, ``attn:0-3``, ``mlp:*``, hook names); empty: the middle
    residual stream. One SAE per site, all fed by one forward pass."""
    tokens: int = 200_000
    """Training tokens per SAE."""
    d_sae: int = 2048
    """Latents per SAE."""
    target_l0: list[float] = field(default_factory=list)
    """Mean active latents to reach (target mode), one SAE per value and site; the default when
    no lambda is given: 32."""
    l0_coefficient: list[float] = field(default_factory=list)
    """Fixed lambdas of the L0 penalty (the paper's mode) instead of targets: a sweep whose SAEs
    share one forward pass."""
    # Short LM runs need more, smaller steps than the recipes' 4096 (embedded model, layer 6,
    # 250k tokens, d_sae 4096, target 32, held-out L0 / FVU / dead, 2026-12-02, before the
    # threshold ceiling): batch 1024 18.8 / 0.125 / 67%; with the ceiling and the signed
    # controller, batch 1024 missed target 16 (20.6) where batch 256 reached it (16.0).
    batch_size: int | None = 256
    """Activations per training step; None: the recipe's."""
    lr: float | None = None
    """Learning rate; None: the recipe's."""
    out: Path = Path("sae-jumprelu-run")
    """Output directory: one SAELens SAE per site, metrics, curves."""
    eval_tokens: int = 4096
    """Held-out tokens for L0, FVU and delta LM loss (documents never trained on; with
    ``activations``, the first of the cache's held-out contexts)."""
    distributed: str = "none"
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

    def recipe_settings(self) -> Recipe:
        """Our recipe (``sae_config`` included) with this job's batch size and learning rate."""
        recipe = self.our_recipe()
        return replace(
            recipe,
            batch_size=self.batch_size or recipe.batch_size,
            lr=self.lr if self.lr is not None else recipe.lr,
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


def run_train(job: TrainJob) -> TrainResult | None:
    """Train, save, evaluate; under ``--distributed`` only rank 0 returns the result."""
    job.sparsity_settings()  # a contradictory request fails before the model loads
    job.check_reachable()
    job.check_output()
    if job.distributed != "none":
        from sae_lens_jumprelu.commands.distributed_train import run_train_distributed

        return run_train_distributed(job)
    torch.manual_seed(job.seed)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    cache = ActivationCache(job.activations) if job.activations is not None else None
    model_name = cache.manifest["model"] if cache is not None else job.model
    model = load_model(model_name, device=job.device, dtype=job.dtype)
    seconds["load_model"] = time.perf_counter() - started
    exclude = special_token_ids(model) if job.exclude_special_tokens else []
    recipe = job.recipe_settings()

    if cache is None:
        sites = resolve_sites(model, job.sites or [default_site_spec(model)])
        corpus = load_corpus(model, job)
        held_out = corpus.held_out
        passes = iter_site_activations(
            model, sites, corpus.train, exclude_token_ids=exclude, progress="model forward passes"
        )
        hooks = [site.hook_name for site in sites]
        stream = shuffled_batches(passes, hooks, recipe.batch_size, _BUFFER_TOKENS)
        norms, batches = peek_mean_squared_norms(stream, _NORM_BATCHES)
        dataset = corpus.source
    else:
        if not cache.complete:
            warnings.warn(
                f"{job.activations} is incomplete ({len(cache.manifest['shards'])} of "
                f"{cache.manifest['n_shards']} shards): training on its {cache.tokens} tokens; "
                "rerun the same `collect` to finish it",
                stacklevel=2,
            )
        sites = _cached_sites(model, cache, job.sites)
        hooks = [site.hook_name for site in sites]
        batches = cache.iter_batches(recipe.batch_size, hooks, seed=job.seed)
        norms = {hook: cache.mean_squared_norm(hook) for hook in hooks}
        held_out = cache.held_out_tokens()
        dataset = cache.manifest["dataset"]
        if held_out is None:
            raise ValueError(f"{job.activations} has no held-out tokens to evaluate on")
        held_out = held_out[: math.ceil(job.eval_tokens / held_out.shape[1])]  # as sweep does

    names = job.sae_names(sites)
    saes = {
        name: new_sae(job, site, sparsity, dataset, norms[site.hook_name], exclude)
        for name, (site, sparsity) in names.items()
    }
    recorder = CurveRecorder()
    started = time.perf_counter()
    train_in_lockstep(
        saes,
        {name: site.hook_name for name, (site, _) in names.items()},
        batches,
        recipe.trainer_settings(job.tokens, job.device),
        recorder,
        progress=f"training {len(saes)} SAE(s) on {model.cfg.model_name}",
    )
    seconds["collect_and_train"] = time.perf_counter() - started

    histories = {name: dict(recorder.history[name]) for name in saes}
    return finish_run(
        job,
        model,
        names,
        lambda saes_dir: {name: _save(sae, saes_dir / name) for name, sae in saes.items()},
        histories,
        held_out,
        exclude,
        seconds,
        norms,
        dataset,
    )


def finish_run(
    job: TrainJob,
    model: Any,
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
        # Evaluate what a user gets: the saved files loaded by stock SAELens.
        reloaded = {
            name: SAE.load_from_disk(path, device=job.device) for name, path in sae_dirs.items()
        }
        started = time.perf_counter()
        evaluations = evaluate_saes(model, reloaded, held_out, exclude)
        seconds["evaluate"] = time.perf_counter() - started
        write_evaluations(evaluations, out)
        for name, evaluation in evaluations.items():
            record_in_cfg(sae_dirs[name], evaluation)
        curves = {
            name: plot_training_curve(
                histories[name], sae_dirs[name] / "training_curve.png",
                names[name][1].get("target_l0"),
            )
            for name in sae_dirs
        }  # fmt: skip
        summary = {
            "job": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(job).items()},
            "model": model.cfg.model_name,
            "dataset": dataset,
            "mean_squared_norm": norms,
            "seconds": seconds,
            "metrics": {name: e.summary() for name, e in evaluations.items()},
        }
        (out / "run.json").write_text(json.dumps(summary, indent=2))
        targets = {name: names[name][1].get("target_l0") for name in sae_dirs}
        result = TrainResult(out, sae_dirs, evaluations, curves, seconds, targets)
    return result.moved_to(job.out)


def run_collect(job: TrainJob, contexts_per_shard: int = 64) -> ActivationCache:
    """Write the activations of ``job.tokens`` tokens at ``job.sites`` to the cache
    ``job.out`` (resuming it if it exists)."""
    check_cache_destination(job.out)  # before a minute of model loading
    torch.manual_seed(job.seed)
    model = load_model(job.model, device=job.device, dtype=job.dtype)
    sites = resolve_sites(model, job.sites or [default_site_spec(model)])
    corpus = load_corpus(model, job)
    spec = CacheSpec(
        model=job.model or EMBEDDED_MODEL,
        sites=sites,
        dataset=corpus.source,
        context_size=job.context_size,
        exclude_token_ids=special_token_ids(model) if job.exclude_special_tokens else [],
        contexts_per_shard=contexts_per_shard,
        seed=job.seed,
    )
    return write_activation_cache(job.out, model, spec, corpus.train, corpus.held_out)


def load_corpus(model: Any, job: TrainJob) -> TokenCorpus:
    check_text_model(model, job.context_size)
    # Every context starts with BOS, whose activation is dropped: read enough contexts that
    # the rest still fills ``job.tokens`` (a 300k-token run otherwise ran out 16 steps early).
    bos_share = 1 / job.context_size if job.exclude_special_tokens else 0.0
    corpus = load_token_corpus(
        model.tokenizer,
        job.dataset,
        context_size=job.context_size,
        train_tokens=math.ceil(job.tokens / (1 - bos_share)),
        held_out_tokens=job.eval_tokens,
    )
    have = corpus.train.numel()
    if have < job.tokens:
        warnings.warn(
            f"{corpus.source} holds only {have} training tokens of the {job.tokens} asked for; "
            f"using {have} (give a larger --dataset for more)",
            stacklevel=2,
        )
    if corpus.held_out.shape[0] == 0:
        raise ValueError(f"{corpus.source}: too little text left for a held-out split")
    return corpus


def _cached_sites(model: Any, cache: ActivationCache, specs: list[str]) -> list[Site]:
    cached = {site.hook_name: site for site in cache.sites}
    if not specs:
        return list(cached.values())
    wanted = [site.hook_name for site in resolve_sites(model, specs)]
    missing = [hook for hook in wanted if hook not in cached]
    if missing:
        raise ValueError(
            f"{cache.path} has no activations for {missing}; it holds {sorted(cached)}"
        )
    return [cached[hook] for hook in wanted]


def new_sae(
    job: TrainJob,
    site: Site,
    sparsity: dict[str, float],
    dataset: str,
    mean_squared_norm: float,
    exclude: list[int],
) -> JumpReLUSTETrainingSAE:
    cfg = job.our_recipe().sae_config(
        site.d_in,
        job.d_sae,
        device=job.device,
        reshape_activations="hook_z" if site.hook_name.endswith("attn.hook_z") else "none",
        **sparsity,
    )
    metadata = cfg.metadata
    metadata.hook_name = site.hook_name
    metadata.model_name = job.model or EMBEDDED_MODEL
    metadata.context_size = job.context_size
    metadata.prepend_bos = True
    metadata.dataset_path = dataset
    metadata.exclude_special_tokens = exclude
    metadata.activation_mean_squared_norm = mean_squared_norm
    # Each SAE's initial weights come from its own seed and leave the global RNG (the shuffle
    # buffer's) alone, so an SAE starts the same whichever rank builds it and with which others.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(
            job.seed + zlib.crc32(f"{site.hook_name}:{sorted(sparsity.items())}".encode())
        )
        sae = JumpReLUSTETrainingSAE(cfg)
    sae.set_mean_squared_norm(mean_squared_norm)
    return sae


def _save(sae: JumpReLUSTETrainingSAE, path: Path) -> Path:
    """SAELens inference format (into the run's staging directory)."""
    sae.save_inference_model(path)
    return path
