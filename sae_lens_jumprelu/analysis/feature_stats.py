"""Per-feature statistics over a stream of contexts in bounded memory: firing frequency,
maximum, a log-scale activation histogram and the top-activating contexts with a window of
tokens and activations around each maximum.

Each batch's candidates are merged into a running ``torch.topk`` per feature, so memory is
``d_sae x k x window`` whatever the number of tokens; no activation is kept past its batch.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from sae_lens import SAE, HookedSAETransformer
from torch import Tensor

from sae_lens_jumprelu.analysis.hooked import attached, check_features
from sae_lens_jumprelu.data.sites import resolve_sites, stop_at_layer
from sae_lens_jumprelu.progress import progress_bar

# Histogram bins: quarter octaves of the activation from 2^-16 to 2^16 (JumpReLU activations
# start at the feature's threshold, so a log scale shows where each feature's mass sits).
HIST_LOG2_RANGE = (-16.0, 16.0)
HIST_BINS_PER_OCTAVE = 4


@dataclass(frozen=True)
class FeatureStats:
    """Statistics of the tracked features of one SAE; row j describes ``features[j]``."""

    hook_name: str
    """The hook the SAE reads."""
    features: Int[Tensor, " n"]
    """The SAE feature index of each row."""
    n_tokens: int
    """Tokens seen (special tokens excluded)."""
    frequency: Float[Tensor, " n"]
    """Fraction of the tokens on which the feature fired."""
    max_activation: Float[Tensor, " n"]
    """Largest activation seen (0: never fired)."""
    top_values: Float[Tensor, "n k"]
    """The k largest per-context maxima, descending (0 where fewer contexts fired)."""
    top_contexts: Int[Tensor, "n k"]
    """Index of each top context in the stream (-1: none)."""
    top_positions: Int[Tensor, "n k"]
    """Position of the maximum in its context."""
    window_tokens: Int[Tensor, "n k window"]
    """Token ids around the maximum (-1 beyond the context's edges)."""
    window_acts: Float[Tensor, "n k window"]
    """The feature's activations on those tokens."""
    window_before: int
    """Tokens before the maximum in each window (the maximum is at this index)."""
    histogram: Int[Tensor, "n bins"]
    """Counts of nonzero activations per log2 bin (edges: ``bin_edges``)."""

    @property
    def bin_edges(self) -> Float[Tensor, " edges"]:
        low, high = HIST_LOG2_RANGE
        n = int((high - low) * HIST_BINS_PER_OCTAVE)
        return torch.exp2(torch.linspace(low, high, n + 1))


def collect_feature_stats(
    model: HookedSAETransformer,
    sae: SAE[Any],
    contexts: Iterable[Int[Tensor, "_batch context"]],
    *,
    features: Sequence[int] | None = None,
    k: int = 10,
    window: tuple[int, int] = (12, 4),
    exclude_token_ids: Sequence[int] = (),
    progress: str | None = "feature statistics",
) -> FeatureStats:
    """Stream batches of contexts through the model with ``sae`` attached and gather statistics
    for ``features`` (default: all). Contexts are numbered in stream order."""
    hook = sae.cfg.metadata.hook_name
    tracked = torch.tensor(
        check_features(sae, range(sae.cfg.d_sae) if features is None else features),
        dtype=torch.long,
    )
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    state = _State(len(tracked), k, sum(window) + 1)
    (site,) = resolve_sites(model, [hook])
    exclude = torch.tensor(list(exclude_token_ids), dtype=torch.long)
    acts_name = f"{hook}.hook_sae_acts_post"
    offset = 0
    with attached(model, sae, use_error_term=True), torch.no_grad():
        for tokens in progress_bar(progress, iterable=contexts, unit="batch"):
            _, cache = model.run_with_cache(
                tokens.to(model.cfg.device),
                names_filter=[acts_name],
                stop_at_layer=stop_at_layer([site]),
            )
            keep = ~torch.isin(tokens, exclude)
            acts = cache[acts_name][..., tracked.to(cache[acts_name].device)].float().cpu()
            state.add(acts * keep.unsqueeze(-1), tokens.cpu(), keep, offset, window[0])
            offset += tokens.shape[0]
    if offset == 0:
        raise ValueError("no contexts: the dataset gave no tokens")
    return state.finish(hook, tracked, window[0])


class _State:
    """The running statistics (a class only to keep ``collect_feature_stats`` short)."""

    def __init__(self, n: int, k: int, width: int) -> None:
        low, high = HIST_LOG2_RANGE
        self.n_bins = int((high - low) * HIST_BINS_PER_OCTAVE)
        self.k, self.width, self.n_tokens = k, width, 0
        self.fired = torch.zeros(n, dtype=torch.long)
        self.histogram = torch.zeros(n * self.n_bins, dtype=torch.long)
        self.values = torch.zeros(n, k)
        self.contexts = torch.full((n, k), -1, dtype=torch.long)
        self.positions = torch.zeros((n, k), dtype=torch.long)
        self.tokens = torch.full((n, k, width), -1, dtype=torch.long)
        self.acts = torch.zeros((n, k, width))

    def add(
        self,
        acts: Float[Tensor, "batch pos n"],
        tokens: Int[Tensor, "batch pos"],
        keep: torch.Tensor,
        offset: int,
        before: int,
    ) -> None:
        self.n_tokens += int(keep.sum())
        self.fired += (acts > 0).sum(dim=(0, 1))
        self._add_histogram(acts)
        batch, pos, n = acts.shape
        context_max, context_pos = acts.max(dim=1)  # [batch, n]
        # Window around each context's maximum: [batch, n, width] positions into the context.
        window_pos = context_pos.unsqueeze(-1) + torch.arange(self.width) - before
        inside = (window_pos >= 0) & (window_pos < pos)
        window_pos = window_pos.clamp(0, pos - 1)
        # acts.transpose(1, 2): [batch, n, pos], gathered along pos.
        window_acts = acts.transpose(1, 2).gather(2, window_pos) * inside
        window_tokens = tokens.gather(1, window_pos.reshape(batch, -1)).reshape(window_pos.shape)
        window_tokens = window_tokens.masked_fill(~inside, -1)
        # Merge the stored top-k ([n, k]) with this batch's candidates ([n, batch]).
        values = torch.cat([self.values, context_max.T], dim=1)
        best = values.topk(self.k, dim=1).indices  # [n, k] into the concatenation
        context_ids = torch.arange(offset, offset + batch).expand(n, batch)
        self.values = values.gather(1, best)
        self.contexts = torch.cat([self.contexts, context_ids], 1).gather(1, best)
        self.positions = torch.cat([self.positions, context_pos.T], 1).gather(1, best)
        best_w = best.unsqueeze(-1).expand(n, self.k, self.width)
        self.tokens = torch.cat([self.tokens, window_tokens.transpose(0, 1)], 1).gather(1, best_w)
        self.acts = torch.cat([self.acts, window_acts.transpose(0, 1)], 1).gather(1, best_w)

    def _add_histogram(self, acts: Float[Tensor, "batch pos n"]) -> None:
        nonzero = acts > 0
        feature = torch.arange(acts.shape[-1]).expand_as(acts)[nonzero]
        low, _ = HIST_LOG2_RANGE
        bins = ((torch.log2(acts[nonzero]) - low) * HIST_BINS_PER_OCTAVE).floor().long()
        flat = feature * self.n_bins + bins.clamp(0, self.n_bins - 1)
        self.histogram += torch.bincount(flat, minlength=self.histogram.numel())

    def finish(self, hook: str, tracked: Tensor, before: int) -> FeatureStats:
        empty = self.values <= 0  # a context that never fired is no example
        return FeatureStats(
            hook_name=hook,
            features=tracked,
            n_tokens=self.n_tokens,
            frequency=self.fired.float() / max(1, self.n_tokens),
            max_activation=self.values[:, 0].clone(),
            top_values=self.values,
            top_contexts=self.contexts.masked_fill(empty, -1),
            top_positions=self.positions.masked_fill(empty, 0),
            window_tokens=self.tokens.masked_fill(empty.unsqueeze(-1), -1),
            window_acts=self.acts,
            window_before=before,
            histogram=self.histogram.reshape(-1, self.n_bins),
        )
