"""Straight-through estimators (STEs) for JumpReLU and the Heaviside step.

Rajamanoharan et al. 2024 ("Jumping Ahead", section 4): the forward pass is exact; the backward
pass replaces the zero/undefined derivative of the jump at ``z == theta`` with a kernel density
estimate of width ``bandwidth`` (eps):

    d/dtheta JumpReLU_theta(z) = -(theta / eps) * K((z - theta) / eps)
    d/dtheta H(z - theta)      = -(1 / eps)     * K((z - theta) / eps)
    d/dz     JumpReLU_theta(z) = H(z - theta)
    d/dz     H(z - theta)      = 0

``ste_to_input=True`` also sends the kernel term to ``z`` (its negation, since both functions
depend on ``z - theta`` at the jump), as in Anthropic's January 2025 update.

Unlike SAELens's ``Step``/``JumpReLU`` these accept any number of leading dimensions, keep the
threshold and its gradient in float32 whatever the activation dtype (a bf16 sum over a 4096-token
batch loses the small kernel counts), and take the kernel by name.
"""

from collections.abc import Callable
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

KernelName = Literal["rectangle", "triangle"]


def rectangle_kernel(u: Tensor) -> Tensor:
    """The paper's kernel, ``K(u) = 1[|u| < 1/2]`` (integrates to 1)."""
    return (u.abs() < 0.5).to(u.dtype)


def triangle_kernel(u: Tensor) -> Tensor:
    """``K(u) = max(0, 1 - |u|)``: a smoother estimate with the same integral."""
    return (1.0 - u.abs()).clamp(min=0.0)


KERNELS: dict[str, Callable[[Tensor], Tensor]] = {
    "rectangle": rectangle_kernel,
    "triangle": triangle_kernel,
}

KERNEL_HALF_WIDTHS: dict[str, float] = {"rectangle": 0.5, "triangle": 1.0}
"""``K(u) = 0`` for ``|u| >= `` this: the sparse step only keeps entries inside the window."""


def _kernel_window(z: Tensor, threshold: Tensor, bandwidth: float, kernel: str) -> Tensor:
    """``K((z - theta) / eps) / eps`` in float32, shaped like ``z``."""
    u = (z.float() - threshold) / bandwidth
    return KERNELS[kernel](u) / bandwidth


def _sum_leading(t: Tensor) -> Tensor:
    """Sum over every dimension but the last, accumulating in float32."""
    if t.ndim == 1:  # nothing to sum (and reshape(-1, 0) of an empty tensor is ambiguous)
        return t.float()
    return t.reshape(-1, t.shape[-1]).sum(dim=0, dtype=torch.float32)


class _KernelSTE(torch.autograd.Function):
    """Shared context of the two estimators: both keep ``z`` and ``theta`` for the kernel."""

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        z, threshold, bandwidth, kernel, ste_to_input = inputs
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth, ctx.kernel, ctx.ste_to_input = bandwidth, kernel, ste_to_input

    @staticmethod
    def window(ctx: Any, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(z, theta, K((z - theta)/eps)/eps * grad_out)``, the last in float32."""
        z, threshold = ctx.saved_tensors
        kernel = _kernel_window(z, threshold, ctx.bandwidth, ctx.kernel)
        return z, threshold, kernel * grad_out.float()


class HeavisideSTE(_KernelSTE):
    """``H(z - theta)``; estimator: d/dtheta = -(1/eps) K((z - theta)/eps), d/dz = 0."""

    @staticmethod
    def forward(
        z: Tensor, threshold: Tensor, bandwidth: float, kernel: str, ste_to_input: bool
    ) -> Tensor:
        return (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor, None, None, None]:
        z, threshold, window = _KernelSTE.window(ctx, grad_out)
        grad_threshold = -_sum_leading(window).to(threshold.dtype)
        grad_z = window.to(z.dtype) if ctx.ste_to_input else None
        return grad_z, grad_threshold, None, None, None


class JumpReLUSTE(_KernelSTE):
    """``z * H(z - theta)``; estimator: d/dtheta = -(theta/eps) K((z - theta)/eps), d/dz = H."""

    @staticmethod
    def forward(
        z: Tensor, threshold: Tensor, bandwidth: float, kernel: str, ste_to_input: bool
    ) -> Tensor:
        return z * (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, Tensor, None, None, None]:
        z, threshold = ctx.saved_tensors
        grad_z, grad_threshold = jumprelu_pseudo_grads(
            z, threshold, grad_out, ctx.bandwidth, ctx.kernel, ctx.ste_to_input
        )
        return grad_z, _sum_leading(grad_threshold).to(threshold.dtype), None, None, None


def jumprelu_pseudo_grads(
    z: Tensor,
    threshold: Tensor,
    grad_out: Tensor,
    bandwidth: float,
    kernel: str,
    ste_to_input: bool,
) -> tuple[Tensor, Tensor]:
    """JumpReLU's estimator applied to ``grad_out``, elementwise: the gradient into ``z`` and
    each element's contribution to theta's gradient (float32, not yet summed)."""
    window = _kernel_window(z, threshold, bandwidth, kernel) * grad_out.float()
    jump = threshold * window  # the jump's height is theta
    grad_z = (z > threshold).to(grad_out.dtype) * grad_out
    if ste_to_input:
        grad_z = grad_z + jump.to(grad_z.dtype)
    return grad_z, -jump


def jumprelu(
    z: Float[Tensor, "*batch d_sae"],
    threshold: Float[Tensor, " d_sae"],
    bandwidth: float,
    kernel: KernelName = "rectangle",
    ste_to_input: bool = False,
) -> Float[Tensor, "*batch d_sae"]:
    """JumpReLU with the paper's pseudo-derivatives; ``threshold`` should be float32."""
    return JumpReLUSTE.apply(z, threshold, bandwidth, kernel, ste_to_input)  # type: ignore[no-any-return]


def heaviside(
    z: Float[Tensor, "*batch d_sae"],
    threshold: Float[Tensor, " d_sae"],
    bandwidth: float,
    kernel: KernelName = "rectangle",
    ste_to_input: bool = False,
) -> Float[Tensor, "*batch d_sae"]:
    """``H(z - threshold)`` with the paper's pseudo-derivatives; summed over latents: the L0."""
    return HeavisideSTE.apply(z, threshold, bandwidth, kernel, ste_to_input)  # type: ignore[no-any-return]
