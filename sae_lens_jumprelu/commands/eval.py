"""``sae-jumprelu eval``: the paper's metrics for any SAE on a language model.

The SAE is anything ``sae_source.load_sae`` reads; its SAELens metadata (model, hook, dataset,
context size, BOS) picks the defaults and flags override them. Metrics are ``evals.evaluate_saes``,
the same code ``train`` evaluates with; the report is ``metrics.json`` (metrics at top level),
``metrics.md``, ``feature_frequency.csv`` and two PNGs.
"""

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jaxtyping import Int
from sae_lens import SAE
from torch import Tensor
from transformer_lens import HookedTransformer

from sae_lens_jumprelu.atomic import prepare_output, staged_dir, write_text_atomic
from sae_lens_jumprelu.data.activations import special_token_ids
from sae_lens_jumprelu.data.corpus import (
    EMBEDDED_CORPUS,
    CorpusError,
    check_dataset,
    check_text_model,
    load_eval_contexts,
)
from sae_lens_jumprelu.data.models import EMBEDDED_MODEL, check_device, is_embedded, load_model
from sae_lens_jumprelu.data.sites import resolve_sites
from sae_lens_jumprelu.evals import SAEEvaluation, check_compatible, evaluate_saes, markdown_table
from sae_lens_jumprelu.plots import plot_feature_frequencies, plot_l0_histograms
from sae_lens_jumprelu.sae_source import LoadedSAE, load_sae

DEFAULT_CONTEXT_SIZE = 128


@dataclass(frozen=True)
class EvalJob:
    """Everything ``sae-jumprelu eval`` can be told."""

    sae: str = ""
    """The SAE: a SAELens directory, a Gemma Scope params file, a dictionary_learning directory
    or a SAELens pretrained RELEASE/SAE_ID."""
    model: str | None = None
    """TransformerLens model name; None: the SAE's metadata model_name, else the embedded
    gemma-3-270m."""
    dataset: str | None = None
    """HF dataset name or local text/JSONL/parquet file or directory; None: the SAE's metadata
    dataset_path, else the embedded text. The dataset the SAE was trained on (by its metadata)
    is read through its held-out split; any other is read from its first document."""
    tokens: int = 4096
    """Tokens to read, rounded up to whole contexts (special tokens count here but are left out
    of every metric)."""
    hook: str | None = None
    """Hook name or site (resid:6, attn:6, mlp:6) the SAE reads; None: its metadata hook_name."""
    context_size: int | None = None
    """Tokens per context; None: the SAE's metadata context_size, else 128."""
    out: Path = Path("sae-jumprelu-eval")
    """Output directory, written beside and renamed into place once complete."""
    overwrite: bool = False
    """Replace an existing ``out``; without it an existing one is refused before loading."""
    device: str = "cpu"
    """Torch device of the model and the SAE (cpu, cuda, cuda:1, mps)."""
    dtype: str = "float32"
    """Dtype of the language model (the SAE keeps its own)."""
    exclude_special_tokens: bool = True
    """Leave BOS/EOS/pad (and any ids the metadata lists) out of the metrics, as the paper does."""
    zero_ablation: bool = True
    """Also run with the activation zeroed, for CE-loss-recovered (one more forward pass)."""

    def __post_init__(self) -> None:
        # The device and the dataset are checked against this machine when the eval runs.
        if not self.tokens > 0:
            raise ValueError(f"--tokens must be positive, got {self.tokens}")
        if self.context_size is not None and not self.context_size > 0:
            raise ValueError(f"--context-size must be positive, got {self.context_size}")


@dataclass(frozen=True)
class EvalSettings:
    """What an eval runs on once metadata defaults and flags are combined."""

    model: str
    """Model name (``gemma-3-270m`` for the embedded one)."""
    dataset: str
    """Dataset name or path (``embedded`` for the embedded text)."""
    held_out: bool
    """True: only the documents ``train`` holds out are read."""
    context_size: int
    prepend_bos: bool
    hook: str | None
    """Hook name or site spec; None when neither the flag nor the metadata gives one."""
    origin: dict[str, str] = field(default_factory=dict)
    """Setting -> "flag", "metadata" or "default", for the report and error messages."""


@dataclass
class EvalResult:
    evaluation: SAEEvaluation
    settings: EvalSettings
    out: Path
    files: dict[str, Path]
    """What was written: metrics.json, metrics.md, feature_frequency.csv and the PNGs."""


