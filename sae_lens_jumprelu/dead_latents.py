"""Losses that reach latents no input activates (SAELens trainer's ``dead_neuron_mask``).

A dead latent gets no gradient from the reconstruction or from the L0 estimator: every
pre-activation is below its threshold, outside the kernel's window. These losses act on its
pre-activations directly. Each takes ``pre_activations(idx)``, the batch's pre-activations of the
latents ``idx`` with grad, so a sparse step computes only the dead latents' columns.
"""

from collections.abc import Callable

import torch
from jaxtyping import Float
from sae_lens.saes.jumprelu_sae import calculate_pre_act_loss
from sae_lens.saes.topk_sae import calculate_topk_aux_acts
from torch import Tensor

PreActivations = Callable[[Tensor], Float[Tensor, "batch n"]]


def pre_act_loss(
    coefficient: float,
    dead: Tensor | None,
    pre_activations: PreActivations,
    threshold: Float[Tensor, " d_sae"],
    decoder_norms: Float[Tensor, " d_sae"],
    like: Tensor,
) -> Tensor:
    """SAELens's pre-activation loss, ``coefficient * sum_dead ReLU(theta - pi) ||d||``: it
    lifts every dead latent's pre-activations towards its threshold."""
    if dead is None or not bool(dead.any()):
        return like.new_tensor(0.0)
    idx = dead.nonzero().squeeze(1)
    return calculate_pre_act_loss(
        coefficient,
        threshold.index_select(0, idx).to(like.dtype),
        pre_activations(idx),
        dead.index_select(0, idx),
        decoder_norms.index_select(0, idx),
    )


def auxk_loss(
    coefficient: float,
    dead: Tensor | None,
    pre_activations: PreActivations,
    W_dec: Float[Tensor, "d_sae d_in"],
    residual: Float[Tensor, "batch d_in"],
) -> Tensor:
    """Gao et al.'s (2024) auxiliary loss, on JumpReLU latents: per token, the ``d_in / 2``
    dead latents with the largest pre-activations (ReLU'd, thresholds ignored) reconstruct
    what the live ones missed, so their encoder columns and decoder rows learn directions the
    reconstruction needs. Scaled down by n_dead / (d_in / 2) when fewer latents are dead, as in
    SAELens's TopK. It cannot reach a latent whose pre-activations are all negative."""
    if dead is None or not bool(dead.any()):
        return residual.new_tensor(0.0)
    idx = dead.nonzero().squeeze(1)
    k_aux = W_dec.shape[1] // 2
    pre = pre_activations(idx).relu()
    everywhere = torch.ones(idx.numel(), dtype=torch.bool, device=pre.device)
    acts = calculate_topk_aux_acts(min(k_aux, idx.numel()), pre, everywhere)
    recon = acts @ W_dec.index_select(0, idx)
    scale = min(idx.numel() / k_aux, 1.0)
    return coefficient * scale * (recon - residual.detach()).pow(2).sum(dim=-1).mean()
