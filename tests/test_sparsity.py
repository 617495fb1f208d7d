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
START = -7.0  # log(lambda) integral, exact in float32


def controller_step(batch_l0: float, integral: float = START) -> tuple[float, float]:
    """(change of the integral, log of the returned lambda) after one step at ``batch_l0``."""
    state = torch.tensor(integral, dtype=torch.float32)
    coefficient = TargetL0Controller(TARGET, RATE, GAIN).step(state, torch.tensor(batch_l0))
    return state.item() - integral, math.log(coefficient.item())


@pytest.mark.parametrize("batch_l0", [8.25, 9.0, 12.0, 40.0, 3000.0])
def test_controller_raises_lambda_above_target(batch_l0: float) -> None:
    change, log_lambda = controller_step(batch_l0)
    assert change > 0
    assert log_lambda > START


@pytest.mark.parametrize("batch_l0", [0.0, 1.0, 6.0, 7.5, 7.75])
def test_controller_lowers_lambda_below_target(batch_l0: float) -> None:
    # 7.5 and 7.75 are below the target too: a controller that pushes lambda up there settles
    # below K (an offset of 0.5 inside the log puts the fixed point at L0 = K - 0.5).
    change, log_lambda = controller_step(batch_l0)
    assert change < 0
    assert log_lambda < START


def test_controller_holds_lambda_at_target() -> None:
    # Integral control must have its fixed point at the target itself.
    change, log_lambda = controller_step(TARGET)
    assert change == pytest.approx(0.0, abs=1e-7)
    assert log_lambda == pytest.approx(START, abs=1e-6)


@pytest.mark.parametrize("batch_l0", [0.0, 0.5, 1.0, 7.0, 9.0, 20.0, 100.0, 1e5])
def test_controller_step_is_bounded(batch_l0: float) -> None:
    change, log_lambda = controller_step(batch_l0)
    # the integral moves by at most rate, lambda by at most a factor exp(gain) around it
    # (+ one float32 ulp of -7, 4.8e-7)
    assert abs(change) <= RATE + 5e-7
    assert abs(log_lambda - START) <= GAIN + 1e-6


@pytest.mark.parametrize(("batch_l0", "sign"), [(0.0, -1.0), (1e5, 1.0)])
def test_controller_saturates_far_from_target(batch_l0: float, sign: float) -> None:
    # e = clamp(log(L0 / K), -1, 1) = sign: lambda = exp(I + gain * e), then the integral moves
    # at a tenth of the rate (anti-windup).
    change, log_lambda = controller_step(batch_l0)
    assert change == pytest.approx(sign * RATE * 0.1, rel=1e-4)
    assert log_lambda == pytest.approx(START + sign * GAIN, abs=1e-5)


# Hand-computed: inside the clamp rate * e; outside it a tenth of rate * clamp(e) = 0.1 * rate.
@pytest.mark.parametrize(("log_ratio", "change"), [(0.9, 0.9 * RATE), (1.1, 0.1 * RATE)])
def test_controller_integrates_slower_only_while_clamped(log_ratio: float, change: float) -> None:
    batch_l0 = (TARGET + 0.5) * math.exp(log_ratio) - 0.5
    assert controller_step(batch_l0)[0] == pytest.approx(change, rel=1e-3)


@pytest.mark.parametrize(
    ("start", "batch_l0", "bound"),
    [(math.log(1e6), 1e5, math.log(1e6)), (math.log(1e-12), 0.0, math.log(1e-12))],
    ids=["upper", "lower"],
)
def test_controller_clamps_integral(start: float, batch_l0: float, bound: float) -> None:
    state = torch.tensor(start, dtype=torch.float32)
    controller = TargetL0Controller(TARGET, RATE, GAIN)
    for _ in range(5):
        controller.step(state, torch.tensor(batch_l0))
    assert state.item() == pytest.approx(bound, abs=1e-5)
