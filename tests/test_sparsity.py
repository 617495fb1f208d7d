"""Sparsity penalties (hand-computed) and the target-L0 controller."""

import math

import pytest
import torch

from sae_lens_jumprelu.sparsity import (
    PENALTIES,
    PenaltyInputs,
    TargetL0Controller,
    per_token_l0,
    quadratic_penalty,
    step_penalty,
    tanh_penalty,
)

# Two tokens, three latents; theta = 0.5 for all. Token 0 fires latent 1 only (0.5 == theta is
# inactive), token 1 fires all three.
HIDDEN_PRE = torch.tensor([[0.5, 1.0, -2.0], [0.75, 2.0, 0.625]])
THRESHOLD = torch.tensor([0.5, 0.5, 0.5])
FEATURE_ACTS = torch.tensor([[0.0, 1.0, 0.0], [0.75, 2.0, 0.625]])
DECODER_NORMS = torch.tensor([2.0, 0.5, 1.0])


def make_inputs(threshold: torch.Tensor = THRESHOLD, **overrides: object) -> PenaltyInputs:
    fields: dict[str, object] = {
        "hidden_pre": HIDDEN_PRE,
        "feature_acts": FEATURE_ACTS,
        "threshold": threshold,
        "decoder_norms": DECODER_NORMS,
        "bandwidth": 0.5,
        "kernel": "rectangle",
        "ste_to_input": False,
        "tanh_scale": 4.0,
    }
    fields.update(overrides)
    return PenaltyInputs(**fields)  # type: ignore[arg-type]


def test_registry_names_match_sae_lens_modes() -> None:
    assert set(PENALTIES) == {"step", "tanh", "quadratic"}


def test_step_penalty_is_per_token_l0() -> None:
    inputs = make_inputs()
    expected = torch.tensor([1.0, 3.0])
    assert torch.equal(per_token_l0(inputs), expected)
    assert torch.equal(step_penalty(inputs, None), expected)


def test_step_penalty_threshold_grad_is_kernel_count() -> None:
    # bandwidth 0.5: |pi - theta| < 0.25 for [0,0] (0), [1,0] (0.25 -> no, boundary), [1,2]
    # (0.125); so d/dtheta sum_tokens L0 = -(1/0.5) * [1, 0, 1].
    theta = THRESHOLD.clone().requires_grad_(True)
    step_penalty(make_inputs(theta), None).sum().backward()
    torch.testing.assert_close(theta.grad, torch.tensor([-2.0, 0.0, -2.0]))


def test_tanh_penalty_hand_computed() -> None:
    # sum_i tanh(c f_i ||d_i||), c = 4:
    # token 0: tanh(4 * 1 * 0.5) = tanh(2);
    # token 1: tanh(4 * 0.75 * 2) + tanh(4 * 2 * 0.5) + tanh(4 * 0.625 * 1)
    #          = tanh(6) + tanh(4) + tanh(2.5)
    expected = torch.tensor([math.tanh(2.0), math.tanh(6.0) + math.tanh(4.0) + math.tanh(2.5)])
    torch.testing.assert_close(tanh_penalty(make_inputs(), None), expected)


def test_tanh_penalty_scale_is_used() -> None:
    got = tanh_penalty(make_inputs(tanh_scale=1.0), None)
    expected = torch.tensor([math.tanh(0.5), math.tanh(1.5) + math.tanh(1.0) + math.tanh(0.625)])
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    ("target_l0", "expected"),
    # 2 / K * (L0 - K)^2 with L0 = [1, 3]
    [(2.0, [1.0, 1.0]), (1.0, [0.0, 8.0]), (3.0, [8.0 / 3.0, 0.0])],
)
def test_quadratic_penalty_hand_computed(target_l0: float, expected: list[float]) -> None:
    got = quadratic_penalty(make_inputs(), target_l0)
    torch.testing.assert_close(got, torch.tensor(expected))


def test_quadratic_penalty_needs_target() -> None:
    with pytest.raises(ValueError, match="target_l0"):
        quadratic_penalty(make_inputs(), None)


# ---- target-L0 controller ---------------------------------------------------------------------

TARGET = 8.0
RATE = 0.01
GAIN = 0.5
LAMBDA_0 = 0.25  # lambda_0 and the integrals below are exact in float32
START = 2.0


