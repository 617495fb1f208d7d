"""The named steps every training command is made of, in the order they run.

``train``, ``sweep`` and the distributed ``train`` each read as a short list of these: open the
activation cache (if any), load the model, read the activations (streamed through the model, or
from the cache) with their held-out text, build each SAE from its own seed, train (``training/``),
then save, reload with stock SAELens and evaluate, inside a staging directory that is renamed
into place once complete (``atomic.staged_dir``).
"""

import math
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from sae_lens import SAE
from sae_lens.saes.sae import TrainingSAE
from torch import Tensor
from transformer_lens import HookedTransformer

from sae_lens_jumprelu.commands.jobs import LanguageModelRun
from sae_lens_jumprelu.data.activation_cache import ActivationCache
from sae_lens_jumprelu.data.activations import (
    SiteBatch,
    StreamStatistics,
    iter_site_activations,
    mean_squared_norm,
    peek,
    shuffled_batches,
    special_token_ids,
)
from sae_lens_jumprelu.data.corpus import TokenCorpus, check_text_model, load_token_corpus
from sae_lens_jumprelu.data.models import EMBEDDED_MODEL, load_model
from sae_lens_jumprelu.data.sites import Site, default_site_spec, resolve_sites
from sae_lens_jumprelu.evals import SAEEvaluation, evaluate_saes, record_in_cfg

# Tokens per shuffle buffer of a streamed run: 32 forward passes of 16 contexts of 128.
BUFFER_TOKENS = 65_536
# Batches whose statistics set the SAEs' normalisation when streaming (a cache has E||x||^2
# exactly).
HEAD_BATCHES = 8


@dataclass
class RunData:
    """What a run trains on and is evaluated on."""

    sites: list[Site]
    batches: Iterator[SiteBatch]
    """The training batches, ``head`` first."""
    head: list[SiteBatch]
    """The first ``HEAD_BATCHES`` batches, for the normalisation statistics."""
    held_out: Int[Tensor, "contexts context"]
    dataset: str
    """The corpus's name, as the SAEs' metadata records it."""
    cache: ActivationCache | None = None

    def mean_squared_norms(self) -> dict[str, float]:
        """E||x||^2 per hook: the whole cache's, or the head's when streaming."""
        if self.cache is not None:
            return {
                site.hook_name: self.cache.mean_squared_norm(site.hook_name) for site in self.sites
            }
        return {
            hook: mean_squared_norm([batch[hook] for batch in self.head]) for hook in self.head[0]
        }

    def statistics(self, hook_name: str) -> StreamStatistics:
        """Mean and norms of the head at one hook, E||x||^2 as ``mean_squared_norms``."""
        stats = StreamStatistics.of(torch.cat([batch[hook_name] for batch in self.head]))
        if self.cache is None:
            return stats
        return replace(stats, mean_squared_norm=self.cache.mean_squared_norm(hook_name))


def open_cache(job: LanguageModelRun) -> ActivationCache | None:
    """The job's activation cache, or None when it streams from the model."""
    if job.activations is None:
        return None
    cache = ActivationCache(job.activations)
    if not cache.complete:
        warnings.warn(
            f"{job.activations} is incomplete ({len(cache.manifest['shards'])} of "
            f"{cache.manifest['n_shards']} shards): training on its {cache.tokens} tokens; "
            "rerun the same `collect` to finish it",
            stacklevel=3,
        )
    return cache


def load_run_model(
    job: LanguageModelRun, cache: ActivationCache | None, seconds: dict[str, float]
) -> HookedTransformer:
    """The job's model (the cache's, when training from one), timed into ``seconds``."""
    started = time.perf_counter()
    name = cache.manifest["model"] if cache is not None else job.model
    model = load_model(name, device=job.device, dtype=job.dtype)
    seconds["load_model"] = time.perf_counter() - started
    return model


def excluded_tokens(job: LanguageModelRun, model: HookedTransformer) -> list[int]:
    return special_token_ids(model) if job.exclude_special_tokens else []


def run_sites(
    model: HookedTransformer, specs: list[str], cache: ActivationCache | None
) -> list[Site]:
    """The sites ``specs`` name (none: the cache's sites, or the middle residual stream)."""
    if cache is not None:
        return cached_sites(model, cache, specs)
    return resolve_sites(model, specs or [default_site_spec(model)])


