"""Sparsity penalties for JumpReLU SAEs, and the controller behind target-L0 mode.

Each penalty maps one batch to a scalar whose gradient reaches the threshold through the STEs of
``ste.py`` (and, for ``tanh``, the encoder and decoder too). Names follow SAELens's
``jumprelu_sparsity_loss_mode`` so a config means the same thing in both packages:

- ``step``:      lambda * L0                                  (Rajamanoharan et al. 2024, eq. 9)
- ``tanh``:      lambda * sum_i tanh(c * f_i * ||d_i||)      (Anthropic, January 2025)
- ``quadratic``: lambda * (2 / K) * (L0 - K)^2               (Gemma Scope 2; SAELens's form)
"""

import math
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


class TargetL0Controller:
    """Proportional-integral control of log(lambda) so the batch L0 settles at ``target_l0``.

    With ``e = clamp(log((L0 + 0.5) / (target + 0.5)), -1, 1)`` measured on the current batch,
    ``log(lambda) = I + gain * e`` and then ``I += rate * e``, at a tenth of ``rate`` while the
    clamp is active. Working on log(lambda) makes the control relative (one controller serves
    lambdas from 1e-6 to 10); the clamp bounds the change while L0 is far from the target (at
    initialisation half the latents fire). The integral alone overshoots: thresholds keep
    climbing towards the equilibrium of the lambda reached when L0 first meets the target
    (measured: target 5 undershot to 3.5 within 300 steps); the proportional term lowers lambda
    as soon as L0 crosses the target. The slower integral while clamped is anti-windup: in the
    first hundred-odd steps L0 is far above any target, and integrating there wound lambda up to
    ~30x its final value; L0 then undershot and stayed low (synthetic data, target 4, 1000
    steps, E||x||^2 = 3.4: L0 3.52 at full rate, 3.82 at a tenth, 3.78 with none). ``I`` is a
    float32 buffer of the SAE, so it is saved with checkpoints and resumes exactly.
    """

    def __init__(self, target_l0: float, rate: float, gain: float) -> None:
        self.target_l0 = target_l0
        self.rate = rate
        self.gain = gain

    @torch.no_grad()
    def step(self, integral: Tensor, batch_l0: Tensor) -> Tensor:
        """lambda for this batch; advances ``integral`` in place."""
        # +0.5 on both sides keeps L0 = 0 finite and the settling point exactly at the target.
        log_ratio = torch.log((batch_l0.float() + 0.5) / (self.target_l0 + 0.5))
        error = log_ratio.clamp(-1.0, 1.0)
        coefficient = (integral + self.gain * error).exp()
        clamped = log_ratio.abs() > 1.0
        integral.add_(torch.where(clamped, CLAMPED_RATE_FRACTION * self.rate, self.rate) * error)
        # lambda below 1e-12 or above 1e6 means the target is unreachable; stop integrating.
        integral.clamp_(math.log(1e-12), math.log(1e6))
        return coefficient
