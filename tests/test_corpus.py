import json
from itertools import islice

import pytest
import torch
from datasets import Dataset
from gemma_fixtures import BOS, word_tokenizer

from sae_lens_jumprelu.data.corpus import (
    CorpusError,
    embedded_documents,
    load_eval_contexts,
    load_token_corpus,
)

WORDS = [f"w{i}" for i in range(200)] + [f"doc{i}" for i in range(100)]


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer(WORDS)


def documents(n: int, length: int = 30) -> list[str]:
    """Document d starts with the marker word docd."""
    return [
        " ".join([f"doc{d}"] + [WORDS[(d * 7 + i) % 200] for i in range(length - 1)])
        for d in range(n)
    ]


def test_text_files_pack_into_bos_contexts_with_disjoint_held_out(tmp_path, tokenizer):
    (tmp_path / "a.txt").write_text("\n\n".join(documents(60)))
    corpus = load_token_corpus(
        tokenizer,
        str(tmp_path / "a.txt"),
        context_size=16,
        train_tokens=320,
        held_out_tokens=64,
        held_out_every=5,
    )
    assert corpus.train.shape == (20, 16) and corpus.held_out.shape == (4, 16)
    assert (corpus.train[:, 0] == BOS).all() and (corpus.held_out[:, 0] == BOS).all()
    markers = {
        split: {
            w
            for c in getattr(corpus, split)
            for w in tokenizer.decode(c).split()
            if w.startswith("doc")
        }
        for split in ("train", "held_out")
    }
    assert markers["held_out"] == {"doc4", "doc9"}  # every 5th document, until 64 tokens
    assert not markers["train"] & markers["held_out"]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_jsonl_and_parquet_text_or_tokens(tmp_path, tokenizer, suffix):
    rows = Dataset.from_dict({"text": documents(20)})
    tokens = Dataset.from_dict({"input_ids": [[5, 6, 7, 8] * 10] * 20})
    for name, data in [("text", rows), ("tokens", tokens)]:
        path = tmp_path / f"{name}{suffix}"
        data.to_json(path) if suffix == ".jsonl" else data.to_parquet(path)
        corpus = load_token_corpus(
            tokenizer, str(path), context_size=8, train_tokens=64, held_out_tokens=8
        )
        assert corpus.train.shape == (8, 8)
    assert corpus.train[0].tolist() == [BOS, 5, 6, 7, 8, 5, 6, 7]


def test_directory_of_files(tmp_path, tokenizer):
    for i in range(3):
        (tmp_path / f"{i}.txt").write_text("\n\n".join(documents(10)))
    corpus = load_token_corpus(
        tokenizer, str(tmp_path), context_size=16, train_tokens=160, held_out_tokens=16
    )
    assert corpus.train.shape == (10, 16)


def test_missing_column_empty_corpus_and_unknown_file(tmp_path, tokenizer):
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps({"body": d, "id": i}) for i, d in enumerate(documents(3))))
    with pytest.raises(CorpusError, match="columns \\['body', 'id'\\], none of which"):
        load_token_corpus(tokenizer, str(path), train_tokens=10)
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    with pytest.raises(CorpusError, match="no text to train on"):
        load_token_corpus(tokenizer, str(tmp_path / "empty.txt"), train_tokens=10)
    (tmp_path / "data.xml").write_text("<a/>")
    with pytest.raises(CorpusError, match="unknown file type '.xml'"):
        load_token_corpus(tokenizer, str(tmp_path / "data.xml"), train_tokens=10)
    with pytest.raises(CorpusError, match="no such file"):
        load_token_corpus(tokenizer, str(tmp_path / "missing.txt"), train_tokens=10)


def test_short_corpus_returns_what_it_has(tmp_path, tokenizer):
    (tmp_path / "a.txt").write_text("\n\n".join(documents(4, length=20)))
    corpus = load_token_corpus(
        tokenizer, str(tmp_path / "a.txt"), context_size=8, train_tokens=10_000, held_out_tokens=8
    )
    assert 0 < corpus.train.numel() < 10_000


def test_embedded_corpus_is_python_reference_text_then_docstrings():
    docs = list(islice(embedded_documents(), 300))
    assert any("assignment statement" in d.lower() for d in docs[:79])  # pydoc topics first
    assert all(len(d) >= 120 for d in docs[79:])  # then stdlib docstrings
    assert sum(map(len, docs)) > 500_000


