"""The in-memory representations every converter goes through: JumpReLU and Gated weights.

A JumpReLU SAE (SAELens's "jumprelu", Rajamanoharan et al. 2024) computes
``pre = x' @ W_enc + b_enc`` with ``x' = x - b_dec`` when ``apply_b_dec_to_input`` else ``x``,
``f = (pre > threshold) * relu(pre)`` and ``x_hat = f @ W_dec + b_dec``. Every format handled in
``sae_lens_jumprelu.convert`` is read into, and written from, ``JumpReLUWeights``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor


class ConversionError(ValueError):
    """A file or set of weights that cannot be converted; the message names the problem and fix."""


def _check_tensor(name: str, value: Tensor, shape: tuple[int, ...], source: str) -> None:
    if not isinstance(value, Tensor):
        raise ConversionError(f"{source}: {name} is a {type(value).__name__}, expected a tensor")
    if tuple(value.shape) != shape:
        raise ConversionError(
            f"{source}: {name} has shape {list(value.shape)}, expected {list(shape)} "
            "(W_enc is [d_in, d_sae], W_dec is [d_sae, d_in]); the file is from another SAE "
            "or its tensors were saved transposed"
        )
    if not value.is_floating_point():
        raise ConversionError(f"{source}: {name} has dtype {value.dtype}, expected a float dtype")
    bad = ~torch.isfinite(value)
    if bool(bad.any()):
        first = [int(i) for i in bad.nonzero()[0]]
        raise ConversionError(
            f"{source}: {name} has {int(bad.sum())} NaN/Inf entries (first at index {first}); "
            "the weights are corrupt, re-export them from a finite checkpoint"
        )


def _encoder_dims(W_enc: Tensor, source: str) -> tuple[int, int]:
    """``(d_in, d_sae)`` from a 2-D encoder matrix, or a clear error."""
    if W_enc.ndim != 2:
        raise ConversionError(
            f"{source}: W_enc must be 2-D [d_in, d_sae], got shape {list(W_enc.shape)}"
        )
    return W_enc.shape[0], W_enc.shape[1]


class _Autoencoder:
    """What both weight records share: an encoder ``W_enc [d_in, d_sae]`` with per-latent
    vectors, a decoder ``W_dec [d_sae, d_in]`` and ``b_dec [d_in]``, checked alike."""

    W_enc: Tensor
    W_dec: Tensor
    b_dec: Tensor
    source: str

    def _check_shapes(self, latent_vectors: tuple[str, ...]) -> None:
        d_in, d_sae = _encoder_dims(self.W_enc, self.source)
        _check_tensor("W_enc", self.W_enc, (d_in, d_sae), self.source)
        for name in latent_vectors:
            _check_tensor(name, getattr(self, name), (d_sae,), self.source)
        _check_tensor("W_dec", self.W_dec, (d_sae, d_in), self.source)
        _check_tensor("b_dec", self.b_dec, (d_in,), self.source)

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])


def decoder_norms(W_dec: Float[Tensor, "d_sae d_in"]) -> Float[Tensor, " d_sae"]:
    """``||d_i||`` in float64; a zero row gets 1, so folding leaves it (and its latent) alone."""
    norms = W_dec.double().norm(dim=-1)
    return torch.where(norms > 0, norms, torch.ones_like(norms))


@dataclass(frozen=True)
class JumpReLUWeights(_Autoencoder):
    """A JumpReLU SAE's weights plus the facts needed to run it; validated on construction."""

    W_enc: Float[Tensor, "d_in d_sae"]
    """Encoder matrix, inputs along rows."""
    b_enc: Float[Tensor, " d_sae"]
    """Encoder bias, added to the pre-activations."""
    W_dec: Float[Tensor, "d_sae d_in"]
    """Decoder matrix, one dictionary direction per row."""
    b_dec: Float[Tensor, " d_in"]
    """Decoder bias, added to the reconstruction (and subtracted from x if apply_b_dec_to_input)."""
    threshold: Float[Tensor, " d_sae"]
    """Per-latent JumpReLU threshold theta >= 0: a latent fires when its pre-activation > theta."""
    apply_b_dec_to_input: bool = False
    """Whether b_dec is subtracted from x before encoding (SAELens); False in Gemma Scope."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Format-independent facts carried along: hook_name, model_name, hook_head_index, ..."""
    source: str = "weights"
    """Where the weights came from, used in error messages."""

    def __post_init__(self) -> None:
        self._check_shapes(("b_enc", "threshold"))
        negative = (self.threshold < 0).nonzero().flatten()
        if len(negative):
            raise ConversionError(
                f"{self.source}: {len(negative)} negative thresholds (latents "
                f"{negative[:10].tolist()}, min {float(self.threshold.min()):.3g}); JumpReLU "
                "thresholds must be >= 0. A negative threshold acts like 0 under the ReLU: "
                "clamp them (threshold.clamp(min=0)) if that is what you mean"
            )
        dtypes = {t.dtype for t in (self.W_enc, self.b_enc, self.W_dec, self.b_dec)}
        if len(dtypes) != 1:
            raise ConversionError(
                f"{self.source}: weights have mixed dtypes {sorted(map(str, dtypes))}; "
                "cast them to one dtype first"
            )

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    def with_b_dec_applied(self, apply_b_dec_to_input: bool) -> JumpReLUWeights:
        """The same function with b_dec subtracted from x (True) or not (False).

        (x - b_dec) @ W_enc + b_enc = x @ W_enc + (b_enc - b_dec @ W_enc): only b_enc moves, and
        it is computed in float64 so the fold adds one rounding at most.
        """
        if apply_b_dec_to_input == self.apply_b_dec_to_input:
            return self
        shift = (self.b_dec.double() @ self.W_enc.double()).to(torch.float64)  # [d_sae]
        sign = -1.0 if apply_b_dec_to_input else 1.0
        # apply=True: b_enc' = b_enc + b_dec @ W_enc; apply=False: b_enc' = b_enc - b_dec @ W_enc
        b_enc = (self.b_enc.double() - sign * shift).to(self.dtype)
        return replace(self, b_enc=b_enc, apply_b_dec_to_input=apply_b_dec_to_input)

    def with_unit_decoder(self) -> JumpReLUWeights:
        """The same function with unit-norm decoder rows, as SAELens's ``fold_W_dec_norm``:
        latent i's W_enc column, b_enc and threshold times ``||d_i||``, its row divided by it
        (float64, one rounding). The active set is unchanged; zero rows stay as they are."""
        norms = decoder_norms(self.W_dec)
        return replace(
            self,
            W_enc=(self.W_enc.double() * norms).to(self.dtype),
            b_enc=(self.b_enc.double() * norms).to(self.dtype),
            W_dec=(self.W_dec.double() / norms[:, None]).to(self.dtype),
            threshold=(self.threshold.double() * norms).to(self.threshold.dtype),
        )

    def to(self, dtype: torch.dtype) -> JumpReLUWeights:
        """A copy with every tensor (threshold included) cast to ``dtype``."""
        cast = {k: getattr(self, k).to(dtype) for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
        return replace(self, threshold=self.threshold.to(dtype), **cast)

    def state_dict(self) -> dict[str, Tensor]:
        """SAELens "jumprelu" state dict (contiguous tensors, ready for safetensors)."""
        return {
            k: getattr(self, k).detach().contiguous()
            for k in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")
        }


@dataclass(frozen=True)
class GatedWeights(_Autoencoder):
    """SAELens "gated" weights.

    gate = x' @ W_enc + b_gate > 0, mag = relu(x' @ (W_enc exp(r_mag)) + b_mag), f = gate * mag.
    """

    W_enc: Float[Tensor, "d_in d_sae"]
    """Shared encoder matrix of the gate and (scaled by exp(r_mag)) magnitude paths."""
    b_gate: Float[Tensor, " d_sae"]
    """Gate-path bias: a latent is open where x' @ W_enc + b_gate > 0."""
    r_mag: Float[Tensor, " d_sae"]
    """Log-scale of the magnitude path's encoder columns."""
    b_mag: Float[Tensor, " d_sae"]
    """Magnitude-path bias."""
    W_dec: Float[Tensor, "d_sae d_in"]
    """Decoder matrix, one dictionary direction per row."""
    b_dec: Float[Tensor, " d_in"]
    """Decoder bias (subtracted from x first if apply_b_dec_to_input)."""
    apply_b_dec_to_input: bool = True
    """Whether b_dec is subtracted from x before encoding (SAELens's default)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Format-independent facts carried along: hook_name, model_name, ..."""
    source: str = "gated weights"
    """Where the weights came from, used in error messages."""

    def __post_init__(self) -> None:
        self._check_shapes(("b_gate", "r_mag", "b_mag"))

    def with_unit_decoder(self) -> GatedWeights:
        """The same function with unit-norm decoder rows: the gate and the magnitude of latent i
        scale by ``||d_i||`` (W_enc, b_gate and b_mag; r_mag is a ratio and stays)."""
        norms = decoder_norms(self.W_dec)
        dtype = self.W_enc.dtype
        return replace(
            self,
            W_enc=(self.W_enc.double() * norms).to(dtype),
            b_gate=(self.b_gate.double() * norms).to(dtype),
            b_mag=(self.b_mag.double() * norms).to(dtype),
            W_dec=(self.W_dec.double() / norms[:, None]).to(dtype),
        )

    def state_dict(self) -> dict[str, Tensor]:
        """SAELens "gated" state dict."""
        return {
            k: getattr(self, k).detach().contiguous()
            for k in ("W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec")
        }


def finfo_eps(dtype: torch.dtype) -> float:
    """Machine epsilon of a float dtype (used for rounding tolerances)."""
    return float(torch.finfo(dtype).eps) if dtype.is_floating_point else math.nan
