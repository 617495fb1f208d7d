"""``sae-jumprelu eval`` end to end on the tiny Gemma 2 (given a real word-level tokenizer): SAEs
written by SAELens and Gemma Scope files, metadata defaults, hand-computed metrics, bad input."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from convert_factories import make_jumprelu
from gemma_fixtures import BOS, tiny_model, word_tokenizer
from sae_lens import (
    GatedSAE,
    GatedSAEConfig,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
)

from sae_lens_jumprelu.commands import eval as eval_job
from sae_lens_jumprelu.commands.cli import main, parse_args
from sae_lens_jumprelu.commands.eval import EvalJob, resolve_settings
from sae_lens_jumprelu.convert.gemma_scope import write_gemma_scope
from sae_lens_jumprelu.convert.sae_lens_format import to_sae_lens_sae
from sae_lens_jumprelu.data.corpus import load_eval_contexts
from sae_lens_jumprelu.evals import evaluate_saes
from sae_lens_jumprelu.metrics import fvu

WORDS = [f"w{i}" for i in range(300)]
RESID = "blocks.1.hook_resid_post"
REQUIRED = {"l0", "fvu", "delta_lm_loss", "ce_loss_score", "frac_dead", "frac_over_10pct", "tokens"}


@pytest.fixture(scope="module")
def model():
    model = tiny_model()
    # TransformerLens's set_tokenizer wants a hub tokenizer; the metrics only need the attribute
    model.tokenizer = word_tokenizer(WORDS)
    return model


@pytest.fixture
def loads(model, monkeypatch) -> list:
    """The tiny model stands in for whatever model is named; the names asked for are kept."""
    asked: list = []

    def load_model(name, **kwargs):
        asked.append(name)
        return model

    monkeypatch.setattr(eval_job, "load_model", load_model)
    return asked


def write_text(path: Path, n_documents: int, words: int = 30) -> Path:
    generator = np.random.default_rng(0)
    documents = [" ".join(generator.choice(WORDS, size=words)) for _ in range(n_documents)]
    path.write_text("\n\n".join(documents))
    return path


def sae_dir(path: Path, kind: str = "exact", d_in: int = 64, **metadata) -> Path:
    """A SAELens-written JumpReLU SAE: "exact" (latents relu(x), relu(-x)) or "zero"."""
    cfg = JumpReLUSAEConfig(d_in=d_in, d_sae=2 * d_in)
    cfg.metadata.__dict__.update(
        {"hook_name": RESID, "model_name": "tiny-gemma-2", "context_size": 16, **metadata}
    )
    sae = JumpReLUSAE(cfg)
    eye = torch.eye(d_in)
    with torch.no_grad():
        for p in sae.parameters():
            p.zero_()
        if kind == "exact":
            sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
            sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
    sae.save_model(path)
    return path


def run(argv: list, capsys) -> tuple[int, str]:
    code = main(["eval", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_parsed_defaults_are_the_jobs() -> None:
    args = vars(parse_args(["eval", "my-sae"]))
    assert EvalJob(**{k: v for k, v in args.items() if k in EvalJob.__dataclass_fields__}) == (
        EvalJob(sae="my-sae")
    )
    args = parse_args(["eval", "s", "--hook", "attn:2", "--no-zero-ablation", "--tokens", "9"])
    assert (args.hook, args.zero_ablation, args.tokens) == ("attn:2", False, 9)
    with pytest.raises(SystemExit):
        parse_args(["eval", "s", "--tokens", "0"])


def test_metadata_drives_the_defaults_and_flags_override_them() -> None:
    cfg = JumpReLUSAEConfig(d_in=4, d_sae=8)
    sae = JumpReLUSAE(cfg)
    empty = resolve_settings(EvalJob(sae="s"), sae)
    assert (empty.model, empty.dataset, empty.context_size, empty.hook) == (
        "gemma-3-270m",
        "embedded",
        128,
        None,
    )
    assert empty.held_out and empty.prepend_bos
    meta = {"model_name": "gemma-2-2b", "hook_name": RESID, "context_size": 1024}
    cfg.metadata.__dict__.update(meta, dataset_path="corpus.jsonl", prepend_bos=False)
    named = resolve_settings(EvalJob(sae="s"), sae)
    assert (named.model, named.dataset, named.context_size, named.hook) == (
        "gemma-2-2b",
        "corpus.jsonl",
        1024,
        RESID,
    )
    assert named.held_out and not named.prepend_bos
    assert set(named.origin.values()) == {"metadata"}
    flags = EvalJob(sae="s", model="m", dataset="other.txt", context_size=64, hook="mlp:0")
    overridden = resolve_settings(flags, sae)
    assert (overridden.model, overridden.dataset, overridden.context_size, overridden.hook) == (
        "m",
        "other.txt",
        64,
        "mlp:0",
    )
    assert not overridden.held_out  # another dataset: read from its first document
    assert resolve_settings(EvalJob(sae="s", dataset="corpus.jsonl"), sae).held_out


def test_perfect_sae_through_the_cli(tmp_path, model, loads, capsys) -> None:
    text = write_text(tmp_path / "text.txt", 400)
    sae = sae_dir(tmp_path / "exact", dataset_path=str(text))
    out = tmp_path / "out"
    code, printed = run([sae, "--tokens", 200, "--out", out], capsys)
    assert code == 0, printed
    assert loads == ["tiny-gemma-2"]  # from the SAE's metadata
    metrics = json.loads((out / "metrics.json").read_text())
    assert REQUIRED <= set(metrics)
    assert metrics["fvu"] == pytest.approx(0, abs=1e-10)
    assert metrics["delta_lm_loss"] == pytest.approx(0, abs=1e-6)
    assert metrics["ce_loss_score"] == pytest.approx(1, abs=1e-4)
    assert (metrics["hook_name"], metrics["model"], metrics["context_size"]) == (
        RESID,
        "tiny-gemma-2",
        16,
    )
    # 13 contexts of 16 (208 >= 200 tokens) from the held-out documents, BOS left out
    assert (metrics["tokens_read"], metrics["held_out"], metrics["dataset"]) == (
        208,
        True,
        str(text),
    )
    held_out = load_eval_contexts(model.tokenizer, str(text), context_size=16, tokens=200)
    assert metrics["tokens"] == int((held_out != BOS).sum())
    # every latent is relu(+-x_i): x_i is never exactly 0, so each token has L0 = d_in
    assert metrics["l0_histogram"] == {"64": metrics["tokens"]}
    assert metrics["l0_p10"] == metrics["l0_max"] == 64
    for png in ("feature_frequency.png", "l0_histogram.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert len((out / "feature_frequency.csv").read_text().splitlines()) == 1 + 128
    assert "| exact | " in (out / "metrics.md").read_text()
    assert "FVU 0.0000" in printed and str(out / "metrics.json") in printed


def test_zero_sae_is_zero_ablation(tmp_path, model, loads, capsys) -> None:
    text = write_text(tmp_path / "text.txt", 200)
    sae = sae_dir(tmp_path / "zero", kind="zero")
    out = tmp_path / "out"
    code, printed = run([sae, "--dataset", text, "--tokens", 64, "--out", out], capsys)
    assert code == 0, printed
    m = json.loads((out / "metrics.json").read_text())
    assert not m["held_out"]  # a dataset the metadata does not name: all of it
    # splicing in zeros is the zero ablation: nothing of the loss gap recovered
    assert m["ce_spliced"] == m["ce_zero_ablation"] and m["ce_loss_score"] == 0
    assert (m["l0"], m["frac_dead"], m["frac_over_10pct"]) == (0, 1, 0)
    # FVU of x_hat = 0 is sum ||x||^2 / sum ||x - mean||^2, computed here from the model itself
    contexts = load_eval_contexts(
        model.tokenizer, str(text), context_size=16, tokens=64, held_out_every=None
    )
    _, cache = model.run_with_cache(contexts, names_filter=[RESID])
    x = cache[RESID][contexts != BOS].double()
    expected = x.pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert m["fvu"] == pytest.approx(expected.item(), rel=1e-6) and m["fvu"] > 1


@pytest.mark.parametrize("hook", ["resid:1", "attn:1"])
def test_gemma_scope_file_is_converted_on_the_fly(tmp_path, model, loads, capsys, hook) -> None:
    text = write_text(tmp_path / "text.txt", 200)
    weights = make_jumprelu(d_in=64, d_sae=96)
    write_gemma_scope(weights, tmp_path / "params.npz")
    args = [tmp_path / "params.npz", "--dataset", text, "--tokens", 96, "--out", tmp_path / "o"]
    code, printed = run(args, capsys)
    assert code == 2 and "does not say which hook it reads: pass --hook" in printed
    assert loads == []  # refused before loading the model
    code, printed = run([*args, "--hook", hook], capsys)
    assert code == 0, printed
    assert loads == [None]  # no model in a bare params file: the embedded default
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["sae_format"] == "gemma-scope" and m["settings_from"]["hook"] == "flag"

    # the same numbers as SAELens's JumpReLUSAE holding these weights, evaluated directly
    reference = to_sae_lens_sae(weights)
    hook_name = {"resid:1": RESID, "attn:1": "blocks.1.attn.hook_z"}[hook]
    reference.cfg.metadata.hook_name = hook_name
    if hook.startswith("attn"):
        reference.turn_on_forward_pass_hook_z_reshaping()
    contexts = load_eval_contexts(
        model.tokenizer, str(text), context_size=128, tokens=96, held_out_every=None
    )
    expected = evaluate_saes(
        model, {"r": reference}, contexts, [0, 1, 2], zero_ablation=True, progress=None
    )["r"]
    assert m["hook_name"] == hook_name
    for key in ("l0", "fvu", "delta_lm_loss", "ce_loss_score", "frac_dead", "tokens"):
        assert m[key] == pytest.approx(getattr(expected, key), rel=1e-6, abs=1e-9), key
    assert 0 < m["l0"] < 96


def test_mismatched_sae_errors_name_both_sides(tmp_path, loads, capsys) -> None:
    text = write_text(tmp_path / "text.txt", 50)
    common = ["--dataset", text, "--out", tmp_path / "never"]
    code, printed = run([sae_dir(tmp_path / "narrow", d_in=32), *common], capsys)
    assert code == 2
    assert f"the SAE has d_in=32 but tiny-gemma-2's {RESID} gives 64 values per token" in printed
    far = sae_dir(tmp_path / "far", hook_name="blocks.9.hook_resid_post")
    code, printed = run([far, *common], capsys)
    assert code == 2
    assert "reads hook 'blocks.9.hook_resid_post', which tiny-gemma-2 does not have" in printed
    code, printed = run([far, *common, "--hook", "resid:9"], capsys)
    assert code == 2 and "layer 9 is out of range: tiny-gemma-2 has layers 0-3" in printed
    assert not (tmp_path / "never").exists()


def test_too_little_text_warns_with_what_was_used(tmp_path, loads, capsys) -> None:
    # 8 documents of 30 words, 7 BOS between them: 247 tokens; a context holds BOS + 15, so 16
    # whole contexts (256 tokens) and 7 tokens left over
    text = write_text(tmp_path / "text.txt", 8)
    sae = sae_dir(tmp_path / "s")
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="holds only 256 tokens in whole contexts of 16, of the "
                      "10000 asked for; evaluating on those 256") as warned:  # fmt: skip
        code, printed = run([sae, "--dataset", text, "--tokens", 10_000, "--out", out], capsys)
    assert code == 0, printed
    assert len(warned) == 1
    assert json.loads((out / "metrics.json").read_text())["tokens_read"] == 256

    code, printed = run(
        [sae, "--dataset", text, "--context-size", 250, "--out", out, "--overwrite"], capsys
    )
    assert code == 2
    assert "not enough text for one context of 250 tokens: give a larger --dataset" in printed


def test_a_dataset_named_by_metadata_that_is_gone_says_to_pass_dataset(tmp_path, loads, capsys):
    sae = sae_dir(tmp_path / "s", dataset_path=str(tmp_path / "gone.txt"))
    code, printed = run([sae, "--out", tmp_path / "o"], capsys)
    assert code == 2
    assert "gone.txt: no such file or directory (the SAE's metadata names it; pass --dataset)" in (
        printed
    )


def test_a_model_that_cannot_be_loaded_is_named(tmp_path, capsys) -> None:
    sae = sae_dir(tmp_path / "s")
    code, printed = run([sae, "--model", "no-such-model-xyz", "--out", tmp_path / "o"], capsys)
    assert code == 2
    assert "cannot load model 'no-such-model-xyz' (named by --model)" in printed


ARCHITECTURES = {
    "standard": (StandardSAE, StandardSAEConfig, {}),
    "topk": (TopKSAE, TopKSAEConfig, {"k": 5}),
    "gated": (GatedSAE, GatedSAEConfig, {}),
}


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_any_sae_lens_architecture_agrees_with_its_own_forward(
    tmp_path, model, loads, capsys, architecture
) -> None:
    cls, cfg_cls, extra = ARCHITECTURES[architecture]
    cfg = cfg_cls(d_in=64, d_sae=48, **extra)
    cfg.metadata.__dict__.update(hook_name="blocks.2.hook_mlp_out", context_size=16)
    torch.manual_seed(1)
    sae = cls(cfg)
    sae.save_model(tmp_path / architecture)
    text = write_text(tmp_path / "text.txt", 100)
    out = tmp_path / "out"
    code, printed = run(
        [tmp_path / architecture, "--dataset", text, "--tokens", 64, "--out", out], capsys
    )
    assert code == 0, printed
    m = json.loads((out / "metrics.json").read_text())
    assert m["architecture"] == architecture
    # the oracle: SAELens's own encode and forward on the same non-special activations
    contexts = load_eval_contexts(
        model.tokenizer, str(text), context_size=16, tokens=64, held_out_every=None
    )
    _, cache = model.run_with_cache(contexts, names_filter=["blocks.2.hook_mlp_out"])
    x = cache["blocks.2.hook_mlp_out"][contexts != BOS]
    with torch.no_grad():
        l0 = (sae.encode(x) != 0).sum(-1)
        expected_fvu = fvu(x, sae(x))
    assert m["l0"] == pytest.approx(l0.double().mean().item())
    assert m["l0_max"] == l0.max() and m["fvu"] == pytest.approx(expected_fvu, rel=1e-6)
    if architecture == "topk":
        assert m["l0_max"] <= 5
