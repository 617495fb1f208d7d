"""Activation collection and cache-read throughput: ours vs SAELens's ActivationsStore.

    HF_HUB_OFFLINE=1 python benchmarks/collection_throughput.py      # ~14 min on 2 shared CPU cores
    HF_HUB_OFFLINE=1 python benchmarks/collection_throughput.py --quick

Collection, on the embedded Gemma 3 270M and corpus, 1, 3 and 9 sites at layers 4-6 (so every set
stops its forward pass at about the same depth and only the number of sites changes):
ours (``iter_site_activations``: one forward pass per batch of contexts for all sites) against
SAELens's ActivationsStore collecting the same hooks one store at a time, and against SAELens's
own multi-hook store (``from_config_multi_hook``: also one forward pass for all hooks). Same
pre-tokenized contexts, 16 per forward pass, special tokens excluded; tokens/s counts tokens whose
activations were produced at every site of the set.

Cache read (``cache_formats.py``): one site x ~98k tokens written by ``write_activation_cache``
and by SAELens's ``CacheActivationsRunner``, then read as training reads them, in shuffled
batches of 4096: ``ActivationCache.iter_batches`` (CRC check on and off) against an
ActivationsStore on the cached dataset through ``get_data_loader()``, the path SAELens's trainer
takes, with the same shuffle-buffer size; and without shuffling (ours ``read_shard``, SAELens
``get_filtered_llm_batch``), which isolates the file format. Each read is done twice in a row;
the second is the warm one. When this process may write /proc/sys/vm/drop_caches, the first
is cold.

Methods alternate within each repeat (SCHEDULE); medians are printed, with CPU seconds beside
wall-clock ones (steadier when other jobs share the cores).
Prints Markdown tables and writes JSON.
"""

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import datasets
import torch
from cache_formats import (
    CONTEXT_SIZE,
    CONTEXTS_PER_PASS,
    READ_BATCH,
    drop_page_cache,
    n_tokens,
    readers,
    write_ours,
    write_saelens,
)
from sae_lens.training.activations_store import ActivationsStore
from transformer_lens import HookedTransformer

from sae_lens_jumprelu.data.activations import SiteBatch, iter_site_activations, special_token_ids
from sae_lens_jumprelu.data.corpus import load_token_corpus
from sae_lens_jumprelu.data.models import load_model
from sae_lens_jumprelu.data.sites import resolve_sites

SITE_SETS = {
    1: ["resid:6"],
    3: ["resid:6", "attn:6", "mlp:6"],
    9: ["resid:4-6", "attn:4-6", "mlp:4-6"],
}
# Order of the measurements in even and odd repeats, site counts interleaved too, so that the
# other jobs sharing these cores slow every method alike. Ours and SAELens's multi-hook store
# run twice per repeat: the same work, ~5 s each, and one pass here takes up to ~60% longer
# when another job runs; SAELens one store per hook (up to 9x the work) runs once.
SCHEDULE = (
    ["ours", "SAELens multi-hook", "SAELens one store per hook", "ours", "SAELens multi-hook"],
    ["SAELens multi-hook", "ours", "SAELens one store per hook", "SAELens multi-hook", "ours"],
)
# The cache holds block 0's residual stream: d_in 640 like layer 6's, so the bytes read are
# the same, but writing it runs one block instead of seven (both writers run the model).
CACHE_SITE = "resid:0"


def timed(run: Callable[[], Any]) -> tuple[float, float, Any]:
    """Wall-clock and CPU seconds of ``run()`` (CPU time counts our work only: steadier while
    other jobs share the cores), and what it returned."""
    wall, cpu = time.perf_counter(), time.process_time()
    value = run()
    return time.perf_counter() - wall, time.process_time() - cpu, value


# --- collection -------------------------------------------------------------------------------


Collector = Callable[[list[str]], tuple[int, SiteBatch]]
"""Collects every context at the given sites: tokens produced, and the first pass's
activations (to check that all methods collect the same tensors)."""