def test_corpus_is_deterministic(tmp_path, tokenizer):
    (tmp_path / "a.txt").write_text("\n\n".join(documents(40)))
    a, b = (
        load_token_corpus(
            tokenizer,
            str(tmp_path / "a.txt"),
            context_size=16,
            train_tokens=200,
            held_out_tokens=32,
        )
        for _ in range(2)
    )
    assert torch.equal(a.train, b.train) and torch.equal(a.held_out, b.held_out)


def test_unreachable_hub_dataset_is_a_clear_error(tokenizer, monkeypatch):
    import datasets.config

    # datasets reads the environment at import: set its flag itself (no 25 s of retries)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(CorpusError, match="cannot open Hugging Face dataset 'someone/no-such-set'"):
        load_token_corpus(tokenizer, "someone/no-such-set", train_tokens=10)


def test_eval_contexts_are_the_documents_train_holds_out(tmp_path, tokenizer):
    (tmp_path / "a.txt").write_text("\n\n".join(documents(100)))
    held_out = load_token_corpus(
        tokenizer, str(tmp_path / "a.txt"), context_size=16, train_tokens=2400, held_out_tokens=96
    ).held_out  # (train is not full before document 79, so only every 20th is held out)
    evaluated = load_eval_contexts(tokenizer, str(tmp_path / "a.txt"), context_size=16, tokens=96)
    assert held_out.shape == (6, 16) and torch.equal(evaluated, held_out)
    everything = load_eval_contexts(
        tokenizer, str(tmp_path / "a.txt"), context_size=16, tokens=40, held_out_every=None
    )
    assert everything.shape == (3, 16)  # 40 tokens round up to whole contexts
    assert tokenizer.decode(everything[0]).split()[:2] == ["<bos>", "doc0"]


def test_eval_contexts_without_bos_first(tmp_path, tokenizer):
    (tmp_path / "a.txt").write_text("doc1 w1 w2 w3 w4 w5\n\ndoc2 w6 w7 w8 w9 w10 w11")
    common = {"context_size": 6, "tokens": 12, "held_out_every": None}
    with_bos = load_eval_contexts(tokenizer, str(tmp_path / "a.txt"), **common)
    without = load_eval_contexts(tokenizer, str(tmp_path / "a.txt"), prepend_bos=False, **common)
    words = [tokenizer.decode(c).split() for c in (*with_bos, *without)]
    assert words[:2] == [
        ["<bos>", "doc1", "w1", "w2", "w3", "w4"],
        ["<bos>", "w5", "<bos>", "doc2", "w6", "w7"],
    ]
    # SAELens's packing without prepend_bos: documents start contexts bare; a separator is only
    # written inside a context
    assert words[2:] == [
        ["doc1", "w1", "w2", "w3", "w4", "w5"],
        ["doc2", "w6", "w7", "w8", "w9", "w10"],
    ]


def test_check_text_model_names_the_problem() -> None:
    from sae_lens_jumprelu.data.corpus import check_text_model
    from sae_lens_jumprelu.data.models import tiny_gemma2

    model = tiny_gemma2()  # no tokenizer, n_ctx 256
    with pytest.raises(CorpusError, match="tiny-gemma-2 has no tokenizer"):
        check_text_model(model, 128)
    model.tokenizer = object()
    with pytest.raises(CorpusError, match=r"context size 300 \(cfg.json\) is longer than .* 256"):
        check_text_model(model, 300, "cfg.json")
    check_text_model(model, 256)


def test_bad_local_input_is_named_as_such(tmp_path, tokenizer):
    for missing in ("/nonexistent", "./gone", str(tmp_path / "gone")):
        with pytest.raises(CorpusError, match="no such file or directory"):
            load_token_corpus(tokenizer, missing, train_tokens=10)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"text": documents(1)[0]}) + "\n{not json\n")
    with pytest.raises(CorpusError, match=r"rows.jsonl: cannot read row"):
        load_token_corpus(tokenizer, str(rows), train_tokens=10_000)
    noise = tmp_path / "noise.txt"
    noise.write_bytes(
        bytes(torch.randint(128, 256, (4000,), generator=torch.Generator().manual_seed(0)).tolist())
    )
    with pytest.warns(UserWarning, match="noise.txt: .* are not UTF-8"):
        load_token_corpus(tokenizer, str(noise), train_tokens=10)
