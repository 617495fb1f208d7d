"""Text for activation collection: the embedded offline corpus, local files or a Hugging Face
dataset, tokenized and packed into fixed-length contexts with a held-out split.

Packing is SAELens's own (``concat_and_batch_sequences``: BOS first in every context and between
documents), so contexts look exactly like those of SAELens's ActivationsStore.
"""

import ast
import itertools
import math
import sysconfig
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from sae_lens.tokenization_and_batching import concat_and_batch_sequences
from torch import Tensor
from tqdm.auto import tqdm

EMBEDDED_CORPUS = "embedded"
_TEXT_COLUMNS = ("text", "content", "problem")
_TOKEN_COLUMNS = ("tokens", "input_ids")
_LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
# Stdlib docstrings shorter than this are mostly one-line summaries that add repetition, not text.
_MIN_DOCSTRING_CHARS = 120


class CorpusError(ValueError):
    """The text source cannot give the tokens asked for."""


@dataclass(frozen=True)
class TokenCorpus:
    """Packed contexts, each starting with BOS; held-out documents never appear in ``train``."""

    train: Int[Tensor, "n_train context"]
    held_out: Int[Tensor, "n_held_out context"]
    # Where the text came from, for manifests and metadata.
    source: str

    @property
    def context_size(self) -> int:
        return self.train.shape[1]


def check_text_model(model: Any, context_size: int, source: str = "--context-size") -> None:
    """The model can read text in contexts of ``context_size`` tokens (``source``: where that
    size came from, for the message)."""
    if model.tokenizer is None:
        raise CorpusError(f"{model.cfg.model_name} has no tokenizer: cannot read text for it")
    if context_size > model.cfg.n_ctx:
        raise CorpusError(
            f"context size {context_size} ({source}) is longer than {model.cfg.model_name}'s "
            f"context of {model.cfg.n_ctx} tokens"
        )


def load_token_corpus(
    tokenizer: Any,
    dataset: str | None = None,
    *,
    context_size: int = 128,
    train_tokens: int,
    held_out_tokens: int = 16_384,
    held_out_every: int = 20,
) -> TokenCorpus:
    """Read documents until ``train_tokens`` and ``held_out_tokens`` are packed (or the source
    ends: the caller decides whether fewer is acceptable).

    Every ``held_out_every``-th document goes to the held-out split until it is full.
    """
    if context_size < 2:
        raise CorpusError(f"context_size must be at least 2 (BOS + a token), got {context_size}")
    source = dataset or EMBEDDED_CORPUS
    want = {
        "train": math.ceil(train_tokens / context_size),
        "held_out": math.ceil(held_out_tokens / context_size),
    }
    documents = {"train": [], "held_out": []}
    counted = {"train": 0, "held_out": 0}
    with tqdm(total=train_tokens + held_out_tokens, desc=f"tokenizing {source}", unit="tok") as bar:
        for index, document in enumerate(iter_documents(dataset)):
            tokens = _to_tokens(tokenizer, document)
            if not tokens:
                continue
            split = "held_out" if index % held_out_every == held_out_every - 1 else "train"
            if counted[split] >= want[split] * context_size:
                split = "train" if split == "held_out" else "held_out"
            if counted[split] >= want[split] * context_size:
                continue  # this split is full; the other was full already
            documents[split].append(torch.tensor(tokens, dtype=torch.long))
            counted[split] += len(tokens)
            bar.update(len(tokens))
            if all(counted[s] >= want[s] * context_size for s in want):
                break
    packed = {split: _pack(docs, tokenizer, context_size) for split, docs in documents.items()}
    if packed["train"].shape[0] == 0:
        raise CorpusError(
            f"{source}: no text to train on (read {sum(counted.values())} tokens; a context "
            f"needs {context_size}): give a larger dataset or a smaller --context-size"
        )
    return TokenCorpus(
        train=packed["train"][: want["train"]],
        held_out=packed["held_out"][: want["held_out"]],
        source=source,
    )


