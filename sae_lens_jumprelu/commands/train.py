"""``sae-jumprelu train``: JumpReLU SAEs on a language model's activations.

One forward pass feeds one SAE per site and sparsity setting (streamed, or read back from an
activation cache); training is SAELens's ``SAETrainer``; results are SAELens-format SAEs,
held-out metrics (L0, FVU, delta LM loss) and training-curve PNGs. Under torchrun with
``--distributed``, ``distributed_train`` runs the same steps on many ranks.
"""

from pathlib import Path

import torch

from sae_lens_jumprelu.commands import pipeline
from sae_lens_jumprelu.commands.distributed_train import run_train_distributed
from sae_lens_jumprelu.commands.train_job import TrainJob, TrainResult, finish_run, new_sae
from sae_lens_jumprelu.training.lockstep import CurveRecorder, train_in_lockstep
from sae_lens_jumprelu.training_sae import JumpReLUSTETrainingSAE


def run_train(job: TrainJob) -> TrainResult | None:
    """Train, save, evaluate; under ``--distributed`` only rank 0 returns the result."""
    job.sparsity_settings()  # a contradictory request fails before the model loads
    job.check_reachable()
    job.check_output()
    if job.distributed != "none":
        return run_train_distributed(job)
    torch.manual_seed(job.seed)  # the shuffle buffer's order
    seconds: dict[str, float] = {}
    cache = pipeline.open_cache(job)
    model = pipeline.load_run_model(job, cache, seconds)
    exclude = pipeline.excluded_tokens(job, model)
    sites = pipeline.run_sites(model, job.sites, cache)
    data = pipeline.read_activations(job, model, sites, cache)
    norms = data.mean_squared_norms()
    names = job.sae_names(data.sites)
    saes = {
        name: new_sae(job, site, sparsity, data.dataset, norms[site.hook_name], exclude)
        for name, (site, sparsity) in names.items()
    }
    recorder = CurveRecorder()
    pipeline.timed(
        seconds,
        "collect_and_train",
        lambda: train_in_lockstep(
            saes,
            {name: site.hook_name for name, (site, _) in names.items()},
            data.batches,
            job.recipe_settings().trainer_settings(job.tokens, job.device),
            recorder,
            progress=f"training {len(saes)} SAE(s) on {model.cfg.model_name}",
        ),
    )
    return finish_run(
        job,
        model,
        names,
        lambda saes_dir: {name: _save(sae, saes_dir / name) for name, sae in saes.items()},
        {name: dict(recorder.history[name]) for name in saes},
        data.held_out,
        exclude,
        seconds,
        norms,
        data.dataset,
    )


def _save(sae: JumpReLUSTETrainingSAE, path: Path) -> Path:
    """SAELens inference format (into the run's staging directory)."""
    sae.save_inference_model(path)
    return path
