"""Random JumpReLU / Gated weights for the convert tests (imported by tests/test_convert_*.py)."""

import torch

from sae_lens_jumprelu.convert import GatedWeights, JumpReLUWeights


def make_jumprelu(
    d_in: int = 8, d_sae: int = 16, dtype: torch.dtype = torch.float32, apply: bool = False,
    seed: int = 0,
) -> JumpReLUWeights:  # fmt: skip
    """Thresholds of the order of the pre-activations, so both sides of each jump are hit."""
    g = torch.Generator().manual_seed(seed)
    return JumpReLUWeights(
        W_enc=(torch.randn(d_in, d_sae, generator=g) / d_in**0.5).to(dtype),
        b_enc=(torch.randn(d_sae, generator=g) * 0.2).to(dtype),
        W_dec=(torch.randn(d_sae, d_in, generator=g) / d_in**0.5).to(dtype),
        b_dec=(torch.randn(d_in, generator=g) * 0.5).to(dtype),
        threshold=(torch.rand(d_sae, generator=g) * 0.5).to(dtype),
        apply_b_dec_to_input=apply,
        metadata={"hook_name": "blocks.3.hook_resid_post"},
    )


def make_gated(
    d_in: int = 8, d_sae: int = 16, dtype: torch.dtype = torch.float32, apply: bool = True,
    seed: int = 0,
) -> GatedWeights:  # fmt: skip
    """About half the latents have a negative implied threshold (plain ReLU latents)."""
    g = torch.Generator().manual_seed(seed)
    return GatedWeights(
        W_enc=(torch.randn(d_in, d_sae, generator=g) / d_in**0.5).to(dtype),
        b_gate=(torch.randn(d_sae, generator=g) * 0.3).to(dtype),
        r_mag=(torch.randn(d_sae, generator=g) * 0.5).to(dtype),
        b_mag=(torch.randn(d_sae, generator=g) * 0.3).to(dtype),
        W_dec=(torch.randn(d_sae, d_in, generator=g) / d_in**0.5).to(dtype),
        b_dec=(torch.randn(d_in, generator=g) * 0.5).to(dtype),
        apply_b_dec_to_input=apply,
        metadata={"hook_name": "blocks.3.hook_resid_post"},
    )


def inputs(d_in: int, n: int = 256, seed: int = 1) -> dict[str, torch.Tensor]:
    """Gaussian and heavy-tailed (Cauchy) float32 inputs."""
    g = torch.Generator().manual_seed(seed)
    cauchy = torch.randn(n, d_in, generator=g) / torch.randn(n, 1, generator=g).abs()
    return {"gaussian": torch.randn(n, d_in, generator=g), "heavy_tailed": cauchy}