def controller_step(batch_l0: float, integral: float = START) -> tuple[float, float]:
    """(change of the integral, returned lambda) after one step at ``batch_l0``."""
    state = torch.tensor(integral, dtype=torch.float32)
    controller = TargetL0Controller(TARGET, RATE, GAIN, initial=LAMBDA_0)
    coefficient = controller.step(state, torch.tensor(batch_l0))
    return state.item() - integral, coefficient.item()


def error_of(batch_l0: float) -> float:
    return max(-1.0, min(1.0, math.log((batch_l0 + 0.5) / (TARGET + 0.5))))


@pytest.mark.parametrize("batch_l0", [8.25, 9.0, 12.0, 40.0, 3000.0])
def test_controller_raises_lambda_above_target(batch_l0: float) -> None:
    change, coefficient = controller_step(batch_l0)
    assert change > 0
    assert coefficient > LAMBDA_0 * START


@pytest.mark.parametrize("batch_l0", [0.0, 1.0, 6.0, 7.5, 7.75])
def test_controller_lowers_lambda_below_target(batch_l0: float) -> None:
    # 7.5 and 7.75 are below the target too: a controller that pushes lambda up there settles
    # below K (an offset of 0.5 inside the log puts the fixed point at L0 = K - 0.5).
    change, coefficient = controller_step(batch_l0)
    assert change < 0
    assert coefficient < LAMBDA_0 * START


def test_controller_holds_lambda_at_target() -> None:
    # Integral control must have its fixed point at the target itself.
    change, coefficient = controller_step(TARGET)
    assert change == pytest.approx(0.0, abs=1e-7)
    assert coefficient == pytest.approx(LAMBDA_0 * START, rel=1e-6)


@pytest.mark.parametrize("batch_l0", [0.0, 1.0, 6.0, 9.0, 20.0, 1e5])
def test_controller_is_proportional_plus_integral(batch_l0: float) -> None:
    # Hand-computed: lambda = lambda_0 * (I + gain * e); the integral moves by
    # rate * e * max(|I|, 1) inside the clamp and by a tenth of it outside (anti-windup).
    e = error_of(batch_l0)
    clamped = abs(math.log((batch_l0 + 0.5) / (TARGET + 0.5))) > 1
    change, coefficient = controller_step(batch_l0)
    assert coefficient == pytest.approx(LAMBDA_0 * (START + GAIN * e), rel=1e-5)
    assert change == pytest.approx(START * RATE * e * (0.1 if clamped else 1.0), rel=1e-4, abs=1e-7)


@pytest.mark.parametrize(
    ("integral", "factor"), [(0.25, 1.0), (-0.5, 1.0), (40.0, 40.0), (-8.0, 8.0)]
)
def test_controller_integral_moves_geometrically_far_from_zero(
    integral: float, factor: float
) -> None:
    change, _ = controller_step(9.0, integral=integral)
    assert change == pytest.approx(factor * RATE * error_of(9.0), rel=1e-4)


def test_controller_lambda_turns_negative_when_l0_stays_low() -> None:
    # The reconstruction's own gradient raises thresholds; only a negative lambda lowers them.
    change, coefficient = controller_step(0.0, integral=0.25)
    assert coefficient == pytest.approx(LAMBDA_0 * (0.25 - GAIN), rel=1e-5)
    assert coefficient < 0


# Hand-computed at I = 2: inside the clamp 2 * rate * e; outside it a tenth of 2 * rate * clamp(e).
@pytest.mark.parametrize(("log_ratio", "change"), [(0.9, 1.8 * RATE), (1.1, 0.2 * RATE)])
def test_controller_integrates_slower_only_while_clamped(log_ratio: float, change: float) -> None:
    batch_l0 = (TARGET + 0.5) * math.exp(log_ratio) - 0.5
    assert controller_step(batch_l0)[0] == pytest.approx(change, rel=1e-3)


@pytest.mark.parametrize(("batch_l0", "bound"), [(1e5, 1e6), (0.0, -1e6)], ids=["upper", "lower"])
def test_controller_clamps_integral(batch_l0: float, bound: float) -> None:
    state = torch.tensor(bound, dtype=torch.float32)
    controller = TargetL0Controller(TARGET, RATE, GAIN, initial=LAMBDA_0)
    for _ in range(5):
        controller.step(state, torch.tensor(batch_l0))
    assert state.item() == bound
