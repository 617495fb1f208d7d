"""Direct logit effects of decoder rows, checked through TransformerLens's own forward."""

import torch
from analysis_fixtures import random_sae, tiny_hooked

from sae_lens_jumprelu.analysis import logit_effects
from sae_lens_jumprelu.analysis.logit_effects import residual_directions


def _random_norm_weights(model):
    """Random init leaves the norms' weights at 1, which would hide a missing scale."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("ln_final.w", "ln1_post.w")):
                param.uniform_(0.2, 2.0)
    return model


def test_residual_sae_effects_are_unembedded_decoder_rows():
    model, sae = _random_norm_weights(tiny_hooked()), random_sae("blocks.1.hook_resid_post")
    effects = logit_effects(model, sae, [5, 9], k=3)
    # Independent: TransformerLens's Unembed of the scaled row, minus its bias.
    with torch.no_grad():
        logits = model.unembed((sae.W_dec[[5, 9]] * model.ln_final.w)[:, None]) - model.b_U
    top = logits[:, 0].topk(3, dim=1)
    assert torch.equal(effects.promoted_ids, top.indices)
    torch.testing.assert_close(effects.promoted_values, top.values)
    bottom = logits[:, 0].topk(3, dim=1, largest=False)
    assert torch.equal(effects.suppressed_ids, bottom.indices)


def test_attention_z_rows_go_through_W_O_as_the_model_does():
    model = _random_norm_weights(tiny_hooked())
    sae = random_sae("blocks.2.attn.hook_z", d_in=64)
    directions = residual_directions(model, sae, [0, 3])
    for row, feature in enumerate([0, 3]):
        z = sae.W_dec[feature].detach().reshape(4, 16)  # [n_heads, d_head]
        out = {}

        def set_z(value, hook, z=z):
            value[:, -1] = z
            return value

        def read(value, hook, out=out):
            out["attn"] = value[:, -1]

        model.run_with_hooks(
            torch.tensor([[2, 5, 6]]),
            fwd_hooks=[("blocks.2.attn.hook_z", set_z), ("blocks.2.hook_attn_out", read)],
        )
        # Gemma 2 normalises the attention output (RMSNorm, then its weight) before the residual
        # stream, and has no b_O: the model's output is the direction up to a positive scale.
        assert torch.all(model.blocks[2].attn.b_O == 0)
        expected = out["attn"][0].detach()
        torch.testing.assert_close(
            directions[row] / directions[row].norm(),
            expected / expected.norm(),
            rtol=1e-4,
            atol=1e-5,
        )


def test_no_direct_path_gives_none():
    model = tiny_hooked()
    assert logit_effects(model, random_sae("blocks.1.mlp.hook_post", d_in=256), [0]) is None
