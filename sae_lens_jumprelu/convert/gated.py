"""Gated SAE (SAELens "gated") <-> JumpReLU, exactly.

A Gated SAE with tied gate/magnitude weights is a JumpReLU SAE (Rajamanoharan et al. 2024,
"Jumping Ahead", section 2). With s = exp(r_mag) > 0 and pre = x' @ (W_enc s) + b_mag, the gate
x' @ W_enc + b_gate > 0 is pre > b_mag - s b_gate, so SAELens's Gated forward is
``f = (pre > theta) * relu(pre)`` with theta = b_mag - s b_gate:

- Gated -> JumpReLU: W_enc' = W_enc s, b_enc' = b_mag, theta = b_mag - s b_gate. Where theta < 0
  the Gated latent is a plain ReLU; theta = 0 reproduces it exactly because every JumpReLU
  forward here (SAELens's, Gemma Scope's reference, dictionary_learning's) also applies ReLU,
  so those latents are clamped and reported, not refused.
- JumpReLU -> Gated: W_enc kept, r_mag = 0, b_mag = b_enc, b_gate = b_enc - theta.

Not exact, so refused unless ``allow_inexact``: latents whose exp(r_mag) underflows to 0 or
overflows in the weights' dtype (the Gated magnitude path is then constant or infinite, which
no JumpReLU latent reproduces). Arithmetic is done in float64 and cast once at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from sae_lens_jumprelu.convert.weights import ConversionError, GatedWeights, JumpReLUWeights


@dataclass(frozen=True)
class Inexactness:
    """A set of latents a conversion cannot reproduce exactly, and why."""

    latents: list[int]
    """Indices of the affected latents."""
    reason: str
    """What makes them inexact."""


class InexactConversionError(ConversionError):
    """Raised when a conversion cannot be exact and ``allow_inexact`` was not given."""

    def __init__(self, message: str, issues: list[Inexactness]) -> None:
        super().__init__(message)
        self.issues = issues


@dataclass(frozen=True)
class GatedImport:
    """The JumpReLU form of a Gated SAE and what the conversion had to change."""

    weights: JumpReLUWeights
    """The equivalent JumpReLU weights."""
    clamped: list[int]
    """Latents whose implied threshold was negative and set to 0 (exact under the ReLU)."""
    issues: list[Inexactness]
    """Latents that are not reproduced exactly (empty unless ``allow_inexact``)."""


def gated_to_jumprelu(gated: GatedWeights, allow_inexact: bool = False) -> GatedImport:
    """The JumpReLU SAE computing the same function as ``gated`` (same ``apply_b_dec_to_input``)."""
    dtype = gated.W_enc.dtype
    scale_native = gated.r_mag.exp()  # what SAELens's forward computes, in the weights' dtype
    broken = ((scale_native == 0) | ~torch.isfinite(scale_native)).nonzero().flatten().tolist()
    issues = []
    if broken:
        issues.append(
            Inexactness(
                broken,
                f"exp(r_mag) under/overflows in {dtype} (r_mag in "
                f"[{float(gated.r_mag[broken].min()):.4g}, {float(gated.r_mag[broken].max()):.4g}])"
                ": the Gated magnitude path is constant or infinite, no JumpReLU latent matches",
            )
        )
        if not allow_inexact:
            raise InexactConversionError(
                f"{gated.source}: {len(broken)} Gated latents cannot be converted exactly "
                f"(first {broken[:10]}): {issues[0].reason}. Pass allow_inexact=True "
                "(--allow-inexact) to convert them anyway with exp(r_mag) in float64",
                issues,
            )
    scale = gated.r_mag.double().exp()  # [d_sae]
    theta = gated.b_mag.double() - scale * gated.b_gate.double()  # [d_sae]
    clamped = (theta < 0).nonzero().flatten().tolist()
    weights = JumpReLUWeights(
        W_enc=(gated.W_enc.double() * scale).to(dtype),  # [d_in, d_sae] * [d_sae]
        b_enc=gated.b_mag.clone(),
        W_dec=gated.W_dec.clone(),
        b_dec=gated.b_dec.clone(),
        threshold=theta.clamp(min=0).to(dtype),
        apply_b_dec_to_input=gated.apply_b_dec_to_input,
        metadata=dict(gated.metadata),
        source=gated.source,
    )
    return GatedImport(weights, clamped, issues)


def jumprelu_to_gated(
    weights: JumpReLUWeights, apply_b_dec_to_input: bool | None = None
) -> GatedWeights:
    """The Gated SAE computing the same function as ``weights``.

    ``apply_b_dec_to_input`` of the result defaults to that of ``weights``; a different value
    folds b_dec @ W_enc into both biases.
    """
    if apply_b_dec_to_input is not None:
        weights = weights.with_b_dec_applied(apply_b_dec_to_input)
    dtype = weights.dtype
    return GatedWeights(
        W_enc=weights.W_enc.clone(),
        b_gate=(weights.b_enc.double() - weights.threshold.double()).to(dtype),
        r_mag=torch.zeros_like(weights.b_enc),
        b_mag=weights.b_enc.clone(),
        W_dec=weights.W_dec.clone(),
        b_dec=weights.b_dec.clone(),
        apply_b_dec_to_input=weights.apply_b_dec_to_input,
        metadata=dict(weights.metadata),
        source=weights.source,
    )


def gated_with_b_dec_applied(gated: GatedWeights, apply_b_dec_to_input: bool) -> GatedWeights:
    """The same Gated function with b_dec subtracted from x (True) or not (False).

    The shift b_dec @ W_enc moves b_gate, and b_mag by exp(r_mag) times it (as SAELens's
    ``GatedSAE.fold_activation_whitening`` does); computed in float64.
    """
    if apply_b_dec_to_input == gated.apply_b_dec_to_input:
        return gated
    dtype = gated.W_enc.dtype
    shift = gated.b_dec.double() @ gated.W_enc.double()  # [d_sae]
    sign = 1.0 if apply_b_dec_to_input else -1.0
    return replace(
        gated,
        b_gate=(gated.b_gate.double() + sign * shift).to(dtype),
        b_mag=(gated.b_mag.double() + sign * shift * gated.r_mag.double().exp()).to(dtype),
        apply_b_dec_to_input=apply_b_dec_to_input,
    )
