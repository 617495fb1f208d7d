"""``sae-jumprelu collect``: a language model's activations at some sites, into a resumable
on-disk cache that ``train --activations`` and ``sweep --activations`` read back."""

from dataclasses import dataclass

import torch

from sae_lens_jumprelu.commands.pipeline import excluded_tokens, load_corpus
from sae_lens_jumprelu.commands.train_job import TrainJob
from sae_lens_jumprelu.data.activation_cache import (
    ActivationCache,
    CacheSpec,
    check_cache_destination,
    write_activation_cache,
)
from sae_lens_jumprelu.data.models import EMBEDDED_MODEL, load_model
from sae_lens_jumprelu.data.sites import default_site_spec, resolve_sites


@dataclass(frozen=True)
class CacheLayout:
    """How ``collect`` lays the cache out on disk (what it collects is a ``TrainJob``)."""

    contexts_per_shard: int = 64
    """Contexts per cache shard: the unit that is written atomically and resumed from."""


def run_collect(job: TrainJob, layout: CacheLayout = CacheLayout()) -> ActivationCache:
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
        exclude_token_ids=excluded_tokens(job, model),
        contexts_per_shard=layout.contexts_per_shard,
        seed=job.seed,
    )
    return write_activation_cache(job.out, model, spec, corpus.train, corpus.held_out)
