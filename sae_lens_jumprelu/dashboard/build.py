"""Build a feature dashboard: statistics over a dataset, logit effects, static pages.

One streamed pass gathers every tracked feature's frequency, histogram and top examples
(``analysis.feature_stats``); the pages are written into a temporary directory and renamed into
place, so DIR holds either a complete site or nothing new.
"""

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from sae_lens import SAE, HookedSAETransformer
from torch import Tensor

from sae_lens_jumprelu.analysis.feature_stats import FeatureStats, collect_feature_stats
from sae_lens_jumprelu.analysis.logit_effects import LogitEffects, logit_effects
from sae_lens_jumprelu.atomic import write_dir_atomic
from sae_lens_jumprelu.dashboard.html import (
    Example,
    FeaturePage,
    IndexRow,
    page_name,
    render_feature,
    render_index,
)


@dataclass(frozen=True)
class DashboardConfig:
    """What the dashboard shows."""

    features: Sequence[int] | None = None
    """Features to give pages; None: the ``n_frequent`` most frequent plus ``n_random`` others."""
    n_frequent: int = 100
    """Default selection: this many of the most frequently firing features."""
    n_random: int = 20
    """Default selection: this many more, drawn at random from the other features that fired."""
    examples: int = 10
    """Top-activating contexts per feature."""
    window: tuple[int, int] = (12, 4)
    """Tokens shown before and after each example's maximum."""
    logits: int = 10
    """Promoted and suppressed tokens per feature."""
    seed: int = 0
    """Seed of the random part of the default selection."""

    def __post_init__(self) -> None:
        for name in ("n_frequent", "n_random", "examples", "logits"):
            if getattr(self, name) < 0 or (name == "examples" and self.examples == 0):
                raise ValueError(
                    f"DashboardConfig.{name} must be positive, got {getattr(self, name)}"
                )


@dataclass(frozen=True)
class Dashboard:
    """What ``build_dashboard`` wrote."""

    out: Path
    """The directory; ``out / "index.html"`` is the entry page."""
    features: list[int]
    """Features with a page, in index order."""
    n_tokens: int
    """Tokens the statistics are over."""
    summary: dict[str, Any] = field(repr=False)
    """The contents of ``dashboard.json``."""


def choose_features(frequency: torch.Tensor, config: DashboardConfig) -> list[int]:
    """The most frequent features, then a seeded random sample of the others that fired."""
    order = frequency.argsort(descending=True, stable=True)
    frequent = [int(i) for i in order[: config.n_frequent] if frequency[i] > 0]
    rest = torch.tensor([int(i) for i in order[config.n_frequent :] if frequency[i] > 0])
    generator = torch.Generator().manual_seed(config.seed)
    pick = rest[torch.randperm(len(rest), generator=generator)[: config.n_random]]
    return frequent + sorted(int(i) for i in pick)


