"""``sae-jumprelu train --distributed data|sae`` under torchrun: ``run_train`` on many ranks.

Every rank loads the model and the corpus and runs the model on its share of the contexts
(``training.sharding``); ``training.distributed_loop.train_sharded`` trains; at the end rank 0
receives every SAE's files, saves them and evaluates, as ``run_train`` does in one process.
Checkpoints every ``--checkpoint-every`` steps; ``--resume`` continues one on any number of
ranks.
"""

import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from sae_lens_jumprelu.commands import pipeline
from sae_lens_jumprelu.commands.train_job import TrainJob, TrainResult, finish_run, new_sae
from sae_lens_jumprelu.data.activations import SiteBatch, mean_squared_norm
from sae_lens_jumprelu.data.sites import Site, default_site_spec, resolve_sites
from sae_lens_jumprelu.training import checkpoint
from sae_lens_jumprelu.training.distributed import Dist, destroy, init_from_env
from sae_lens_jumprelu.training.distributed_loop import CheckpointPlan, Mode, train_sharded
from sae_lens_jumprelu.training.lockstep import CurveRecorder
from sae_lens_jumprelu.training.sharding import (
    ContextPosition,
    assign_round_robin,
    data_parallel_passes,
    sae_parallel_passes,
)


def run_train_distributed(job: TrainJob) -> TrainResult | None:
    """Join torchrun's process group, train, leave it; rank 0 returns the result."""
    dist, device = init_from_env(job.dist_timeout, job.device)
    try:
        return _run(replace(job, device=device), dist)
    finally:
        destroy()


def _run(job: TrainJob, dist: Dist) -> TrainResult | None:
    mode: Mode = "data" if job.distributed == "data" else "sae"
    batch_size = job.recipe_settings().batch_size
    if mode == "data" and batch_size % dist.world_size:
        raise ValueError(
            f"--batch-size {batch_size} is not divisible by the {dist.world_size} ranks: "
            "data-parallel ranks take equal shares of each global batch"
        )
    torch.manual_seed(job.seed)  # the shuffle buffer's order
    seconds: dict[str, float] = {}
    model = pipeline.load_run_model(job, None, seconds)
    exclude = pipeline.excluded_tokens(job, model)
    sites = resolve_sites(model, job.sites or [default_site_spec(model)])
    corpus = pipeline.load_corpus(model, job)
    names = job.sae_names(sites)
    owner = (
        assign_round_robin(list(names), dist.world_size)
        if mode == "sae"
        else dict.fromkeys(names, dist.rank)
    )
    mine = [name for name in names if owner[name] == dist.rank]
    if not mine:
        raise ValueError(
            f"SAE-parallel: {len(names)} SAE(s) for {dist.world_size} ranks leaves rank "
            f"{dist.rank} none: use at most {len(names)} ranks, or --distributed data"
        )
    position = ContextPosition(_resume_position(job, list(names)))
    head, batches = _rank_stream(job, model, sites, corpus.train, dist, mode, owner, position)
    norms = _mean_squared_norms(head, dist, mode)
    saes: dict[str, Any] = {
        name: (
            checkpoint.load_sae(job.resume, name, job.device)
            if job.resume is not None
            else new_sae(job, site, sparsity, corpus.source, norms[site.hook_name], exclude)
        )
        for name, (site, sparsity) in names.items()
        if name in mine
    }
    recorder = CurveRecorder()
    plan = (
        CheckpointPlan(job.out / "checkpoints", job.checkpoint_every, position, list(names))
        if job.checkpoint_every
        else None
    )
    trainers = pipeline.timed(
        seconds,
        "collect_and_train",
        lambda: train_sharded(
            saes,
            {name: names[name][0].hook_name for name in mine},
            batches,
            job.recipe_settings().trainer_settings(job.tokens, job.device),
            dist,
            mode,
            on_step=recorder,
            checkpoints=plan,
            resume=job.resume,
            progress=f"training {len(names)} SAE(s) on {dist.world_size} ranks ({mode}-parallel)",
        ),
    )
    # Rank 0 receives every SAE once: data-parallel replicas are identical.
    send = trainers if mode == "sae" or dist.is_main else {}
    gathered = dist.gather_to_main(
        (
            checkpoint.files_written_by(lambda out: _save_inference(send, out)),
            {name: dict(recorder.history[name]) for name in send},
            {names[name][0].hook_name: norms[names[name][0].hook_name] for name in send},
        )
    )
    if gathered is None:
        return None
    parts = [files for files, _, _ in gathered]
    histories = {name: h for _, part, _ in gathered for name, h in part.items()}
    all_norms = {hook: n for _, _, part in gathered for hook, n in part.items()}
    return finish_run(
        job, model, names, lambda saes_dir: _write_saes(saes_dir, parts), histories,
        corpus.held_out, exclude, seconds, all_norms, corpus.source,
    )  # fmt: skip