def read_activations(
    job: LanguageModelRun,
    model: HookedTransformer,
    sites: list[Site],
    cache: ActivationCache | None,
    corpus: TokenCorpus | None = None,
) -> RunData:
    """The training batches at ``sites`` and the held-out contexts, from the cache or through
    the model (on ``corpus``, else the job's text)."""
    batch_size = job.recipe_settings().batch_size
    hooks = [site.hook_name for site in sites]
    if cache is not None:
        held_out = cache.held_out_tokens()
        if held_out is None:
            raise ValueError(f"{job.activations} has no held-out tokens to evaluate on")
        head, batches = peek(
            cache_passes(cache, job.tokens, batch_size, hooks, job.seed), HEAD_BATCHES
        )
        return RunData(
            sites=sites,
            batches=batches,
            head=head,
            held_out=held_out[: math.ceil(job.eval_tokens / held_out.shape[1])],
            dataset=cache.manifest["dataset"],
            cache=cache,
        )
    corpus = corpus or load_corpus(model, job)
    passes = iter_site_activations(
        model,
        sites,
        corpus.train,
        exclude_token_ids=excluded_tokens(job, model),
        progress="model forward passes",
    )
    head, batches = stream(passes, hooks, batch_size)
    return RunData(sites, batches, head, corpus.held_out, corpus.source)


def cache_passes(
    cache: ActivationCache, tokens: int, batch_size: int, hooks: list[str], seed: int
) -> Iterator[SiteBatch]:
    """As many passes over ``cache`` as ``tokens`` needs, pass p shuffled from ``seed + p``; a
    cache smaller than the budget is read again rather than cut short, and the user is told."""
    per_pass = cache.tokens // batch_size * batch_size  # the last partial batch is dropped
    passes = math.ceil(tokens / per_pass) if per_pass else 1
    if passes > 1:
        warnings.warn(
            f"{cache.path} holds {cache.tokens} tokens: --tokens {tokens} reads it {passes} "
            "times, reshuffled each time",
            stacklevel=2,
        )
    return chain.from_iterable(
        cache.iter_batches(batch_size, hooks, seed=seed + p) for p in range(passes)
    )


def stream(
    passes: Iterator[SiteBatch], hooks: list[str], batch_size: int
) -> tuple[list[SiteBatch], Iterator[SiteBatch]]:
    """Shuffled training batches of ``batch_size`` from forward passes: the head, and the
    stream with the head still in it."""
    return peek(shuffled_batches(passes, hooks, batch_size, BUFFER_TOKENS), HEAD_BATCHES)


def load_corpus(model: HookedTransformer, job: LanguageModelRun) -> TokenCorpus:
    """The job's text, tokenized into training and held-out contexts."""
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


def cached_sites(model: HookedTransformer, cache: ActivationCache, specs: list[str]) -> list[Site]:
    """The cache's sites named by ``specs`` (none: all of them)."""
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


@contextmanager
def seeded(seed: int, key: str) -> Iterator[None]:
    """Run the block from its own seed (``seed`` and ``key``), leaving the global RNG, which
    the shuffle buffer draws from, as it was: an SAE then starts the same whichever others are
    built, in whichever order, on whichever rank, and the batches do not depend on them."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + zlib.crc32(key.encode()))
        yield


def describe(
    sae: TrainingSAE[Any], job: LanguageModelRun, site: Site, dataset: str, exclude: list[int]
) -> None:
    """Record where the SAE's activations come from in its SAELens metadata."""
    metadata = sae.cfg.metadata
    metadata.hook_name = site.hook_name
    metadata.model_name = job.model or EMBEDDED_MODEL
    metadata.context_size = job.context_size
    metadata.prepend_bos = True
    metadata.dataset_path = dataset
    metadata.exclude_special_tokens = exclude


def evaluate_saved(
    model: HookedTransformer,
    sae_dirs: dict[str, Path],
    held_out: Tensor,
    exclude: list[int],
    device: str,
    seconds: dict[str, float],
) -> dict[str, SAEEvaluation]:
    """Evaluate what a user gets, the saved files loaded by stock SAELens; the metrics are
    also recorded in each SAE's cfg.json."""
    reloaded = {name: SAE.load_from_disk(path, device=device) for name, path in sae_dirs.items()}
    started = time.perf_counter()
    evaluations = evaluate_saes(model, reloaded, held_out, exclude, progress="evaluating")
    seconds["evaluate"] = time.perf_counter() - started
    for name, evaluation in evaluations.items():
        record_in_cfg(sae_dirs[name], evaluation)
    return evaluations


def timed(seconds: dict[str, float], key: str, work: Callable[[], Any]) -> Any:
    """``work()``, its wall time stored under ``key``."""
    started = time.perf_counter()
    result = work()
    seconds[key] = time.perf_counter() - started
    return result
