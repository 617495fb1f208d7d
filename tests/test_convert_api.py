"""convert(): round trips between every pair of formats, detection, refusal, atomic writes, CLI."""

import os
import tempfile
from pathlib import Path

import pytest
import torch
from convert_factories import make_gated, make_jumprelu
from hypothesis import given, settings
from hypothesis import strategies as st

from sae_lens_jumprelu.atomic import write_dir_atomic
from sae_lens_jumprelu.commands.cli import main, parse_args
from sae_lens_jumprelu.convert import (
    TARGETS,
    ConversionError,
    GatedWeights,
    InexactConversionError,
    JumpReLUWeights,
    OutputExistsError,
    convert,
    detect_format,
    load,
    verify,
)
from sae_lens_jumprelu.convert.dictionary_learning import write_dictionary_learning
from sae_lens_jumprelu.convert.gemma_scope import write_gemma_scope
from sae_lens_jumprelu.convert.sae_lens_format import write_sae_lens

# source fixture name -> (how to write it, the target name that writes that format)
SOURCES = {
    "jumprelu": "jumprelu",
    "gated": "gated",
    "gemma-scope": "gemma-scope",
    "dictionary-learning": "dictionary-learning",
}


def _write_source(kind: str, root: Path) -> Path:
    if kind == "gemma-scope":
        path = root / "params.npz"
        write_gemma_scope(make_jumprelu(6, 10), path)
        return path
    path = root / kind
    path.mkdir()
    if kind == "jumprelu":
        write_sae_lens(make_jumprelu(6, 10, apply=True), path)
    elif kind == "gated":
        write_sae_lens(make_gated(6, 10, apply=True), path)
    else:
        write_dictionary_learning(make_jumprelu(6, 10), path)
    return path


def _dst(root: Path, to: str, name: str) -> Path:
    return root / (f"{name}.npz" if to == "gemma-scope" else name)


@pytest.mark.parametrize("kind", list(SOURCES))
@pytest.mark.parametrize("via", list(TARGETS))
def test_round_trip_a_b_a(tmp_path: Path, kind: str, via: str) -> None:
    src = _write_source(kind, tmp_path)
    mid, back = _dst(tmp_path, via, "mid"), _dst(tmp_path, SOURCES[kind], "back")
    first = convert(src, mid, via)
    second = convert(mid, back, SOURCES[kind])
    assert first.verification.exact(1e-5) and second.verification.exact(1e-5)
    a, a2 = load(src), load(back)
    assert type(a) is type(a2) and detect_format(back) == detect_format(src)
    result = verify(a, a2)
    assert result.unexplained_mismatches == 0 and result.exact(1e-5), result.summary()
    # every written SAE has unit-norm decoder rows (the fixtures' rows are not unit)
    torch.testing.assert_close(a2.W_dec.norm(dim=-1), torch.ones(a2.d_sae))
    if isinstance(a, JumpReLUWeights):
        assert isinstance(a2, JumpReLUWeights)
        a = a.with_b_dec_applied(a2.apply_b_dec_to_input).with_unit_decoder()
        for name, tensor in a.state_dict().items():
            torch.testing.assert_close(getattr(a2, name), tensor, rtol=1e-6, atol=1e-6)


def test_detect_format(tmp_path: Path) -> None:
    expected = {"jumprelu": "sae-lens", "gated": "sae-lens", "gemma-scope": "gemma-scope",
                "dictionary-learning": "dictionary-learning"}  # fmt: skip
    for kind, fmt in expected.items():
        assert detect_format(_write_source(kind, tmp_path)) == fmt
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="cannot tell the format"):
        detect_format(tmp_path / "empty")
    with pytest.raises(ConversionError, match="does not exist"):
        detect_format(tmp_path / "nothing")


def test_existing_dst_is_refused_and_kept(tmp_path: Path) -> None:
    src = _write_source("jumprelu", tmp_path)
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        convert(src, dst, "gated")
    assert (dst / "keep.txt").read_text() == "mine"
    convert(src, dst, "gated", overwrite=True)
    assert not (dst / "keep.txt").exists() and isinstance(load(dst), GatedWeights)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jumprelu", "out"]  # no temp left


def test_existing_file_dst_is_replaced_only_with_overwrite(tmp_path: Path) -> None:
    src = _write_source("jumprelu", tmp_path)
    dst = tmp_path / "params.npz"
    dst.write_bytes(b"old")
    with pytest.raises(OutputExistsError):
        convert(src, dst, "gemma-scope")
    assert dst.read_bytes() == b"old"
    convert(src, dst, "gemma-scope", overwrite=True)
    assert detect_format(dst) == "gemma-scope" and load(dst).d_sae == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jumprelu", "params.npz"]


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    def half_then_fail(tmp: Path) -> None:
        (tmp / "cfg.json").write_text("{")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_dir_atomic(tmp_path / "out", half_then_fail)
    assert os.listdir(tmp_path) == []


def _gated_with_underflow(root: Path) -> Path:
    g = make_gated(6, 10)
    r_mag = g.r_mag.clone()
    r_mag[[2, 7]] = -150.0  # exp underflows to 0 in float32
    path = root / "bad-gated"
    path.mkdir()
    write_sae_lens(GatedWeights(**{**g.state_dict(), "r_mag": r_mag}), path)
    return path


def test_inexact_conversion_is_refused_without_writing(tmp_path: Path) -> None:
    src = _gated_with_underflow(tmp_path)
    with pytest.raises(InexactConversionError, match=r"first \[2, 7\]"):
        convert(src, tmp_path / "out", "jumprelu")
    assert not (tmp_path / "out").exists()
    result = convert(src, tmp_path / "out", "jumprelu", allow_inexact=True)
    assert result.issues[0].latents == [2, 7]