def resolve_settings(job: EvalJob, sae: SAE[Any]) -> EvalSettings:
    """Flags first, then the SAE's metadata, then the embedded defaults."""
    meta = sae.cfg.metadata
    origin: dict[str, str] = {}

    def pick(name: str, flag: Any, from_meta: Any, default: Any) -> Any:
        for source, value in (("flag", flag), ("metadata", from_meta)):
            if value is not None and value != "":
                origin[name] = source
                return value
        origin[name] = "default"
        return default

    model = pick("model", job.model, getattr(meta, "model_name", None), EMBEDDED_MODEL)
    trained_on = getattr(meta, "dataset_path", None)
    dataset = pick("dataset", job.dataset, trained_on, EMBEDDED_CORPUS)
    context_size = pick(
        "context_size", job.context_size, getattr(meta, "context_size", None), DEFAULT_CONTEXT_SIZE
    )
    hook = pick("hook", job.hook, getattr(meta, "hook_name", None), None)
    prepend_bos = getattr(meta, "prepend_bos", None)
    return EvalSettings(
        model=EMBEDDED_MODEL if is_embedded(model) else model,
        dataset=dataset,
        held_out=origin["dataset"] != "flag" or dataset == trained_on,
        context_size=int(context_size),
        prepend_bos=prepend_bos is not False,
        hook=hook,
        origin=origin,
    )


def run_eval(job: EvalJob) -> EvalResult:
    check_device(job.device)
    check_dataset(job.dataset)
    prepare_output(job.out, job.overwrite)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    loaded = load_sae(job.sae, device=job.device)
    settings = resolve_settings(job, loaded.sae)
    if settings.hook is None:
        raise ValueError(
            f"{job.sae} ({loaded.source_format}) does not say which hook it reads: pass --hook, "
            "e.g. --hook resid:20 or --hook blocks.20.hook_resid_post"
        )
    model = _load_model(settings, job)
    hook_name = _attach_hook(model, loaded, settings.hook)
    seconds["load"] = time.perf_counter() - started
    contexts = _contexts(model, settings, job.tokens)
    exclude = _excluded_tokens(model, loaded.sae) if job.exclude_special_tokens else []
    started = time.perf_counter()
    evaluation = evaluate_saes(
        model,
        {loaded.name: loaded.sae},
        contexts,
        exclude,
        zero_ablation=job.zero_ablation,
        progress=f"evaluating {loaded.name} on {model.cfg.model_name}",
    )[loaded.name]
    seconds["evaluate"] = time.perf_counter() - started
    report = {
        **evaluation.summary(),
        "hook_name": hook_name,
        "sae": str(job.sae),
        "sae_format": loaded.source_format,
        "architecture": loaded.sae.cfg.architecture(),
        "d_in": loaded.sae.cfg.d_in,
        "d_sae": loaded.sae.cfg.d_sae,
        "model": model.cfg.model_name,
        "dataset": settings.dataset,
        "held_out": settings.held_out,
        "context_size": settings.context_size,
        "prepend_bos": settings.prepend_bos,
        "settings_from": settings.origin,
        "tokens_requested": job.tokens,
        "tokens_read": contexts.numel(),
        "excluded_token_ids": exclude,
        "zero_ablation": job.zero_ablation,
        "seconds": seconds,
        # sparse, {L0: tokens}: a d_sae-long list would be mostly zeros
        "l0_histogram": {str(k): n for k, n in enumerate(evaluation.l0_histogram) if n},
    }
    with staged_dir(job.out, overwrite=True) as staging:
        files = write_report(staging, loaded.name, evaluation, report)
    moved = {key: job.out / path.relative_to(staging) for key, path in files.items()}
    return EvalResult(evaluation, settings, job.out, moved)


def write_report(
    out: Path, name: str, evaluation: SAEEvaluation, report: dict[str, Any]
) -> dict[str, Path]:
    """metrics.json, metrics.md, feature_frequency.csv, feature_frequency.png, l0_histogram.png."""
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "metrics.json": out / "metrics.json",
        "metrics.md": out / "metrics.md",
        "feature_frequency.csv": out / "feature_frequency.csv",
    }
    write_text_atomic(files["metrics.json"], json.dumps(report, indent=2))
    write_text_atomic(files["metrics.md"], _markdown(name, evaluation, report))
    rows = "".join(f"{i},{f:.8g}\n" for i, f in enumerate(evaluation.feature_frequency))
    write_text_atomic(files["feature_frequency.csv"], "latent,frequency\n" + rows)
    files["feature_frequency.png"] = plot_feature_frequencies(
        {name: evaluation.feature_frequency}, out / "feature_frequency.png", evaluation.tokens
    )
    files["l0_histogram.png"] = plot_l0_histograms(
        {name: evaluation.l0_histogram}, out / "l0_histogram.png"
    )
    return files


