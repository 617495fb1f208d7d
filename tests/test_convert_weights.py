"""JumpReLUWeights / GatedWeights: validation, the b_dec fold and the Gated <-> JumpReLU maps."""

import pytest
import torch
from convert_factories import make_gated, make_jumprelu

from sae_lens_jumprelu.convert import (
    ConversionError,
    GatedWeights,
    InexactConversionError,
    JumpReLUWeights,
    gated_to_jumprelu,
    jumprelu_to_gated,
)


def test_gated_to_jumprelu_hand_computed() -> None:
    # d_in=2, d_sae=3; s = exp(r_mag) = (1, e, 1); theta = b_mag - s * b_gate
    gated = GatedWeights(
        W_enc=torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0]]),
        b_gate=torch.tensor([-0.5, 0.0, 1.0]),
        r_mag=torch.tensor([0.0, 1.0, 0.0]),
        b_mag=torch.tensor([0.0, 0.1, 0.2]),
        W_dec=torch.ones(3, 2),
        b_dec=torch.zeros(2),
    )
    imported = gated_to_jumprelu(gated)
    w = imported.weights
    e = torch.e
    torch.testing.assert_close(w.W_enc, torch.tensor([[1.0, 2 * e, 0.0], [0.0, e, -1.0]]))
    torch.testing.assert_close(w.b_enc, torch.tensor([0.0, 0.1, 0.2]))
    # theta = (0.5, 0.1, -0.8 -> 0): the third latent is a plain ReLU and is clamped
    torch.testing.assert_close(w.threshold, torch.tensor([0.5, 0.1, 0.0]))
    assert imported.clamped == [2] and imported.issues == []


def test_jumprelu_to_gated_maps_biases() -> None:
    w = make_jumprelu()
    g = jumprelu_to_gated(w)
    assert torch.equal(g.W_enc, w.W_enc) and torch.equal(g.r_mag, torch.zeros(w.d_sae))
    assert torch.equal(g.b_mag, w.b_enc)
    torch.testing.assert_close(g.b_gate, w.b_enc - w.threshold)


def test_b_dec_fold_round_trips() -> None:
    w = make_jumprelu(dtype=torch.float64, apply=True)
    folded = w.with_b_dec_applied(False)
    torch.testing.assert_close(folded.b_enc, w.b_enc - w.b_dec @ w.W_enc)
    back = folded.with_b_dec_applied(True)
    torch.testing.assert_close(back.b_enc, w.b_enc)
    assert back.apply_b_dec_to_input and w.with_b_dec_applied(True) is w


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("threshold", torch.tensor([0.1, -0.2, 0.0]), "negative thresholds"),
        ("threshold", torch.tensor([0.1, float("nan"), 0.0]), "NaN/Inf"),
        ("W_enc", torch.full((2, 3), float("inf")), "NaN/Inf"),
        ("b_enc", torch.zeros(4), r"b_enc has shape \[4\], expected \[3\]"),
        ("W_dec", torch.zeros(2, 3), "saved transposed"),
        ("b_dec", torch.zeros(2, dtype=torch.float64), "mixed dtypes"),
        ("threshold", torch.zeros(3, dtype=torch.int64), "expected a float dtype"),
    ],
)
def test_bad_weights_name_the_problem(field: str, value: torch.Tensor, message: str) -> None:
    good = {
        "W_enc": torch.zeros(2, 3),
        "b_enc": torch.zeros(3),
        "W_dec": torch.zeros(3, 2),
        "b_dec": torch.zeros(2),
        "threshold": torch.zeros(3),
    }
    with pytest.raises(ConversionError, match=message):
        JumpReLUWeights(**{**good, field: value})


def test_underflowing_r_mag_is_refused_unless_allowed() -> None:
    gated = make_gated(d_in=4, d_sae=5)
    r_mag = gated.r_mag.clone()
    r_mag[3] = -200.0  # exp(-200) == 0 in float32: the magnitude path is the constant relu(b_mag)
    bad = GatedWeights(**{**gated.state_dict(), "r_mag": r_mag})
    with pytest.raises(
        InexactConversionError, match=r"cannot be converted exactly \(first \[3\]\)"
    ):
        gated_to_jumprelu(bad)
    imported = gated_to_jumprelu(bad, allow_inexact=True)
    assert imported.issues[0].latents == [3]