def _rank_stream(
    job: TrainJob,
    model: Any,
    sites: list[Site],
    contexts: torch.Tensor,
    dist: Dist,
    mode: Mode,
    owner: dict[str, int],
    position: ContextPosition,
) -> tuple[list[SiteBatch], Any]:
    """This rank's training batches: its share of every global batch at every site (data),
    or whole batches at the hooks of its own SAEs (sae)."""
    exclude = pipeline.excluded_tokens(job, model)
    batch_size = job.recipe_settings().batch_size
    if mode == "data":
        passes = data_parallel_passes(
            model, sites, contexts, dist, position, exclude_token_ids=exclude
        )
        hooks = [site.hook_name for site in sites]
        return pipeline.stream(passes, hooks, batch_size // dist.world_size)
    hook_of = {name: site.hook_name for name, (site, _) in job.sae_names(sites).items()}
    needed = [
        list(dict.fromkeys(hook_of[n] for n in hook_of if owner[n] == rank))
        for rank in range(dist.world_size)
    ]
    passes = sae_parallel_passes(
        model, sites, contexts, dist, position, needed, exclude_token_ids=exclude
    )
    return pipeline.stream(passes, needed[dist.rank], batch_size)


def _mean_squared_norms(head: list[SiteBatch], dist: Dist, mode: Mode) -> dict[str, float]:
    """E||x||^2 per hook over the head; data-parallel ranks each measured their own share,
    so theirs are averaged."""
    norms = {hook: mean_squared_norm([batch[hook] for batch in head]) for hook in head[0]}
    if mode != "data":
        return norms
    hooks = list(norms)
    averaged = dist.mean_(torch.tensor([norms[hook] for hook in hooks], dtype=torch.float64))
    return dict(zip(hooks, averaged.tolist(), strict=True))


def _resume_position(job: TrainJob, names: list[str]) -> int:
    if job.resume is None:
        return 0
    progress = checkpoint.read_progress(job.resume)
    if progress.sae_names != names:
        raise checkpoint.CheckpointError(
            f"{job.resume} holds the SAEs {progress.sae_names}, this run asks for {names}: "
            "resume with the sites and --target-l0/--l0-coefficient of the run that wrote it"
        )
    # The checkpoint's position is how far the forward passes had read, but the shuffle buffer
    # then held activations no step had trained on: resuming there skipped them, and a run
    # killed at step 80 of 292 ended at step 238. Resume instead where the steps had got, at
    # most step x batch tokens in (BOS and other dropped tokens make it a few contexts less).
    batch = job.recipe_settings().batch_size
    trained = progress.step * batch // job.context_size
    position = min(progress.next_context, trained)
    warnings.warn(
        f"resuming at step {progress.step}, context {position}: the shuffle buffer is not "
        "checkpointed, so the rest of the run sees its data in another order (and a few "
        "contexts twice); the result is close to the uninterrupted run's, not equal to it",
        stacklevel=2,
    )
    return position


def _save_inference(trainers: dict[str, Any], out: Path) -> None:
    for name, trainer in trainers.items():
        trainer.sae.save_inference_model(out / name)


def _write_saes(directory: Path, parts: list[dict[str, bytes]]) -> dict[str, Path]:
    """Each SAE's files, as sent by its rank, into ``directory/<name>`` (the run's staging)."""
    by_sae: dict[str, dict[str, bytes]] = {}
    for files in parts:
        for relative, data in files.items():
            name, rest = relative.split("/", 1)
            by_sae.setdefault(name, {})[rest] = data
    for name, files in by_sae.items():
        checkpoint.write_files(directory / name, files)
    return {name: directory / name for name in by_sae}