def _markdown(name: str, e: SAEEvaluation, report: dict[str, Any]) -> str:
    split = "held-out split of " if report["held_out"] else ""
    return (
        f"# {name}\n\n"
        f"- SAE: `{report['sae']}` ({report['sae_format']}, {report['architecture']}, "
        f"d_in {report['d_in']}, d_sae {report['d_sae']})\n"
        f"- model: {report['model']}, hook `{e.hook_name}`\n"
        f"- text: {split}{report['dataset']}, {report['tokens_read']} tokens in contexts of "
        f"{report['context_size']}; {e.tokens} evaluated (special tokens excluded)\n\n"
        + markdown_table({name: e})
        + "\nPer-token L0:\n\n| mean | p10 | median | p90 | max |\n|---:|---:|---:|---:|---:|\n"
        f"| {e.l0:.1f} | {e.l0_p10} | {e.l0_p50} | {e.l0_p90} | {e.l0_max} |\n\n"
        f"CE clean {e.ce_clean:.4f}, spliced {e.ce_spliced:.4f}"
        + ("" if e.ce_zero_ablation is None else f", zero-ablated {e.ce_zero_ablation:.4f}")
        + " (nats per token).\n\n![feature frequency](feature_frequency.png)\n"
        "![L0 per token](l0_histogram.png)\n"
    )


def _load_model(settings: EvalSettings, job: EvalJob) -> HookedTransformer:
    name = None if is_embedded(settings.model) else settings.model
    try:
        return load_model(name, device=job.device, dtype=job.dtype)
    except Exception as error:  # hub / TransformerLens errors come in many types
        named_by = "--model" if settings.origin["model"] == "flag" else "the SAE's metadata"
        raise ValueError(
            f"cannot load model {settings.model!r} (named by {named_by}): "
            f"{type(error).__name__}: {error}. Pass --model with a TransformerLens model whose "
            f"weights you have (--model {EMBEDDED_MODEL} is the embedded one)"
        ) from error


def _attach_hook(model: HookedTransformer, loaded: LoadedSAE, spec: str) -> str:
    """Resolve a hook or site spec on ``model``, record it on the SAE, and check the widths."""
    sae = loaded.sae
    if "." in spec and ":" not in spec:
        hook_name = spec  # a hook name: check_compatible says if the model lacks it
    else:
        sites = resolve_sites(model, [spec])
        if len(sites) != 1:
            raise ValueError(f"--hook {spec!r} names {len(sites)} sites; give one")
        hook_name = sites[0].hook_name
    sae.cfg.metadata.hook_name = hook_name
    if hook_name.endswith("hook_z") and sae.cfg.reshape_activations != "hook_z":
        # hook_z is [.., n_heads, d_head]; Gemma Scope's attention SAEs read it flattened
        sae.cfg.reshape_activations = "hook_z"
        sae.turn_on_forward_pass_hook_z_reshaping()
    check_compatible(model, hook_name, sae)
    return hook_name


def _contexts(
    model: HookedTransformer, settings: EvalSettings, tokens: int
) -> Int[Tensor, "n_contexts context"]:
    check_text_model(model, settings.context_size, settings.origin["context_size"])
    dataset = None if settings.dataset == EMBEDDED_CORPUS else settings.dataset
    try:
        contexts = load_eval_contexts(
            model.tokenizer,
            dataset,
            context_size=settings.context_size,
            tokens=tokens,
            held_out_every=20 if settings.held_out else None,
            prepend_bos=settings.prepend_bos,
        )
    except CorpusError as error:
        if settings.origin["dataset"] == "metadata":
            raise CorpusError(f"{error} (the SAE's metadata names it; pass --dataset)") from error
        raise
    split = "held-out " if settings.held_out else ""
    if contexts.shape[0] == 0:
        raise CorpusError(
            f"{settings.dataset}: not enough {split}text for one context of "
            f"{settings.context_size} tokens: give a larger --dataset or a smaller --context-size"
        )
    if contexts.numel() < tokens:
        warnings.warn(
            f"{settings.dataset} holds only {contexts.numel()} {split}tokens in whole contexts of "
            f"{settings.context_size}, of the {tokens} asked for; evaluating on those "
            f"{contexts.numel()} (give a larger --dataset for more)",
            stacklevel=2,
        )
    return contexts


def _excluded_tokens(model: HookedTransformer, sae: SAE[Any]) -> list[int]:
    """The model's special tokens, plus any ids the SAE's metadata says training excluded."""
    listed = getattr(sae.cfg.metadata, "exclude_special_tokens", None)
    extra = listed if isinstance(listed, list) else []
    return sorted(set(special_token_ids(model)) | {int(i) for i in extra})
