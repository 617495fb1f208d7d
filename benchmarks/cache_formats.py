"""Writing and reading one activation cache in each format, ours and SAELens's, for
``collection_throughput.py``."""

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import datasets
import torch
from sae_lens.cache_activations_runner import CacheActivationsRunner
from sae_lens.config import CacheActivationsRunnerConfig
from sae_lens.training.activations_store import ActivationsStore
from transformer_lens import HookedTransformer

from sae_lens_jumprelu.data.activation_cache import (
    ActivationCache,
    CacheSpec,
    write_activation_cache,
)
from sae_lens_jumprelu.data.activations import special_token_ids
from sae_lens_jumprelu.data.models import EMBEDDED_MODEL, embedded_weights_dir
from sae_lens_jumprelu.data.sites import Site

CONTEXT_SIZE = 128
CONTEXTS_PER_PASS = 16
READ_BATCH = 4096
# Tokens in each reader's shuffle buffer: ours mixes across 4 shards of 64 contexts (about
# 32k tokens), so SAELens's reader gets the same.
READ_BUFFER_TOKENS = 4 * 64 * CONTEXT_SIZE


def write_ours(
    out: Path, model: HookedTransformer, site: Site, contexts: torch.Tensor, exclude: list[int]
) -> None:
    spec = CacheSpec(
        model=EMBEDDED_MODEL,
        sites=[site],
        dataset="embedded",
        context_size=CONTEXT_SIZE,
        exclude_token_ids=exclude,
    )
    write_activation_cache(out, model, spec, contexts, contexts_per_pass=CONTEXTS_PER_PASS)


def write_saelens(out: Path, site: Site, contexts: torch.Tensor) -> None:
    """SAELens's CacheActivationsRunner on the same contexts and weights (it loads its own
    HookedTransformer from the embedded weights, offline, as ours does)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    weights = embedded_weights_dir()
    tokens = contexts.shape[0] * CONTEXT_SIZE
    bytes_per_token = site.d_in * 4
    cfg = CacheActivationsRunnerConfig(
        dataset_path="embedded",  # unused: override_dataset gives the contexts
        model_name="google/gemma-3-270m",
        model_from_pretrained_kwargs={
            "hf_model": AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32),
            "tokenizer": AutoTokenizer.from_pretrained(weights),
        },
        model_batch_size=CONTEXTS_PER_PASS,
        hook_name=site.hook_name,
        d_in=site.d_in,
        training_tokens=tokens,
        context_size=CONTEXT_SIZE,
        new_cached_activations_path=str(out),
        # One buffer of exactly our tokens: the runner fills whole buffers and would otherwise
        # cycle the contexts up to its 2 GB default. Half a token of slack against rounding.
        buffer_size_gb=(tokens + 0.5) * bytes_per_token / 1e9,
        # Its shuffle is an index mapping that is not saved with the dataset: skip the work.
        shuffle=False,
        prepend_bos=False,
        streaming=False,
        device="cpu",
        dtype="float32",
    )
    dataset = datasets.Dataset.from_dict({"tokens": contexts.tolist()})
    CacheActivationsRunner(cfg, override_dataset=dataset).run()


Reader = Callable[[], int]
"""Reads the whole cache once; returns the tokens delivered."""


def read_ours_batches(path: Path, verify: bool) -> Reader:
    """Ours as training reads it: shuffled batches of 4096."""
    return lambda: sum(
        n_tokens(batch) for batch in ActivationCache(path, verify=verify).iter_batches(READ_BATCH)
    )


def read_ours_raw(path: Path) -> Reader:
    """Ours without the shuffle: every shard in file order (CRC checked)."""

    def run() -> int:
        cache = ActivationCache(path)
        hooks = [site.hook_name for site in cache.sites]
        return sum(n_tokens(cache.read_shard(e, hooks)) for e in cache.manifest["shards"])

    return run


def _saelens_cached_store(
    path: Path, model: HookedTransformer, site: Site, exclude: torch.Tensor
) -> ActivationsStore:
    return ActivationsStore(
        model=model,
        dataset=None,
        streaming=False,
        hook_name=site.hook_name,
        hook_head_index=None,
        context_size=CONTEXT_SIZE,
        d_in=site.d_in,
        # SAELens 6.54 sizes the loader's buffer as n_batches_in_buffer * context_size tokens
        # (without store_batch_size_prompts: SAELens PR #692, open), so its default of 20 gives
        # 2560 tokens, fewer than a batch, and the loader refuses to start. This gives
        # READ_BUFFER_TOKENS, the size of ours.
        n_batches_in_buffer=READ_BUFFER_TOKENS // CONTEXT_SIZE,
        total_training_tokens=READ_BUFFER_TOKENS,  # unused when reading a cache
        store_batch_size_prompts=32,  # SAELens's default: contexts per read from the dataset
        train_batch_size_tokens=READ_BATCH,
        prepend_bos=False,
        normalize_activations="none",
        device=torch.device("cpu"),
        dtype="float32",
        cached_activations_path=str(path),
        # Same tokens as ours delivers: SAELens caches BOS too and drops it when reading.
        exclude_special_tokens=exclude,
    )


def read_saelens_batches(
    path: Path, model: HookedTransformer, site: Site, exclude: torch.Tensor, n_batches: int
) -> Reader:
    """SAELens as its trainer reads a cache: ``get_data_loader()``, as many batches as ours."""

    def run() -> int:
        loader = _saelens_cached_store(path, model, site, exclude).get_data_loader()
        with warnings.catch_warnings():
            # Its buffer keeps half for mixing and never flushes, so the last batches wrap
            # into a second epoch (it warns); ours flushes its buffer at the end.
            warnings.filterwarnings("ignore", message="All samples in the training dataset")
            return sum(next(loader).shape[0] for _ in range(n_batches))

    return run


def read_saelens_raw(
    path: Path, model: HookedTransformer, site: Site, exclude: torch.Tensor
) -> Reader:
    """SAELens without the shuffle: ``get_filtered_llm_batch`` over the dataset once."""

    def run() -> int:
        store = _saelens_cached_store(path, model, site, exclude)
        tokens = 0
        try:
            while True:
                tokens += store.get_filtered_llm_batch(raise_on_epoch_end=True).shape[0]
        except StopIteration:
            return tokens

    return run


def drop_page_cache() -> bool:
    """Whether the OS page cache could be emptied (root on Linux, outside most containers)."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def readers(
    ours: Path, theirs: Path, model: HookedTransformer, site: Site
) -> dict[str, dict[str, Reader]]:
    """Readers by comparison; the first of each compares with the others."""
    exclude = torch.tensor(special_token_ids(model), dtype=torch.long)
    n_batches = sum(1 for _ in ActivationCache(ours).iter_batches(READ_BATCH))
    return {
        "shuffled batches": {
            "ours iter_batches, verify=True": read_ours_batches(ours, verify=True),
            "ours iter_batches, verify=False": read_ours_batches(ours, verify=False),
            "SAELens get_data_loader": read_saelens_batches(
                theirs, model, site, exclude, n_batches
            ),
        },
        "no shuffle": {
            "ours read_shard": read_ours_raw(ours),
            "SAELens get_filtered_llm_batch": read_saelens_raw(theirs, model, site, exclude),
        },
    }


def n_tokens(batch: dict[str, torch.Tensor]) -> int:
    return next(iter(batch.values())).shape[0]
