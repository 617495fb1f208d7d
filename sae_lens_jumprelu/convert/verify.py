"""``verify(src, dst)``: run both SAEs through SAELens's own classes and compare their outputs.

Both sides are loaded into SAELens's ``JumpReLUSAE`` / ``GatedSAE`` and fed the same inputs:
Gaussian rows and heavy-tailed rows (Student-t, 2 degrees of freedom), at the scale of the SAE's
decoder bias and columns. A latent that is active on one side only counts as a rounding mismatch
when its pre-activation is within the float rounding bound of the threshold (a dot product of
length d_in: (d_in + 4) * eps * (|x| @ |W_enc| + |b_dec| @ |W_enc| + |b_enc| + theta)); rows with
such a mismatch are left out of the max differences, and any other mismatch is reported.
Latents are compared as their contributions ``f_i * ||d_i||``, so that an SAE and its unit-norm
fold (SAELens's ``fold_W_dec_norm``, which every export applies) compare equal.
Relative differences are taken against the magnitude of the summands (|x'| @ |W_enc| + |b_enc|
for the latents, |f| @ |W_dec| + |b_dec| for the reconstruction), the scale float rounding is
proportional to, so an output that cancels to near 0 does not inflate them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from sae_lens_jumprelu.convert.gated import gated_to_jumprelu
from sae_lens_jumprelu.convert.sae_lens_format import to_sae_lens_sae
from sae_lens_jumprelu.convert.weights import GatedWeights, JumpReLUWeights, decoder_norms

AnyWeights = JumpReLUWeights | GatedWeights


@dataclass(frozen=True)
class Verification:
    """Differences between two SAEs' outputs on the same inputs (float64 comparisons)."""

    n_inputs: int
    """Number of input rows compared (half Gaussian, half heavy-tailed)."""
    max_abs_encode: float
    """Max |f_src ||d_src|| - f_dst ||d_dst||| over latents, rows without a rounding mismatch."""
    max_rel_encode: float
    """Max over rows of that inf-norm / ||(|x'| @ |W_enc| + |b_enc|) ||d_src|| ||_inf."""
    max_abs_forward: float
    """Max |x_hat_src - x_hat_dst| (same rows)."""
    max_rel_forward: float
    """Max over rows of ||x_hat_src - x_hat_dst||_inf / ||(|f| @ |W_dec| + |b_dec|)||_inf."""
    rounding_mismatches: int
    """(row, latent) pairs active on one side only, within float rounding of the threshold."""
    unexplained_mismatches: int
    """(row, latent) pairs active on one side only and not explained by rounding."""
    per_latent_max_abs: Float[Tensor, " d_sae"]
    """Max contribution difference per latent over all rows (used to report inexact latents)."""

    def exact(self, rel_tol: float) -> bool:
        """No unexplained mismatch and relative differences within ``rel_tol``."""
        return (
            self.unexplained_mismatches == 0
            and self.max_rel_encode <= rel_tol
            and self.max_rel_forward <= rel_tol
        )

    def summary(self) -> str:
        return (
            f"verification on {self.n_inputs} random inputs (Gaussian + heavy-tailed): "
            f"encode max abs {self.max_abs_encode:.3g} rel {self.max_rel_encode:.3g}; "
            f"forward max abs {self.max_abs_forward:.3g} rel {self.max_rel_forward:.3g}; "
            f"active-set mismatches {self.rounding_mismatches} within rounding of the threshold, "
            f"{self.unexplained_mismatches} other"
        )


def as_jumprelu(weights: AnyWeights) -> JumpReLUWeights:
    if isinstance(weights, GatedWeights):
        return gated_to_jumprelu(weights, allow_inexact=True).weights
    return weights