def build_dashboard(
    model: HookedSAETransformer,
    sae: SAE[Any],
    contexts: Iterable[Int[Tensor, "_batch context"]],
    out: Path,
    config: DashboardConfig = DashboardConfig(),
    *,
    exclude_token_ids: Sequence[int] = (),
    source: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Dashboard:
    """Write the dashboard of ``sae`` over ``contexts`` to ``out`` (index.html + one page per
    chosen feature + ``features.csv`` + ``dashboard.json``). ``source`` (SAE path, model,
    dataset...) is recorded in ``dashboard.json`` and shown on the index."""
    out = Path(out)
    stats = collect_feature_stats(
        model,
        sae,
        contexts,
        features=config.features,
        k=config.examples,
        window=config.window,
        exclude_token_ids=exclude_token_ids,
    )
    rows = (
        list(range(len(stats.features)))
        if config.features is not None
        else choose_features(stats.frequency, config)
    )
    chosen = [int(stats.features[r]) for r in rows]
    effects = logit_effects(model, sae, chosen, k=config.logits) if chosen else None
    names = _TokenNames(model)
    pages = _linked(
        [_feature_page(stats, effects, sae, row, j, names) for j, row in enumerate(rows)]
    )
    summary = {
        "hook_name": stats.hook_name,
        "d_sae": sae.cfg.d_sae,
        "n_tokens": stats.n_tokens,
        "config": asdict(config),
        "source": source or {},
        "features": [
            {
                "feature": page.index,
                "frequency": page.frequency,
                "max_activation": page.max_activation,
                "top_promoted": page.promoted[0][0] if page.promoted else None,
            }
            for page in pages
        ],
    }

    description = [
        f"SAE on {stats.hook_name}, {sae.cfg.d_sae} features; {len(pages)} shown",
        f"statistics over {stats.n_tokens} tokens",
        *(f"{key}: {value}" for key, value in (source or {}).items()),
    ]
    write_dir_atomic(
        out,
        lambda directory: _write_site(directory, pages, description, summary),
        overwrite=overwrite,
    )
    return Dashboard(out=out, features=chosen, n_tokens=stats.n_tokens, summary=summary)


def _linked(pages: list[FeaturePage]) -> list[FeaturePage]:
    """The pages, each linking to the previous and the next one."""
    return [
        replace(
            page,
            previous=page_name(pages[j - 1].index) if j > 0 else None,
            next=page_name(pages[j + 1].index) if j + 1 < len(pages) else None,
        )
        for j, page in enumerate(pages)
    ]


def _write_site(
    directory: Path, pages: list[FeaturePage], description: list[str], summary: dict[str, Any]
) -> None:
    """Every feature page, the index, ``dashboard.json`` and ``features.csv`` into
    ``directory``."""
    for page in pages:
        (directory / page_name(page.index)).write_text(render_feature(page), encoding="utf-8")
    index_rows = [
        IndexRow(p.index, p.frequency, p.max_activation, p.promoted[0][0] if p.promoted else None)
        for p in pages
    ]
    (directory / "index.html").write_text(
        render_index("Feature dashboard", description, index_rows), encoding="utf-8"
    )
    (directory / "dashboard.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    with open(directory / "features.csv", "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(summary["features"][0]) if pages else [])
        writer.writeheader()
        writer.writerows(summary["features"])


class _TokenNames:
    """Token id -> display string (decoded text; ``<id>`` when the model has no tokenizer)."""

    def __init__(self, model: HookedSAETransformer) -> None:
        self.tokenizer = model.tokenizer

    def __call__(self, ids: Sequence[int]) -> list[str]:
        if self.tokenizer is None:
            return [f"<{i}>" for i in ids]
        return [text.replace("\n", "↵") for text in self.tokenizer.batch_decode([[i] for i in ids])]


def _feature_page(
    stats: FeatureStats,
    effects: LogitEffects | None,
    sae: SAE[Any],
    row: int,
    j: int,
    names: _TokenNames,
) -> FeaturePage:
    feature = int(stats.features[row])
    examples = []
    for slot in range(stats.top_values.shape[1]):
        if stats.top_contexts[row, slot] < 0:
            break
        tokens = stats.window_tokens[row, slot]
        inside = tokens >= 0
        first = int(inside.nonzero()[0])  # windows are clipped only at the context's start/end
        examples.append(
            Example(
                tokens=names(tokens[inside].tolist()),
                acts=stats.window_acts[row, slot][inside].tolist(),
                max_index=stats.window_before - first,
                value=float(stats.top_values[row, slot]),
                context=int(stats.top_contexts[row, slot]),
            )
        )
    edges = stats.bin_edges.tolist()
    counts = stats.histogram[row]
    nonzero = counts.nonzero().flatten()
    histogram = (
        [
            (edges[b], edges[b + 1], int(counts[b]))
            for b in range(int(nonzero[0]), int(nonzero[-1]) + 1)
        ]
        if len(nonzero)
        else []
    )

    def logit_rows(ids: Tensor, values: Tensor) -> list[tuple[str, float]]:
        return list(zip(names(ids.tolist()), values.tolist(), strict=True))

    return FeaturePage(
        index=feature,
        hook_name=stats.hook_name,
        frequency=float(stats.frequency[row]),
        max_activation=float(stats.max_activation[row]),
        threshold=float(sae.threshold[feature].detach()) if hasattr(sae, "threshold") else 0.0,
        examples=examples,
        histogram=histogram,
        promoted=None
        if effects is None
        else logit_rows(effects.promoted_ids[j], effects.promoted_values[j]),
        suppressed=None
        if effects is None
        else logit_rows(effects.suppressed_ids[j], effects.suppressed_values[j]),
    )
