"""Gated <-> JumpReLU against SAELens's own GatedSAE and JumpReLUSAE, loaded from disk."""

from pathlib import Path

import pytest
import torch
from convert_factories import inputs, make_gated, make_jumprelu
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sae_lens import SAE

from sae_lens_jumprelu.convert import (
    GatedWeights,
    JumpReLUWeights,
    gated_to_jumprelu,
    gated_with_b_dec_applied,
    jumprelu_to_gated,
    verify,
)
from sae_lens_jumprelu.convert.sae_lens_format import write_sae_lens


def _saved(weights: JumpReLUWeights | GatedWeights, path: Path) -> SAE:
    path.mkdir()
    write_sae_lens(weights, path)
    return SAE.load_from_disk(path)


def _compare(a: SAE, b: SAE, x: torch.Tensor) -> dict[str, float]:
    """Max abs / row-wise rel differences of encode and forward, and active-set mismatches."""
    with torch.no_grad():
        fa, fb, ya, yb = a.encode(x), b.encode(x), a(x), b(x)
    rel = lambda d, r: float((d.abs().amax(-1) / r.abs().amax(-1).clamp(min=1e-30)).max())  # noqa: E731
    return {
        "enc_abs": float((fa - fb).abs().max()),
        "enc_rel": rel(fa - fb, fa),
        "fwd_abs": float((ya - yb).abs().max()),
        "fwd_rel": rel(ya - yb, ya),
        "mismatches": int(((fa > 0) != (fb > 0)).sum()),
    }


@pytest.mark.parametrize("src_apply", [True, False])
@pytest.mark.parametrize("dst_apply", [True, False])
def test_gated_to_jumprelu_matches_sae_lens(
    tmp_path: Path, src_apply: bool, dst_apply: bool
) -> None:
    gated = make_gated(d_in=32, d_sae=64, apply=src_apply)
    jr = gated_to_jumprelu(gated).weights.with_b_dec_applied(dst_apply)
    sae_gated, sae_jr = _saved(gated, tmp_path / "g"), _saved(jr, tmp_path / "j")
    assert type(sae_gated).__name__ == "GatedSAE" and type(sae_jr).__name__ == "JumpReLUSAE"
    for kind, x in inputs(32, n=512).items():
        diff = _compare(sae_gated, sae_jr, x)
        print(f"gated(apply={src_apply}) -> jumprelu(apply={dst_apply}) {kind}: {diff}")
        assert diff["enc_rel"] <= 1e-5 and diff["fwd_rel"] <= 1e-5, diff
        assert diff["mismatches"] == 0, diff


@pytest.mark.parametrize("src_apply", [True, False])
@pytest.mark.parametrize("dst_apply", [True, False])
def test_jumprelu_to_gated_matches_sae_lens(
    tmp_path: Path, src_apply: bool, dst_apply: bool
) -> None:
    jr = make_jumprelu(d_in=32, d_sae=64, apply=src_apply)
    gated = jumprelu_to_gated(jr, dst_apply)
    sae_jr, sae_gated = _saved(jr, tmp_path / "j"), _saved(gated, tmp_path / "g")
    for kind, x in inputs(32, n=512).items():
        diff = _compare(sae_jr, sae_gated, x)
        print(f"jumprelu(apply={src_apply}) -> gated(apply={dst_apply}) {kind}: {diff}")
        assert diff["enc_rel"] <= 1e-5 and diff["fwd_rel"] <= 1e-5, diff
        assert diff["mismatches"] == 0, diff


def test_negative_implied_thresholds_are_plain_relu_latents() -> None:
    gated = make_gated(d_in=8, d_sae=32)
    imported = gated_to_jumprelu(gated)
    assert len(imported.clamped) > 5  # the factory makes about half of them negative
    result = verify(gated, imported.weights)
    assert result.unexplained_mismatches == 0 and result.exact(1e-5), result.summary()


_dtypes = st.sampled_from([torch.float32, torch.float64])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    d_in=st.integers(1, 12),
    d_sae=st.integers(1, 12),
    dtype=_dtypes,
    src_apply=st.booleans(),
    dst_apply=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_round_trips_keep_the_function(
    d_in: int, d_sae: int, dtype: torch.dtype, src_apply: bool, dst_apply: bool, seed: int
) -> None:
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    gated = make_gated(d_in, d_sae, dtype, src_apply, seed)
    jr = gated_to_jumprelu(gated).weights.with_b_dec_applied(dst_apply)
    back = jumprelu_to_gated(jr, src_apply)
    for dst in (jr, back):
        result = verify(gated, dst, n_inputs=64, seed=seed)
        assert result.unexplained_mismatches == 0 and result.exact(tol), result.summary()
    # JumpReLU -> Gated -> JumpReLU gives the same parameters (up to one rounding)
    w = make_jumprelu(d_in, d_sae, dtype, src_apply, seed)
    again = gated_to_jumprelu(jumprelu_to_gated(w, dst_apply)).weights.with_b_dec_applied(src_apply)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
        torch.testing.assert_close(getattr(again, name), getattr(w, name), rtol=tol, atol=tol)


@pytest.mark.parametrize("apply", [True, False])
def test_gated_b_dec_refold_keeps_the_function(apply: bool) -> None:
    gated = make_gated(d_in=16, d_sae=32, apply=apply)
    refolded = gated_with_b_dec_applied(gated, not apply)
    assert refolded.apply_b_dec_to_input is (not apply)
    result = verify(gated, refolded)
    assert result.unexplained_mismatches == 0 and result.exact(1e-5), result.summary()
