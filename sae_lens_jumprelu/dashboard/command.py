"""``sae-jumprelu dashboard SAE --out DIR``: load the SAE, its model and a dataset, build."""

import argparse
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


def add_dashboard_flags(sub: argparse.ArgumentParser) -> None:
    defaults = DashboardConfig()
    sub.add_argument("sae", type=Path, help="SAELens directory, Gemma Scope params file, ...")
    sub.add_argument("--out", type=Path, required=True, help="output directory")
    sub.add_argument(
        "--model",
        default=None,
        help="TransformerLens model name (default: the SAE's model_name, else the embedded "
        "gemma-3-270m)",
    )
    sub.add_argument(
        "--dataset", default=None, help="HF dataset or local text files (default: embedded text)"
    )
    sub.add_argument("--tokens", type=int, default=16_384, help="tokens to gather statistics on")
    sub.add_argument("--context-size", type=int, default=128)
    sub.add_argument(
        "--features",
        type=parse_features,
        default=None,
        help=f"features to show, e.g. 0-99 or 3,7,12 (default: the {defaults.n_frequent} most "
        f"frequent and {defaults.n_random} random others)",
    )
    sub.add_argument("--examples", type=int, default=defaults.examples, help="per feature")
    sub.add_argument("--hook-name", default=None, help="hook of an SAE file that names none")
    sub.add_argument("--batch-size", type=int, default=8, help="contexts per forward pass")
    sub.add_argument("--device", default="cpu")
    sub.add_argument("--seed", type=int, default=defaults.seed)
    sub.add_argument("--overwrite", action="store_true", help="replace an existing DIR")


def run_dashboard(args: argparse.Namespace) -> Dashboard:
    from sae_lens_jumprelu.analysis.hooked import (
        check_features,
        check_saes,
        hooked_sae_transformer,
        load_sae,
    )
    from sae_lens_jumprelu.atomic import check_destination
    from sae_lens_jumprelu.data.activations import special_token_ids
    from sae_lens_jumprelu.data.corpus import check_text_model, load_token_corpus

    for name in ("tokens", "context_size", "examples", "batch_size"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    check_destination(args.out, args.overwrite)  # before a minute of model loading
    sae = load_sae(args.sae, device=args.device, hook_name=args.hook_name)
    check_features(sae, args.features or [])  # before the model is loaded
    model_name = args.model or sae.cfg.metadata.model_name
    model = hooked_sae_transformer(model_name, device=args.device)
    check_saes(model, [sae])
    check_text_model(model, args.context_size)
    corpus = load_token_corpus(
        model.tokenizer,
        args.dataset,
        context_size=args.context_size,
        train_tokens=args.tokens,
        held_out_tokens=0,
    )
    config = DashboardConfig(features=args.features, examples=args.examples, seed=args.seed)
    return build_dashboard(
        model,
        sae,
        corpus.train.split(args.batch_size),
        args.out,
        config,
        exclude_token_ids=special_token_ids(model),
        source={
            "sae": str(args.sae),
            "model": model.cfg.model_name,
            "dataset": corpus.source,
        },
        overwrite=args.overwrite,
    )
