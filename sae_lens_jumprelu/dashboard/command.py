"""``sae-jumprelu dashboard SAE --out DIR``: load the SAE, its model and a dataset, build."""

import argparse
from dataclasses import dataclass
from pathlib import Path

from sae_lens_jumprelu.dashboard.build import Dashboard, DashboardConfig, build_dashboard


def parse_features(text: str) -> list[int]:
    """``"0-99"``, ``"3,7,12"`` or ``"0-9,42"`` as a sorted list without duplicates."""
    features: set[int] = set()
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high if dash else low)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"cannot read features {text!r}: write a range 0-99, a list 3,7,12 or both"
            ) from None
        if first < 0 or last < first:
            raise argparse.ArgumentTypeError(f"bad feature range {part.strip()!r} in {text!r}")
        features.update(range(first, last + 1))
    return sorted(features)


@dataclass(frozen=True)
class DashboardJob:
    """Everything ``sae-jumprelu dashboard`` can be told."""

    sae: str = ""
    """The SAE: a SAELens directory, a Gemma Scope params file, a dictionary_learning directory
    or a SAELens pretrained RELEASE/SAE_ID."""
    out: Path = Path("sae-jumprelu-dashboard")
    """Output directory (``index.html`` and one page per feature), written beside and renamed
    into place once complete."""
    model: str | None = None
    """TransformerLens model name; None: the SAE's metadata model_name, else the embedded
    gemma-3-270m."""
    dataset: str | None = None
    """HF dataset name or local text files; None: the embedded text."""
    tokens: int = 16_384
    """Tokens to gather the features' statistics and examples on."""
    context_size: int = 128
    """Tokens per context."""
    features: list[int] | None = None
    """Features to give pages, e.g. 0-99 or 3,7,12; None: the 100 most frequent and 20 random
    others."""
    examples: int = DashboardConfig.examples
    """Top-activating contexts per feature."""
    hook_name: str | None = None
    """Hook point of an SAE file that names none."""
    batch_size: int = 8
    """Contexts per forward pass."""
    device: str = "cpu"
    """Torch device of the model and the SAE (cpu, cuda, cuda:1, mps)."""
    dtype: str = "float32"
    """Dtype of the language model (the SAE keeps its own)."""
    seed: int = DashboardConfig.seed
    """Seed of the random features shown when ``features`` is not given."""
    overwrite: bool = False
    """Replace an existing ``out``."""

    def __post_init__(self) -> None:
        for name in ("tokens", "context_size", "examples", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")


def run_dashboard(job: DashboardJob) -> Dashboard:
    from sae_lens_jumprelu.analysis.hooked import (
        check_features,
        check_saes,
        hooked_sae_transformer,
        load_sae,
    )
    from sae_lens_jumprelu.atomic import check_destination
    from sae_lens_jumprelu.data.activations import special_token_ids
    from sae_lens_jumprelu.data.corpus import check_text_model, load_token_corpus

    check_destination(job.out, job.overwrite)  # before a minute of model loading
    sae = load_sae(job.sae, device=job.device, hook_name=job.hook_name)
    check_features(sae, job.features or [])  # before the model is loaded
    model_name = job.model or sae.cfg.metadata.model_name
    model = hooked_sae_transformer(model_name, device=job.device, dtype=job.dtype)
    check_saes(model, [sae])
    check_text_model(model, job.context_size)
    corpus = load_token_corpus(
        model.tokenizer,
        job.dataset,
        context_size=job.context_size,
        train_tokens=job.tokens,
        held_out_tokens=0,
    )
    config = DashboardConfig(features=job.features, examples=job.examples, seed=job.seed)
    return build_dashboard(
        model,
        sae,
        corpus.train.split(job.batch_size),
        job.out,
        config,
        exclude_token_ids=special_token_ids(model),
        source={
            "sae": str(job.sae),
            "model": model.cfg.model_name,
            "dataset": corpus.source,
        },
        overwrite=job.overwrite,
    )
