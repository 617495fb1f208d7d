"""Sparsity penalties for JumpReLU SAEs, and the controller behind target-L0 mode.

Each penalty maps one batch to a scalar whose gradient reaches the threshold through the STEs of
``ste.py`` (and, for ``tanh``, the encoder and decoder too). Names follow SAELens's
``jumprelu_sparsity_loss_mode`` so a config means the same thing in both packages:

- ``step``:      lambda * L0                                  (Rajamanoharan et al. 2024, eq. 9)
- ``tanh``:      lambda * sum_i tanh(c * f_i * ||d_i||)      (Anthropic, January 2025)
- ``quadratic``: lambda * (2 / K) * (L0 - K)^2               (Gemma Scope 2; SAELens's form)
"""

from dataclasses import dataclass
from typing import Protocol

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sae_lens_jumprelu.ste import KernelName, heaviside


@dataclass(frozen=True)
class PenaltyInputs:
    """What a penalty may look at for one batch (all in the SAE's normalised units)."""

    hidden_pre: Float[Tensor, "batch d_sae"]
    """Pre-activations ``pi``."""
    feature_acts: Float[Tensor, "batch d_sae"]
    """JumpReLU outputs ``f``."""
    threshold: Float[Tensor, " d_sae"]
    """Thresholds ``theta`` (float32)."""
    decoder_norms: Float[Tensor, " d_sae"]
    """``||d_i||``, the decoder row norms."""
    bandwidth: float
    kernel: KernelName
    ste_to_input: bool
    tanh_scale: float
    """``c`` of the tanh penalty."""

    def per_token(self, values: Float[Tensor, "batch d_sae"]) -> Float[Tensor, " batch"]:
        """Sum over latents, in float32."""
        return values.sum(dim=-1, dtype=torch.float32)


@dataclass(frozen=True)
class EntryPenaltyInputs:
    """``PenaltyInputs`` of a sparse step (``sparse_step.py``): one value per (token, latent)
    entry the step keeps. Latents outside those entries have ``f = 0`` and zero
    pseudo-derivatives, so they add nothing to any penalty or to its gradient."""

    hidden_pre: Float[Tensor, " nnz"]
    feature_acts: Float[Tensor, " nnz"]
    threshold: Float[Tensor, " nnz"]
    """theta of each entry's latent (float32)."""
    decoder_norms: Float[Tensor, " nnz"]
    """||d_i|| of each entry's latent."""
    bandwidth: float
    kernel: KernelName
    ste_to_input: bool
    tanh_scale: float
    rows: Int[Tensor, " nnz"]
    """Token of each entry."""
    n_rows: int
    """Tokens in the batch."""

    def per_token(self, values: Float[Tensor, " nnz"]) -> Float[Tensor, " n_rows"]:
        """Sum of each token's entries, in float32."""
        sums = torch.zeros(self.n_rows, dtype=torch.float32, device=values.device)
        return sums.index_add(0, self.rows, values.float())


AnyPenaltyInputs = PenaltyInputs | EntryPenaltyInputs


class SparsityPenalty(Protocol):
    def __call__(
        self, inputs: AnyPenaltyInputs, target_l0: float | None
    ) -> Float[Tensor, " batch"]:
        """Per-token penalty before multiplication by the coefficient."""
        ...


def per_token_l0(inputs: AnyPenaltyInputs) -> Float[Tensor, " batch"]:
    """L0 of each token through the Heaviside STE (the paper applies it to ``pi``, not ``f``)."""
    step = heaviside(
        inputs.hidden_pre, inputs.threshold, inputs.bandwidth, inputs.kernel, inputs.ste_to_input
    )
    return inputs.per_token(step)


def step_penalty(inputs: AnyPenaltyInputs, target_l0: float | None) -> Float[Tensor, " batch"]:
    return per_token_l0(inputs)


def tanh_penalty(inputs: AnyPenaltyInputs, target_l0: float | None) -> Float[Tensor, " batch"]:
    weighted = inputs.feature_acts.float() * inputs.decoder_norms.float()
    return inputs.per_token(torch.tanh(inputs.tanh_scale * weighted))


def quadratic_penalty(inputs: AnyPenaltyInputs, target_l0: float | None) -> Float[Tensor, " batch"]:
    if target_l0 is None:
        raise ValueError("the quadratic sparsity penalty needs target_l0")
    return 2.0 / target_l0 * (per_token_l0(inputs) - target_l0) ** 2


PENALTIES: dict[str, SparsityPenalty] = {
    "step": step_penalty,
    "tanh": tanh_penalty,
    "quadratic": quadratic_penalty,
}


CLAMPED_RATE_FRACTION = 0.1
"""Integral rate of ``TargetL0Controller`` while its error is clamped, relative to ``rate``."""


INTEGRAL_BOUND = 1e6
"""Largest |integral| of ``TargetL0Controller``, in units of the initial lambda: beyond it the
target is unreachable and integrating further would only wind up."""


class TargetL0Controller:
    """Proportional-integral control of lambda so the batch L0 settles at ``target_l0``.

    With ``e = clamp(log((L0 + 0.5) / (target + 0.5)), -1, 1)`` measured on the current batch,
    ``lambda = lambda_0 * (I + gain * e)`` and then ``I += rate * e * max(|I|, 1)``, at a tenth
    of ``rate`` while the clamp is active; ``I`` starts at 1. Far from zero the integral moves
    geometrically, as a controller on log(lambda) would, so one rate serves lambdas across
    orders of magnitude; near zero it moves linearly and can change sign. Lambda is signed on
    purpose: the
    reconstruction's own straight-through gradient raises thresholds too, and on real
    activations it alone held L0 below the target. A controller on log(lambda) (lambda > 0) let
    lambda fall to ~3e-4 and L0 settle at 21 for target 32 (Gemma 3 270M layer 6, 2026-12-02);
    a negative lambda pulls the thresholds back down. The log error keeps the correction
    relative to the target; the clamp bounds it while L0 is far off (at initialisation half the
    latents fire). The proportional term lowers lambda as soon as L0 crosses the target, before
    the integral catches up; the slower integral while clamped is anti-windup (in the first
    hundred-odd steps L0 is far above any target). ``I`` is a float32 buffer of the SAE, so it
    is saved with checkpoints and resumes exactly.
    """

    def __init__(self, target_l0: float, rate: float, gain: float, initial: float) -> None:
        self.target_l0 = target_l0
        self.rate = rate
        self.gain = gain
        self.initial = initial
        """lambda_0, the scale of the output."""

    @torch.no_grad()
    def step(self, integral: Tensor, batch_l0: Tensor) -> Tensor:
        """lambda for this batch; advances ``integral`` in place."""
        # +0.5 on both sides keeps L0 = 0 finite and the settling point exactly at the target.
        log_ratio = torch.log((batch_l0.float() + 0.5) / (self.target_l0 + 0.5))
        error = log_ratio.clamp(-1.0, 1.0)
        coefficient = self.initial * (integral + self.gain * error)
        clamped = log_ratio.abs() > 1.0
        rate = torch.where(clamped, CLAMPED_RATE_FRACTION * self.rate, self.rate)
        integral.add_(rate * error * integral.abs().clamp(min=1.0))
        integral.clamp_(-INTEGRAL_BOUND, INTEGRAL_BOUND)
        return coefficient
