"""Between ``JumpReLUSTETrainingSAE``'s training state and the weights it saves and loads.

Saved weights are SAELens's plain ``jumprelu``: raw input units, unit-norm decoder rows, theta in
float32. Loading also accepts this class's checkpoints and the older names of its state.
"""

import math
from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from sae_lens_jumprelu.convert.weights import decoder_norms


@torch.no_grad()
def fold_for_inference(
    W_enc: Float[Tensor, "d_in d_sae"],
    b_enc: Float[Tensor, " d_sae"],
    W_dec: Float[Tensor, "d_sae d_in"],
    b_dec: Float[Tensor, " d_in"],
    threshold: Float[Tensor, " d_sae"],
    input_scale: Float[Tensor, ""],
) -> dict[str, Tensor]:
    """The same function in raw input units with unit-norm decoder rows (what Gemma Scope
    releases and SAEBench expect): latent i's output is scaled by ``||d_i||`` and its row
    divided by it, so the function and the active set are unchanged. Folded in float32 and
    rounded once, so a bf16 SAE loses no more than its own precision."""
    dtype = W_enc.dtype
    raw_W_dec = W_dec.float() / input_scale
    norms = decoder_norms(raw_W_dec).float()
    return {
        "W_enc": (W_enc.float() * input_scale * norms).to(dtype),
        "b_enc": (b_enc.float() * norms).to(dtype),
        "W_dec": (raw_W_dec / norms[:, None]).to(dtype),
        "b_dec": (b_dec.float() / input_scale).to(dtype),
        "threshold": threshold.detach().clamp(min=0.0) * norms,
    }


def upgrade_for_loading(
    state_dict: dict[str, Any],
    raw_from_threshold: Callable[[Tensor], Tensor],
    initial_l0_coefficient: float,
    d_sae: int,
) -> None:
    """In place: SAELens ``jumprelu`` weights or an older checkpoint as this class's state."""
    if "log_threshold" in state_dict:
        state_dict["threshold"] = state_dict.pop("log_threshold").float().exp()
    if "threshold" in state_dict:
        state_dict["threshold_raw"] = raw_from_threshold(state_dict.pop("threshold"))
    # Weights saved for inference are already in raw units.
    state_dict.setdefault("input_scale", torch.ones((), dtype=torch.float32))
    state_dict.setdefault("input_scale_pending", torch.tensor(False))
    if "log_l0_coefficient" in state_dict:
        # Older checkpoints controlled log(lambda): the same lambda, in units of lambda_0.
        old_lambda = state_dict.pop("log_l0_coefficient").float().exp()
        state_dict["l0_coefficient_integral"] = old_lambda / max(initial_l0_coefficient, 1e-12)
    state_dict.setdefault("l0_coefficient_integral", torch.ones((), dtype=torch.float32))
    state_dict.setdefault("threshold_ceiling", torch.full((d_sae,), math.inf, dtype=torch.float32))