def load_eval_contexts(
    tokenizer: Any,
    dataset: str | None = None,
    *,
    context_size: int = 128,
    tokens: int,
    held_out_every: int | None = 20,
    prepend_bos: bool = True,
) -> Int[Tensor, "n_contexts context"]:
    """About ``tokens`` tokens (whole contexts, rounded up) to evaluate on, or fewer if the
    source ends first (the caller warns).

    With ``held_out_every`` set, only the documents ``load_token_corpus`` holds out (every
    ``held_out_every``-th, in the same order) are read: the same first documents a ``train`` run
    evaluated on; None reads every document. Without ``prepend_bos`` contexts do not start with
    BOS (documents are still separated by it), as SAELens's ActivationsStore packs them.
    """
    if context_size < 2:
        raise CorpusError(f"context_size must be at least 2 (BOS + a token), got {context_size}")
    want = math.ceil(tokens / context_size) * context_size
    documents: list[Tensor] = []
    counted = 0
    source = dataset or EMBEDDED_CORPUS
    with tqdm(total=want, desc=f"tokenizing {source}", unit="tok") as bar:
        for index, document in enumerate(iter_documents(dataset)):
            if held_out_every is not None and index % held_out_every != held_out_every - 1:
                continue
            ids = _to_tokens(tokenizer, document)
            documents.append(torch.tensor(ids, dtype=torch.long))
            counted += len(ids)
            bar.update(len(ids))
            if counted >= want:
                break
    contexts = _pack(documents, tokenizer, context_size, prepend_bos)
    return contexts[: want // context_size]


def iter_documents(dataset: str | None) -> Iterator[str | list[int]]:
    """Documents as text, or as token ids when the dataset is pre-tokenized."""
    if dataset is None or dataset == EMBEDDED_CORPUS:
        yield from embedded_documents()
        return
    path = Path(dataset).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise CorpusError(f"{dataset}: the directory holds no files")
        for file in files:
            yield from _file_documents(file)
    elif path.exists():
        yield from _file_documents(path)
    else:
        check_dataset(dataset)
        yield from _hf_documents(dataset)


def check_dataset(dataset: str | None) -> None:
    """A dataset that names a local path (``./x``, ``/x``, ``~/x``, ``x.txt``) must exist; the
    early check, before any model loads. Other names are Hugging Face datasets."""
    if dataset is None or dataset == EMBEDDED_CORPUS:
        return
    path = Path(dataset).expanduser()
    looks_local = dataset.startswith((".", "/", "~")) or ("/" not in dataset and bool(path.suffix))
    if looks_local and not path.exists():
        raise CorpusError(f"{dataset}: no such file or directory")


def embedded_documents() -> Iterator[str]:
    """English text every Python has: the reference-manual topics of ``pydoc_data`` and the
    docstrings of the standard library (read with ``ast``, nothing imported)."""
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
                if docstring and len(docstring) >= _MIN_DOCSTRING_CHARS:
                    yield docstring


def _file_documents(path: Path) -> Iterator[str | list[int]]:
    if path.suffix in (".txt", ".md", ".rst", ""):
        text = path.read_text(encoding="utf-8", errors="replace")
        if text.count("\ufffd") > 0.01 * max(1, len(text)):
            warnings.warn(
                f"{path}: {text.count(chr(0xFFFD))} of its {len(text)} characters are not UTF-8 "
                "(read as U+FFFD): is it a text file?",
                stacklevel=2,
            )
        # Blank-line paragraphs as documents, so a single large file still splits train/held-out.
        yield from (part for part in text.split("\n\n") if part.strip())
        return
    builder = _LOCAL_FORMATS.get(path.suffix)
    if builder is None:
        raise CorpusError(
            f"{path}: unknown file type {path.suffix!r}; use .txt, .jsonl, .json, .parquet or .csv"
        )
    import datasets

    try:
        rows = datasets.load_dataset(builder, data_files=str(path), split="train", streaming=True)
    except Exception as error:  # datasets raises many types for unreadable files
        raise CorpusError(f"{path}: cannot read it as {builder}: {error}") from error
    yield from _rows_documents(rows, str(path))


def _hf_documents(name: str) -> Iterator[str | list[int]]:
    import datasets

    try:
        rows = datasets.load_dataset(name, split="train", streaming=True)
    except Exception as error:  # offline, missing, gated: datasets raises many types
        raise CorpusError(
            f"cannot open Hugging Face dataset {name!r} ({type(error).__name__}: {error}); "
            "give a dataset name you can reach or a local .txt/.jsonl/.parquet file or directory"
        ) from error
    yield from _rows_documents(rows, name)


def _rows_documents(rows: Any, name: str) -> Iterator[str | list[int]]:
    column = None
    iterator = iter(rows)
    for index in itertools.count():
        try:
            row = next(iterator)
        except StopIteration:
            return
        except Exception as error:  # datasets' readers raise many types on a bad row
            raise CorpusError(
                f"{name}: cannot read row {index + 1} ({type(error).__name__}: {error}); "
                "fix or remove it"
            ) from None
        if column is None:
            column = _document_column(row, name)
        value = row[column]
        yield value if isinstance(value, str) else list(value)


def _document_column(row: dict[str, Any], name: str) -> str:
    for column in _TOKEN_COLUMNS + _TEXT_COLUMNS:
        if column in row:
            return column
    raise CorpusError(
        f"{name}: rows have columns {sorted(row)}, none of which holds text or tokens; "
        f"name one of them {list(_TEXT_COLUMNS + _TOKEN_COLUMNS)}"
    )


def _to_tokens(tokenizer: Any, document: str | list[int]) -> list[int]:
    if isinstance(document, str):
        return tokenizer(document, add_special_tokens=False)["input_ids"]
    return [int(token) for token in document]


def _pack(
    documents: list[Tensor], tokenizer: Any, context_size: int, prepend_bos: bool = True
) -> Int[Tensor, "n_contexts context"]:
    contexts = list(
        concat_and_batch_sequences(
            (document for document in documents if document.numel()),
            context_size,
            begin_batch_token_id=tokenizer.bos_token_id if prepend_bos else None,
            sequence_separator_token_id=tokenizer.bos_token_id,
        )
    )
    if not contexts:
        return torch.empty((0, context_size), dtype=torch.long)
    return torch.stack(contexts)
