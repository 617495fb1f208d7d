"""A tiny Gemma 2 as SAELens's HookedSAETransformer and random SAELens JumpReLU SAEs on it."""

import torch
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

from sae_lens_jumprelu.analysis import hooked_sae_transformer
from sae_lens_jumprelu.data.models import tiny_gemma2


def tiny_hooked(seed: int = 0):
    return hooked_sae_transformer(tiny_gemma2(seed=seed))


def random_sae(
    hook_name: str = "blocks.1.hook_resid_post", d_in: int = 64, d_sae: int = 48, seed: int = 0
) -> JumpReLUSAE:
    """A SAELens JumpReLU SAE with encoder = decoder^T and thresholds that let about a third of
    the features fire on the tiny model's activations (norm ~ sqrt(d_model))."""
    generator = torch.Generator().manual_seed(seed)
    cfg = JumpReLUSAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        reshape_activations="hook_z" if hook_name.endswith("hook_z") else "none",
    )
    cfg.metadata.hook_name = hook_name
    sae = JumpReLUSAE(cfg)
    W_dec = torch.randn(d_sae, d_in, generator=generator)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    with torch.no_grad():
        sae.W_dec.copy_(W_dec)
        sae.W_enc.copy_(W_dec.T)
        sae.b_enc.copy_(0.1 * torch.randn(d_sae, generator=generator))
        sae.b_dec.copy_(0.1 * torch.randn(d_in, generator=generator))
        sae.threshold.copy_(torch.rand(d_sae, generator=generator) * 0.5 + 0.2)
    return sae


def contexts(n: int = 12, context: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, 1000, (n, context), generator=generator)
    tokens[:, 0] = 2  # BOS
    return tokens
