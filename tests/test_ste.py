"""Straight-through estimators: exact forward, the paper's pseudo-derivatives backward
(Rajamanoharan et al. 2024, eqs. 10-11), and agreement with SAELens's ``JumpReLU``/``Step``."""

import pytest
import torch
from jaxtyping import TypeCheckError
from sae_lens.saes.jumprelu_sae import JumpReLU as SAELensJumpReLU
from sae_lens.saes.jumprelu_sae import Step as SAELensStep

from sae_lens_jumprelu.ste import KERNELS, heaviside, jumprelu

# Exactly representable values; z == theta at [0, 0], [0, 2] and [1, 1] (must be inactive).
Z = torch.tensor([[0.5, 1.0, 0.0], [-1.0, 0.25, 2.0], [0.625, 0.125, -0.5]])
THETA = torch.tensor([0.5, 0.25, 0.0])
EPS = 0.5
# (z - theta) / eps = [[0, 1.5, 0], [-3, 0, 4], [0.25, -0.25, -1]]

EXPECTED_JUMPRELU = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 2.0], [0.625, 0.0, 0.0]])
EXPECTED_HEAVISIDE = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])

# K(u) / eps, by hand, for the u above.
WINDOW = {
    "rectangle": torch.tensor([[2.0, 0.0, 2.0], [0.0, 2.0, 0.0], [2.0, 2.0, 0.0]]),
    "triangle": torch.tensor([[2.0, 0.0, 2.0], [0.0, 2.0, 0.0], [1.5, 1.5, 0.0]]),
}
# With upstream gradient 1: d/dtheta sum H = -(column sums of K/eps);
# d/dtheta sum JumpReLU = -theta * (column sums of K/eps).
EXPECTED_GRAD_THETA = {
    ("heaviside", "rectangle"): torch.tensor([-4.0, -4.0, -2.0]),
    ("heaviside", "triangle"): torch.tensor([-3.5, -3.5, -2.0]),
    ("jumprelu", "rectangle"): torch.tensor([-2.0, -1.0, 0.0]),
    ("jumprelu", "triangle"): torch.tensor([-1.75, -0.875, 0.0]),
}
FUNCTIONS = {"jumprelu": jumprelu, "heaviside": heaviside}


def test_jumprelu_forward_is_exact_and_inactive_at_threshold() -> None:
    out = jumprelu(Z, THETA, EPS)
    assert torch.equal(out, EXPECTED_JUMPRELU)


def test_heaviside_forward_is_exact_and_inactive_at_threshold() -> None:
    out = heaviside(Z, THETA, EPS)
    assert torch.equal(out, EXPECTED_HEAVISIDE)


@pytest.mark.parametrize("kernel", ["rectangle", "triangle"])
@pytest.mark.parametrize("name", ["jumprelu", "heaviside"])
def test_threshold_grad_hand_computed(name: str, kernel: str) -> None:
    theta = THETA.clone().requires_grad_(True)
    FUNCTIONS[name](Z, theta, EPS, kernel).sum().backward()
    assert theta.grad is not None
    torch.testing.assert_close(theta.grad, EXPECTED_GRAD_THETA[(name, kernel)], rtol=0, atol=1e-7)


@pytest.mark.parametrize("kernel", ["rectangle", "triangle"])
def test_jumprelu_input_grad_hand_computed(kernel: str) -> None:
    z = Z.clone().requires_grad_(True)
    jumprelu(z, THETA, EPS, kernel).sum().backward()
    # d/dz JumpReLU = H(z - theta), nothing from the kernel.
    assert torch.equal(z.grad, EXPECTED_HEAVISIDE)

    z = Z.clone().requires_grad_(True)
    jumprelu(z, THETA, EPS, kernel, ste_to_input=True).sum().backward()
    # ste_to_input adds +(theta / eps) K.
    torch.testing.assert_close(
        z.grad, EXPECTED_HEAVISIDE + THETA * WINDOW[kernel], rtol=0, atol=1e-7
    )


