"""Activations at many sites from one forward pass, special tokens dropped, shuffled for training.

The forward pass stops after the deepest requested block; shuffling is SAELens's mixing buffer
(``multi_hook_concat_split_iter``: one permutation shared by every hook, so a batch holds the
same tokens at every site).
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, islice

import torch
from jaxtyping import Float, Int
from sae_lens.training.mixing_buffer import multi_hook_concat_split_iter
from sae_lens.util import get_special_token_ids
from torch import Tensor
from transformer_lens import HookedTransformer

from sae_lens_jumprelu.data.sites import Site, stop_at_layer
from sae_lens_jumprelu.progress import progress_bar

SiteBatch = dict[str, Tensor]
"""Hook name -> activations ``[n_tokens, d_in]``; every hook holds the same tokens in order."""


def special_token_ids(model: HookedTransformer) -> list[int]:
    """BOS, EOS, pad...: excluded from training and metrics (the paper drops BOS; its norm is
    hundreds of times a text token's)."""
    return [] if model.tokenizer is None else sorted(get_special_token_ids(model.tokenizer))


@torch.no_grad()
def site_activations(
    model: HookedTransformer,
    sites: list[Site],
    tokens: Int[Tensor, "batch context"],
    exclude_token_ids: Iterable[int] = (),
) -> tuple[SiteBatch, Int[Tensor, " n_kept"]]:
    """One forward pass; activations flattened to ``[tokens, d_in]`` (hook_z: heads
    concatenated) with excluded tokens removed, and the ids of the tokens kept."""
    if tokens.shape[1] > model.cfg.n_ctx:
        raise ValueError(
            f"contexts of {tokens.shape[1]} tokens are longer than {model.cfg.model_name}'s "
            f"{model.cfg.n_ctx}: use a context size <= {model.cfg.n_ctx}"
        )
    hook_names = [site.hook_name for site in sites]
    _, cache = model.run_with_cache(
        tokens.to(model.cfg.device), names_filter=hook_names, stop_at_layer=stop_at_layer(sites)
    )
    flat_tokens = tokens.reshape(-1)
    keep = ~torch.isin(flat_tokens, torch.tensor(list(exclude_token_ids), dtype=torch.long))
    batch = {
        site.hook_name: cache[site.hook_name].reshape(flat_tokens.shape[0], site.d_in)[
            keep.to(cache[site.hook_name].device)
        ]
        for site in sites
    }
    return batch, flat_tokens[keep]


def iter_site_activations(
    model: HookedTransformer,
    sites: list[Site],
    contexts: Int[Tensor, "n_contexts context"],
    *,
    contexts_per_pass: int = 16,
    exclude_token_ids: Iterable[int] = (),
    progress: str | None = "collecting activations",
) -> Iterator[SiteBatch]:
    """``site_activations`` over ``contexts`` in order, ``contexts_per_pass`` at a time."""
    exclude = list(exclude_token_ids)
    starts = range(0, contexts.shape[0], contexts_per_pass)
    for start in progress_bar(progress, iterable=starts, unit="pass"):
        batch, _ = site_activations(
            model, sites, contexts[start : start + contexts_per_pass], exclude
        )
        yield batch


def shuffled_batches(
    batches: Iterator[SiteBatch], hook_names: list[str], batch_size: int, buffer_tokens: int
) -> Iterator[SiteBatch]:
    """Fixed-size batches drawn from a shuffle buffer of ``buffer_tokens`` (SAELens's)."""
    return multi_hook_concat_split_iter(
        buffer_size=max(buffer_tokens, batch_size),
        batch_size=batch_size,
        activations_loader=batches,
        hook_names=hook_names,
    )


def peek(
    batches: Iterator[SiteBatch], n_batches: int
) -> tuple[list[SiteBatch], Iterator[SiteBatch]]:
    """The first ``n_batches``, and the stream with them still in it."""
    head = list(islice(batches, n_batches))
    if not head:
        raise ValueError(
            "no full batch of activations to train on: the text or cache holds fewer tokens "
            "than one --batch-size (after special tokens are dropped); give more --tokens or a "
            "smaller --batch-size"
        )
    return head, chain(head, batches)


def peek_mean_squared_norms(
    batches: Iterator[SiteBatch], n_batches: int
) -> tuple[dict[str, float], Iterator[SiteBatch]]:
    """E||x||^2 per hook over the first ``n_batches``, and the stream with them still in it."""
    head, stream = peek(batches, n_batches)
    return {hook: mean_squared_norm([batch[hook] for batch in head]) for hook in head[0]}, stream


@dataclass(frozen=True)
class StreamStatistics:
    """Of the first training batches at one hook; they set every SAE's normalisation."""

    mean: Float[Tensor, " d_in"]
    mean_norm: float
    """E||x||; SAELens scales inputs by sqrt(d_in) / E||x||."""
    mean_squared_norm: float
    """E||x||^2; ours scales inputs by 1 / sqrt(E||x||^2)."""

    @classmethod
    def of(cls, x: Float[Tensor, "n ..."]) -> "StreamStatistics":
        x = x.reshape(x.shape[0], -1).double()
        norms = x.norm(dim=-1)
        return cls(x.mean(dim=0).float(), norms.mean().item(), norms.pow(2).mean().item())


def mean_squared_norm(parts: list[Float[Tensor, "_ d"]]) -> float:
    total = sum(part.float().pow(2).sum().item() for part in parts)
    return total / max(1, sum(part.shape[0] for part in parts))