def test_bad_sources(tmp_path: Path) -> None:
    src = _write_source("jumprelu", tmp_path)
    w = make_jumprelu(6, 10)
    w.threshold[4] = float("nan")
    write_sae_lens(w, src)
    with pytest.raises(
        ConversionError, match=r"threshold has 1 NaN/Inf entries \(first at index \[4\]\)"
    ):
        convert(src, tmp_path / "out", "gated")
    (src / "sae_weights.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(ConversionError, match="not a readable safetensors file"):
        convert(src, tmp_path / "out", "gated")
    (src / "cfg.json").write_text('{"architecture": "topk"}')
    with pytest.raises(ConversionError, match="'topk' is not convertible"):
        load(src)
    assert not (tmp_path / "out").exists()


def test_cli_parse_convert() -> None:
    args = parse_args(["convert", "a", "b", "--to", "gated", "--apply-b-dec-to-input", "false"])
    assert (args.command, args.to, args.apply_b_dec_to_input) == ("convert", "gated", "false")
    assert not args.allow_inexact and not args.overwrite
    with pytest.raises(SystemExit):
        parse_args(["convert", "a", "b", "--to", "onnx"])
    assert parse_args(["demo"]).command == "demo"


def test_cli_convert_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _write_source("gated", tmp_path)
    assert main(["convert", str(src), str(tmp_path / "p.npz"), "--to", "gemma-scope"]) == 0
    out = capsys.readouterr().out
    assert "(sae-lens) ->" in out and "verification on 512 random inputs" in out
    assert "negative implied threshold" in out
    assert main(["convert", str(src), str(tmp_path / "p.npz"), "--to", "gemma-scope"]) == 2
    assert "already exists" in capsys.readouterr().err
    bad = _gated_with_underflow(tmp_path)
    assert main(["convert", str(bad), str(tmp_path / "j"), "--to", "jumprelu"]) == 2
    assert "--allow-inexact" in capsys.readouterr().err and not (tmp_path / "j").exists()
    argv = ["convert", str(bad), str(tmp_path / "j"), "--to", "jumprelu", "--allow-inexact"]
    assert main(argv) == 0
    assert "INEXACT latents [2, 7]" in capsys.readouterr().out


@settings(max_examples=30, deadline=None)
@given(
    kind=st.sampled_from(list(SOURCES)),
    via=st.sampled_from(list(TARGETS)),
    d_in=st.integers(1, 9),
    d_sae=st.integers(1, 9),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    apply=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_round_trips_over_random_shapes_dtypes_and_biases(
    kind: str, via: str, d_in: int, d_sae: int, dtype: torch.dtype, apply: bool, seed: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if kind == "gated":
            weights: JumpReLUWeights | GatedWeights = make_gated(d_in, d_sae, dtype, apply, seed)
        else:
            weights = make_jumprelu(d_in, d_sae, dtype, apply, seed)
        if kind == "gemma-scope":
            src = root / "params.npz"
            write_gemma_scope(weights, src)
        else:
            src = root / "src"
            src.mkdir()
            writer = write_dictionary_learning if kind == "dictionary-learning" else write_sae_lens
            writer(weights, src)
        mid, back = _dst(root, via, "mid"), _dst(root, SOURCES[kind], "back")
        convert(src, mid, via, n_inputs=64)
        convert(mid, back, SOURCES[kind], n_inputs=64)
        result = verify(load(src), load(back), n_inputs=64, seed=seed)
        assert result.unexplained_mismatches == 0 and result.exact(1e-5), result.summary()


@pytest.mark.parametrize("arch", ["jumprelu", "gated", "topk"])
def test_saved_sae_lens_sae_gets_unit_decoder_rows_where_exact(tmp_path: Path, arch: str) -> None:
    from sae_lens import (
        SAE,
        GatedSAE,
        GatedSAEConfig,
        JumpReLUSAE,
        JumpReLUSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )

    from sae_lens_jumprelu.convert.sae_lens_format import fold_saved_decoder_norms

    make = {
        "jumprelu": lambda: JumpReLUSAE(JumpReLUSAEConfig(d_in=6, d_sae=10)),
        "gated": lambda: GatedSAE(GatedSAEConfig(d_in=6, d_sae=10)),
        "topk": lambda: TopKSAE(TopKSAEConfig(d_in=6, d_sae=10, k=3)),
    }
    torch.manual_seed(0)
    sae = make[arch]()
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        sae.W_dec.mul_(torch.linspace(0.5, 4.0, 10)[:, None])
    sae.save_model(tmp_path)
    before = (tmp_path / "sae_weights.safetensors").read_bytes()
    assert fold_saved_decoder_norms(tmp_path) is (arch != "topk")
    loaded = SAE.load_from_disk(tmp_path)
    x = torch.randn(256, 6)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), sae(x), rtol=1e-5, atol=1e-5)
        assert torch.equal(loaded.encode(x) != 0, sae.encode(x) != 0)
        assert (sae.encode(x) != 0).any()
    if arch == "topk":
        assert (tmp_path / "sae_weights.safetensors").read_bytes() == before
    else:
        torch.testing.assert_close(loaded.W_dec.norm(dim=-1), torch.ones(10))
        assert fold_saved_decoder_norms(tmp_path) is False  # already unit: nothing rewritten


def test_gemma_scope_without_its_suffix_is_refused_before_writing(tmp_path: Path) -> None:
    src = _write_source("jumprelu", tmp_path)
    with pytest.raises(
        ConversionError,
        match=r"named .npz or .safetensors \(Gemma Scope 2\); give e.g. .*params.npz",
    ):
        convert(src, tmp_path / "params", "gemma-scope")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jumprelu"]
