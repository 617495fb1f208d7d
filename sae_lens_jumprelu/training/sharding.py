"""Which contexts each rank runs through the model, and (SAE-parallel) the all-to-all that
hands each rank every rank's activations at the hooks of its SAEs.

- Data-parallel: the contexts are read in rounds of ``world x contexts_per_pass``; rank r runs the
  r-th slice of each round, and its SAE replicas train on what its own pass produced.
- SAE-parallel: one round is one pass of ``contexts_per_pass`` contexts, as in one process; rank r
  runs the r-th slice, then an all-to-all gives every rank, at the hooks of the SAEs it owns, all
  ranks' activations in rank order: the activations that one process's pass would produce, in the
  same order, so the (seeded) shuffle buffer after it yields each SAE the batches it would get
  alone.

A ``ContextPosition`` records how far the reading has got, as a context index independent of the
number of ranks, so a checkpoint resumes on any number.
"""

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from jaxtyping import Int
from torch import Tensor
from transformer_lens import HookedTransformer

from sae_lens_jumprelu.data.activations import SiteBatch, site_activations
from sae_lens_jumprelu.data.sites import Site
from sae_lens_jumprelu.progress import progress_bar
from sae_lens_jumprelu.training.distributed import Dist


@dataclass
class ContextPosition:
    """Contexts before this index have been read (by some rank); resuming starts here."""

    next_context: int = 0


def assign_round_robin(names: list[str], world_size: int) -> dict[str, int]:
    """SAE name -> the rank that trains it: the i-th SAE goes to rank i mod world."""
    return {name: i % world_size for i, name in enumerate(names)}


def data_parallel_passes(
    model: HookedTransformer,
    sites: list[Site],
    contexts: Int[Tensor, "n_contexts context"],
    dist: Dist,
    position: ContextPosition,
    *,
    contexts_per_pass: int = 16,
    exclude_token_ids: Iterable[int] = (),
    progress: str | None = "model forward passes",
) -> Iterator[SiteBatch]:
    """This rank's passes: its slice of every round of ``world x contexts_per_pass`` contexts
    from ``position.next_context`` on."""
    exclude = list(exclude_token_ids)
    round_size = dist.world_size * contexts_per_pass
    for start in _rounds(contexts.shape[0], position.next_context, round_size, dist, progress):
        mine = start + dist.rank * contexts_per_pass
        chunk = contexts[mine : min(mine + contexts_per_pass, start + round_size)]
        position.next_context = min(start + round_size, contexts.shape[0])
        if chunk.shape[0] > 0:
            yield site_activations(model, sites, chunk, exclude)[0]


def sae_parallel_passes(
    model: HookedTransformer,
    sites: list[Site],
    contexts: Int[Tensor, "n_contexts context"],
    dist: Dist,
    position: ContextPosition,
    needed: list[list[str]],
    *,
    contexts_per_pass: int = 16,
    exclude_token_ids: Iterable[int] = (),
    progress: str | None = "model forward passes",
) -> Iterator[SiteBatch]:
    """One process's passes, each computed a slice per rank and exchanged: rank r gets the
    hooks ``needed[r]``."""
    exclude = list(exclude_token_ids)
    per_rank = math.ceil(contexts_per_pass / dist.world_size)
    for start in _rounds(
        contexts.shape[0], position.next_context, contexts_per_pass, dist, progress
    ):
        end = min(start + contexts_per_pass, contexts.shape[0])
        mine = min(start + dist.rank * per_rank, end)
        chunk = contexts[mine : min(mine + per_rank, end)]
        position.next_context = end
        if chunk.shape[0] > 0:
            local = site_activations(model, sites, chunk, exclude)[0]
        else:  # the last pass may leave a rank nothing; it still takes part in the exchange
            dtype = model.cfg.dtype
            local = {s.hook_name: torch.empty(0, s.d_in, dtype=dtype) for s in sites}
        yield exchange(local, {s.hook_name: s.d_in for s in sites}, needed, dist)


def exchange(
    local: SiteBatch, d_in: dict[str, int], needed: list[list[str]], dist: Dist
) -> SiteBatch:
    """All-to-all: every rank sends rank r its rows at the hooks ``needed[r]``; returns, for
    ``needed[dist.rank]``, all ranks' rows concatenated in rank order."""
    mine = needed[dist.rank]
    if not dist.active:
        return {hook: local[hook] for hook in mine}
    n_local = next(iter(local.values())).shape[0]
    rows = _all_gather_int(n_local, dist)  # tokens per rank: excluded tokens make them differ
    reference = next(iter(local.values()))
    send = torch.cat(
        [local[hook].reshape(-1) for dest in range(dist.world_size) for hook in needed[dest]]
        or [reference.new_empty(0)]
    )
    width = sum(d_in[hook] for hook in mine)
    received = reference.new_empty(sum(rows) * width)
    with dist.collective("all_to_all"):
        tdist.all_to_all_single(
            received,
            send.contiguous(),
            output_split_sizes=[n * width for n in rows],
            input_split_sizes=[n_local * sum(d_in[h] for h in needed[r]) for r in range(len(rows))],
        )
    parts: dict[str, list[Tensor]] = {hook: [] for hook in mine}
    offset = 0
    for n in rows:  # sender by sender, in rank order: the order of one process's pass
        for hook in mine:
            size = n * d_in[hook]
            parts[hook].append(received[offset : offset + size].view(n, d_in[hook]))
            offset += size
    return {hook: torch.cat(chunks) for hook, chunks in parts.items()}


def _all_gather_int(value: int, dist: Dist) -> list[int]:
    gathered = [torch.zeros(1, dtype=torch.int64) for _ in range(dist.world_size)]
    with dist.collective("all_gather"):
        tdist.all_gather(gathered, torch.tensor([value], dtype=torch.int64))
    return [int(t.item()) for t in gathered]


def _rounds(
    n_contexts: int, start: int, round_size: int, dist: Dist, progress: str | None
) -> Iterable[int]:
    starts = range(start, n_contexts, round_size)
    return progress_bar(progress, dist.is_main, iterable=starts, unit="pass")