@pytest.mark.parametrize("kernel", ["rectangle", "triangle"])
def test_heaviside_input_grad_hand_computed(kernel: str) -> None:
    z = Z.clone().requires_grad_(True)
    theta = THETA.clone().requires_grad_(True)  # so that backward has somewhere to go
    heaviside(z, theta, EPS, kernel).sum().backward()
    assert z.grad is None or torch.equal(z.grad, torch.zeros_like(Z))

    z = Z.clone().requires_grad_(True)
    heaviside(z, THETA, EPS, kernel, ste_to_input=True).sum().backward()
    # ste_to_input: +(1 / eps) K.
    torch.testing.assert_close(z.grad, WINDOW[kernel], rtol=0, atol=1e-7)


def _analytic_grads(
    name: str,
    z: torch.Tensor,
    theta: torch.Tensor,
    g: torch.Tensor,
    eps: float,
    kernel: str,
    ste_to_input: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo-derivatives of the paper with upstream gradient ``g``, written out directly."""
    u = (z - theta) / eps
    k = KERNELS[kernel](u) / eps
    active = (z > theta).float()
    if name == "jumprelu":
        grad_theta = -(theta * k * g).reshape(-1, z.shape[-1]).sum(0)
        grad_z = active * g + (theta * k * g if ste_to_input else 0.0)
    else:
        grad_theta = -(k * g).reshape(-1, z.shape[-1]).sum(0)
        grad_z = k * g if ste_to_input else torch.zeros_like(z)
    return grad_theta, grad_z


@pytest.mark.parametrize("shape", [(64, 5), (4, 16, 5)], ids=["2d", "3d"])
@pytest.mark.parametrize("ste_to_input", [False, True])
@pytest.mark.parametrize("kernel", ["rectangle", "triangle"])
@pytest.mark.parametrize("name", ["jumprelu", "heaviside"])
def test_grads_match_analytic_pseudo_derivatives(
    name: str, kernel: str, ste_to_input: bool, shape: tuple[int, ...]
) -> None:
    eps = 0.3
    z = (torch.randn(shape) * 0.5 + 0.3).requires_grad_(True)
    theta = (torch.rand(shape[-1]) * 0.6).requires_grad_(True)
    g = torch.randn(shape)  # a non-uniform upstream gradient
    (FUNCTIONS[name](z, theta, eps, kernel, ste_to_input) * g).sum().backward()

    expected_theta, expected_z = _analytic_grads(
        name, z.detach(), theta.detach(), g, eps, kernel, ste_to_input
    )
    assert theta.grad is not None and theta.grad.shape == (shape[-1],)
    assert expected_theta.abs().max() > 0  # the window catches some pre-activations
    torch.testing.assert_close(theta.grad, expected_theta, rtol=1e-5, atol=1e-6)
    got_z = z.grad if z.grad is not None else torch.zeros(shape)
    torch.testing.assert_close(got_z, expected_z, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["jumprelu", "heaviside"])
def test_bf16_input_gives_fp32_threshold_grad_matching_fp32(name: str) -> None:
    # 8192 tokens: a bf16 sum of ~1e3 kernel hits would be off by ~0.4% (8 mantissa bits).
    eps = 0.05
    z32 = torch.randn(8192, 3) * 0.3 + 0.2
    z16 = z32.bfloat16()
    grads = {}
    for dtype, z in [("bf16", z16), ("fp32", z16.float())]:  # same values, different dtype
        theta = torch.tensor([0.1, 0.2, 0.3], requires_grad=True)
        FUNCTIONS[name](z, theta, eps).float().sum().backward()
        grads[dtype] = theta.grad
    assert grads["bf16"].dtype == torch.float32
    torch.testing.assert_close(grads["bf16"], grads["fp32"], rtol=1e-6, atol=0)


@pytest.mark.parametrize("ste_to_input", [False, True])
def test_jumprelu_matches_sae_lens(ste_to_input: bool) -> None:
    z = (torch.randn(256, 7) * 0.3).requires_grad_(True)
    z_ref = z.detach().clone().requires_grad_(True)
    theta = (torch.rand(7) * 0.3).requires_grad_(True)
    theta_ref = theta.detach().clone().requires_grad_(True)
    g = torch.randn(256, 7)

    out = jumprelu(z, theta, 0.1, "rectangle", ste_to_input)
    ref = SAELensJumpReLU.apply(z_ref, theta_ref, 0.1, ste_to_input)
    assert torch.equal(out, ref)
    (out * g).sum().backward()
    (ref * g).sum().backward()
    torch.testing.assert_close(theta.grad, theta_ref.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z.grad, z_ref.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ste_to_input", [False, True])
def test_heaviside_matches_sae_lens_step(ste_to_input: bool) -> None:
    z = (torch.randn(256, 7) * 0.3).requires_grad_(True)
    z_ref = z.detach().clone().requires_grad_(True)
    theta = (torch.rand(7) * 0.3).requires_grad_(True)
    theta_ref = theta.detach().clone().requires_grad_(True)
    g = torch.randn(256, 7)

    out = heaviside(z, theta, 0.1, "rectangle", ste_to_input)
    ref = SAELensStep.apply(z_ref, theta_ref, 0.1, ste_to_input)
    assert torch.equal(out, ref)
    (out * g).sum().backward()
    (ref * g).sum().backward()
    torch.testing.assert_close(theta.grad, theta_ref.grad, rtol=1e-5, atol=1e-6)
    if ste_to_input:
        torch.testing.assert_close(z.grad, z_ref.grad, rtol=1e-5, atol=1e-6)
    else:
        assert z.grad is None and z_ref.grad is None


def test_shape_annotations_are_checked() -> None:
    # torch would broadcast a 1-element threshold; the " d_sae" annotation must reject it,
    # which proves conftest's jaxtyping+beartype hook is active.
    with pytest.raises(TypeCheckError):
        jumprelu(torch.randn(4, 3), torch.zeros(1), 0.1)


@pytest.mark.parametrize("kernel", ["rectangle", "triangle"])
def test_ste_gradient_matches_finite_difference_of_expected_loss(kernel: str) -> None:
    """The paper's KDE argument (section 4): averaged over a batch, the STE gradient wrt theta
    estimates d/dtheta of the expected loss. One latent, pre-activations z ~ N(0.5, 0.3),
    target y = 0.8 z + noise, loss(theta) = E[(y - JumpReLU(z))^2] + lam E[H(z - theta)],
    at theta = 0.4, bandwidth eps = 0.01.

    Compared with a central difference (h = 0.02) computed exactly on the same 4e6 samples.
    Tolerance 5% relative. Budget: the kernel window holds ~50k samples (sampling noise ~1%),
    and the MSE term has an O(eps) bias of ~1.5% at eps = 0.01 because dL/df differs on the
    two sides of the jump (it grows to ~6% at eps = 0.04, so eps is kept small).
    """
    n_samples, lam, theta0, h, eps = 4_000_000, 0.05, 0.4, 0.02, 0.01
    gen = torch.Generator().manual_seed(1234)
    z = torch.randn(n_samples, 1, generator=gen) * 0.3 + 0.5
    y = 0.8 * z + 0.1 * torch.randn(n_samples, 1, generator=gen)

    def exact_terms(theta: float) -> tuple[float, float]:
        active = z > theta
        f = torch.where(active, z, torch.zeros_like(z))
        return (y - f).double().pow(2).mean().item(), lam * active.double().mean().item()

    plus, minus = exact_terms(theta0 + h), exact_terms(theta0 - h)
    fd_mse = (plus[0] - minus[0]) / (2 * h)
    fd_l0 = (plus[1] - minus[1]) / (2 * h)

    theta = torch.tensor([theta0], requires_grad=True)
    (y - jumprelu(z, theta, eps, kernel)).pow(2).mean().backward()
    ste_mse = theta.grad.item()
    theta = torch.tensor([theta0], requires_grad=True)
    (lam * heaviside(z, theta, eps, kernel).mean()).backward()
    ste_l0 = theta.grad.item()

    # Closed form: p(theta) E[2 y theta - theta^2 | z = theta] = 0.6 theta^2 p(0.4) ~ +0.121
    # and -lam p(0.4) ~ -0.063. A wrong sign or a missing factor theta fails below.
    assert fd_mse == pytest.approx(0.121, rel=0.05) and fd_l0 == pytest.approx(-0.063, rel=0.05)
    assert ste_mse == pytest.approx(fd_mse, rel=0.05)
    assert ste_l0 == pytest.approx(fd_l0, rel=0.05)
    # The terms have opposite signs, so the total is held to 5% of their magnitudes.
    assert abs((ste_mse + ste_l0) - (fd_mse + fd_l0)) <= 0.05 * (abs(fd_mse) + abs(fd_l0))