def sample_inputs(weights: AnyWeights, n: int, seed: int) -> Float[Tensor, "n d_in"]:
    """Half Gaussian, half Student-t(2) rows around b_dec, scaled like the decoder columns."""
    gen = torch.Generator().manual_seed(seed)
    d_in = weights.d_in
    b_dec = weights.b_dec.double()
    scale = float(weights.W_dec.double().norm(dim=-1).mean()) or 1.0
    n_gauss = n - n // 2
    gauss = torch.randn(n_gauss, d_in, generator=gen, dtype=torch.float64)
    # Student-t(2) = N(0,1) / sqrt(chi2_2 / 2), chi2_2 = 2 * Exp(1)
    normal = torch.randn(n // 2, d_in, generator=gen, dtype=torch.float64)
    expo = torch.empty(n // 2, 1, dtype=torch.float64).exponential_(generator=gen)
    heavy = normal / expo.sqrt()
    x = torch.cat([gauss, heavy]) * scale * d_in**0.5 / 4 + b_dec  # [n, d_in]
    return x.float()


def _rounding_band(w: JumpReLUWeights, x: Tensor) -> tuple[Tensor, Tensor]:
    """Float64 pre-activations of ``w`` and the rounding bound around its threshold."""
    W = w.W_enc.double()
    x_in = x.double() - (w.b_dec.double() if w.apply_b_dec_to_input else 0.0)
    pre = x_in @ W + w.b_enc.double()  # [n, d_sae]
    eps = float(torch.finfo(w.dtype).eps)
    size = x_in.abs() @ W.abs() + w.b_dec.double().abs() @ W.abs() + w.b_enc.double().abs()
    bound = (w.d_in + 4) * eps * (size + w.threshold.double().abs())  # [n, d_sae]
    return pre, bound


def _rowwise_rel(diff: Tensor, scale: Tensor) -> float:
    num = diff.abs().amax(dim=-1)
    den = scale.amax(dim=-1)
    rel = torch.where(num == 0, torch.zeros_like(num), num / den.clamp(min=1e-300))
    return float(rel.max()) if rel.numel() else 0.0


@torch.no_grad()
def verify(src: AnyWeights, dst: AnyWeights, n_inputs: int = 512, seed: int = 0) -> Verification:
    """Compare encode and forward of ``src`` and ``dst`` as SAELens SAEs on random inputs."""
    if (src.d_in, src.d_sae) != (dst.d_in, dst.d_sae):
        raise ValueError(f"shapes differ: {(src.d_in, src.d_sae)} vs {(dst.d_in, dst.d_sae)}")
    x = sample_inputs(src, n_inputs, seed)
    sae_src, sae_dst = to_sae_lens_sae(src), to_sae_lens_sae(dst)
    f_src, f_dst = sae_src.encode(x).double(), sae_dst.encode(x).double()
    y_src, y_dst = sae_src(x).double(), sae_dst(x).double()
    mismatch = (f_src > 0) != (f_dst > 0)  # [n, d_sae]
    near = torch.zeros_like(mismatch)
    src_jr = as_jumprelu(src)
    norm_src, norm_dst = decoder_norms(src.W_dec), decoder_norms(dst.W_dec)
    f_src, f_dst = f_src * norm_src, f_dst * norm_dst
    x_in = x.double() - (src_jr.b_dec.double() if src_jr.apply_b_dec_to_input else 0.0)
    enc_scale = (x_in.abs() @ src_jr.W_enc.double().abs() + src_jr.b_enc.double().abs()) * norm_src
    dec_scale = (
        f_src.abs() @ (src_jr.W_dec.double().abs() / norm_src[:, None])
        + src_jr.b_dec.double().abs()
    )
    for w in (src_jr, as_jumprelu(dst)):
        pre, bound = _rounding_band(w, x)
        near |= (pre - w.threshold.double()).abs() <= bound
        near |= pre.abs() <= bound  # the ReLU's own boundary at 0
    rounding = mismatch & near
    clean = ~rounding.any(dim=-1)  # rows without a rounding mismatch
    d_f, d_y = (f_src - f_dst)[clean], (y_src - y_dst)[clean]
    return Verification(
        n_inputs=n_inputs,
        max_abs_encode=float(d_f.abs().max()) if d_f.numel() else 0.0,
        max_rel_encode=_rowwise_rel(d_f, enc_scale[clean]),
        max_abs_forward=float(d_y.abs().max()) if d_y.numel() else 0.0,
        max_rel_forward=_rowwise_rel(d_y, dec_scale[clean]),
        rounding_mismatches=int(rounding.sum()),
        unexplained_mismatches=int((mismatch & ~near).sum()),
        per_latent_max_abs=(f_src - f_dst).abs().amax(dim=0).float(),
    )