def collect_ours(
    specs: list[str], model: HookedTransformer, contexts: torch.Tensor, exclude: list[int]
) -> tuple[int, SiteBatch]:
    sites = resolve_sites(model, specs)
    passes = iter_site_activations(
        model,
        sites,
        contexts,
        contexts_per_pass=CONTEXTS_PER_PASS,
        exclude_token_ids=exclude,
        progress=None,
    )
    first = next(passes)
    return n_tokens(first) + sum(n_tokens(batch) for batch in passes), first


def _store_kwargs(dataset: datasets.Dataset, exclude: torch.Tensor) -> dict[str, Any]:
    """What every SAELens store here shares: our contexts, pre-tokenized, BOS already first."""
    return {
        "dataset": dataset,
        "streaming": False,
        "context_size": CONTEXT_SIZE,
        "store_batch_size_prompts": CONTEXTS_PER_PASS,
        "total_training_tokens": len(dataset) * CONTEXT_SIZE,
        "prepend_bos": False,
        "exclude_special_tokens": exclude,
        "device": torch.device("cpu"),
        "dtype": "float32",
    }


def collect_one_store_per_hook(
    specs: list[str], model: HookedTransformer, dataset: datasets.Dataset, exclude: torch.Tensor
) -> tuple[int, SiteBatch]:
    """One single-hook ActivationsStore per site, run one after the other over all contexts."""
    n_passes = -(-len(dataset) // CONTEXTS_PER_PASS)
    first: SiteBatch = {}
    tokens = 0
    for site in resolve_sites(model, specs):
        store = ActivationsStore(
            model=model,
            hook_name=site.hook_name,
            hook_head_index=None,
            d_in=site.d_in,
            n_batches_in_buffer=1,  # unused: get_filtered_llm_batch bypasses the buffer
            train_batch_size_tokens=READ_BATCH,
            normalize_activations="none",
            **_store_kwargs(dataset, exclude),
        )
        batches = [store.get_filtered_llm_batch() for _ in range(n_passes)]
        first[site.hook_name] = batches[0]
        tokens = sum(batch.shape[0] for batch in batches)  # the same tokens at every hook
    return tokens, first


def collect_multi_hook(
    specs: list[str], model: HookedTransformer, dataset: datasets.Dataset, exclude: torch.Tensor
) -> tuple[int, SiteBatch]:
    """SAELens's multi-hook store: one forward pass per batch for every hook. Read through its
    per-pass method (ours is consumed per pass too), not through its shuffling loader."""
    sites = resolve_sites(model, specs)
    store = ActivationsStore.from_config_multi_hook(
        model,
        hook_names=[site.hook_name for site in sites],
        hook_d_ins={site.hook_name: site.d_in for site in sites},
        **_store_kwargs(dataset, exclude),
    )
    n_passes = -(-len(dataset) // CONTEXTS_PER_PASS)
    batches = [store._get_filtered_multi_hook_llm_batch() for _ in range(n_passes)]
    return sum(n_tokens(batch) for batch in batches), batches[0]


def collectors(model: HookedTransformer, contexts: torch.Tensor) -> dict[str, Collector]:
    exclude = special_token_ids(model)
    exclude_tensor = torch.tensor(exclude, dtype=torch.long)
    dataset = datasets.Dataset.from_dict({"tokens": contexts.tolist()})
    return {
        "ours": partial(collect_ours, model=model, contexts=contexts, exclude=exclude),
        "SAELens one store per hook": partial(
            collect_one_store_per_hook, model=model, dataset=dataset, exclude=exclude_tensor
        ),
        "SAELens multi-hook": partial(
            collect_multi_hook, model=model, dataset=dataset, exclude=exclude_tensor
        ),
    }


def max_relative_difference(a: SiteBatch, b: SiteBatch) -> float:
    """Largest |a - b| / max|a| over the sites: near 0 when both collected the same tensors."""
    return max(
        ((a[hook] - b[hook]).abs().max() / a[hook].abs().max().clamp_min(1e-30)).item()
        for hook in a
    )


def bench_collection(
    model: HookedTransformer, contexts: torch.Tensor, repeats: int
) -> list[dict[str, Any]]:
    methods = collectors(model, contexts)
    collect_ours(SITE_SETS[9], model, contexts[:CONTEXTS_PER_PASS], [])  # warm-up
    seconds: dict[tuple[int, str], list[float]] = {}
    cpu_seconds: dict[tuple[int, str], list[float]] = {}
    tokens: dict[tuple[int, str], int] = {}
    differences: dict[tuple[int, str], float] = {}
    for repeat in range(repeats):
        for k, specs in SITE_SETS.items():
            firsts = {}
            for name in SCHEDULE[repeat % 2]:
                elapsed, cpu, (tokens[k, name], firsts[name]) = timed(partial(methods[name], specs))
                seconds.setdefault((k, name), []).append(elapsed)
                cpu_seconds.setdefault((k, name), []).append(cpu)
                print(f"repeat {repeat}, {k} sites, {name}: {elapsed:.1f} s", flush=True)
            for name in methods:
                differences[k, name] = max_relative_difference(firsts["ours"], firsts[name])
    return [
        {
            "sites": k,
            "specs": SITE_SETS[k],
            "method": name,
            "tokens": tokens[k, name],
            "seconds": seconds[k, name],
            "cpu_seconds": cpu_seconds[k, name],
            "tokens_per_s": tokens[k, name] / statistics.median(seconds[k, name]),
            "max_relative_difference_to_ours": differences[k, name],
        }
        for k in SITE_SETS
        for name in methods
    ]


# --- cache read -------------------------------------------------------------------------------


def bench_reads(
    model: HookedTransformer, contexts: torch.Tensor, work: Path, repeats: int
) -> dict[str, Any]:
    exclude = special_token_ids(model)
    site = resolve_sites(model, [CACHE_SITE])[0]
    ours, theirs = work / "ours", work / "saelens"
    write_seconds = {
        "ours": timed(lambda: write_ours(ours, model, site, contexts, exclude))[0],
        "SAELens": timed(lambda: write_saelens(theirs, site, contexts))[0],
    }
    groups = readers(ours, theirs, model, site)
    cold = drop_page_cache()
    first = "cold" if cold else "first"
    seconds: dict[tuple[str, str], list[float]] = {}
    tokens: dict[str, int] = {}
    for repeat in range(repeats):
        for group in groups.values():
            for name in list(group) if repeat % 2 == 0 else list(reversed(group)):
                # Twice in a row: the first after emptying the page cache (when we may), then
                # warm.
                drop_page_cache()
                for state in (first, "warm"):
                    elapsed, _, tokens[name] = timed(group[name])
                    seconds.setdefault((name, state), []).append(elapsed)
                print(
                    f"repeat {repeat}, {name}: {seconds[name, first][-1]:.2f} s {first}, "
                    f"{seconds[name, 'warm'][-1]:.2f} s warm",
                    flush=True,
                )
    rows = [
        _read_row(comparison, name, state, tokens[name], seconds[name, state], site.d_in * 4)
        for comparison, group in groups.items()
        for state in ("warm", first)
        for name in group
    ]
    return {
        "site": site.hook_name,
        "d_in": site.d_in,
        "contexts": contexts.shape[0],
        "batch_size": READ_BATCH,
        "cold_reads": cold,
        "disk_bytes": {"ours": _dir_bytes(ours), "SAELens": _dir_bytes(theirs)},
        "write_seconds_one_run": write_seconds,
        "rows": rows,
    }


def _read_row(
    comparison: str, name: str, state: str, tokens: int, seconds: list[float], token_bytes: int
) -> dict[str, Any]:
    median = statistics.median(seconds)
    return {
        "comparison": comparison,
        "reader": name,
        "state": state,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / median,
        # Activation bytes delivered (float32), the same definition for both formats.
        "MB_per_s": tokens * token_bytes / 1e6 / median,
    }


def _dir_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


# --- report -----------------------------------------------------------------------------------


def print_collection(rows: list[dict[str, Any]]) -> None:
    print(
        "\n| sites | method | tokens | runs | median s (min-max) | CPU s | tokens/s | ours / this |"
    )
    print("|---|---|---|---|---|---|---|---|")
    ours = {row["sites"]: row["tokens_per_s"] for row in rows if row["method"] == "ours"}
    for row in rows:
        wall = row["seconds"]
        print(
            f"| {row['sites']} | {row['method']} | {row['tokens']} | {len(wall)} | "
            f"{statistics.median(wall):.1f} ({min(wall):.1f}-{max(wall):.1f}) | "
            f"{statistics.median(row['cpu_seconds']):.1f} | {row['tokens_per_s']:.0f} | "
            f"{ours[row['sites']] / row['tokens_per_s']:.2f} |"
        )


def print_reads(result: dict[str, Any]) -> None:
    print("\n| comparison | reader | read | tokens | median s | tokens/s | MB/s | ours / this |")
    print("|---|---|---|---|---|---|---|---|")
    reference: dict[tuple[str, str], float] = {}
    for row in result["rows"]:
        key = (row["comparison"], row["state"])
        reference.setdefault(key, row["tokens_per_s"])  # the first row of each is ours
        print(
            f"| {row['comparison']} | {row['reader']} | {row['state']} | {row['tokens']} | "
            f"{statistics.median(row['seconds']):.3f} | {row['tokens_per_s']:.0f} | "
            f"{row['MB_per_s']:.0f} | {reference[key] / row['tokens_per_s']:.2f} |"
        )
    writes = ", ".join(f"{k} {v:.0f} s" for k, v in result["write_seconds_one_run"].items())
    print(f"\nwriting the caches (one run each, not interleaved): {writes}")


def machine_info() -> dict[str, Any]:
    return {
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "load_average_at_start": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passes", type=int, default=1, help="forward passes per measurement")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--cache-contexts", type=int, default=768, help="768 x 128 = 98k tokens")
    parser.add_argument("--read-repeats", type=int, default=7)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 repeat, a 64-context cache (smaller than SAELens's shuffle buffer, "
        "which then re-reads it: its shuffled-read numbers mean nothing)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/collection_throughput.json")
    )
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.cache_contexts, args.read_repeats = 1, 64, 1

    # SAELens warns when a dataset has fewer rows than training tokens (extra epochs); the
    # stores here read each context exactly once.
    warnings.filterwarnings("ignore", message="The training dataset contains")
    started = time.perf_counter()
    info = machine_info()
    model = load_model()
    n_contexts = max(args.passes * CONTEXTS_PER_PASS, args.cache_contexts)
    corpus = load_token_corpus(
        model.tokenizer,
        None,
        context_size=CONTEXT_SIZE,
        train_tokens=n_contexts * CONTEXT_SIZE,
        held_out_tokens=CONTEXT_SIZE,
    )
    contexts = corpus.train
    collection = bench_collection(model, contexts[: args.passes * CONTEXTS_PER_PASS], args.repeats)
    with tempfile.TemporaryDirectory(prefix="collection_throughput_") as work:
        reads = bench_reads(model, contexts[: args.cache_contexts], Path(work), args.read_repeats)
    info["seconds_total"] = time.perf_counter() - started
    info["load_average_at_end"] = os.getloadavg()

    print_collection(collection)
    print_reads(reads)
    print(f"\nmachine: {info}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": info, "args": vars(args) | {"out": str(args.out)}}
    args.out.write_text(
        json.dumps(result | {"collection": collection, "cache_read": reads}, indent=1)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
