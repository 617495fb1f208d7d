"""Ablation and steering against hooks written by hand on the plain model."""

import pytest
import torch
from analysis_fixtures import contexts, random_sae, tiny_hooked

from sae_lens_jumprelu.analysis import FeatureEdit, generate_with_edits, run_with_edits
from sae_lens_jumprelu.data.models import tiny_gemma2

HOOK = "blocks.1.hook_resid_post"


def test_no_edit_is_the_unmodified_model():
    model, sae = tiny_hooked(), random_sae()
    tokens = contexts(2)
    expected = tiny_gemma2()(tokens)
    torch.testing.assert_close(run_with_edits(model, FeatureEdit(sae), tokens), expected,
                               rtol=1e-5, atol=1e-5)  # fmt: skip


def test_ablation_and_steering_move_the_activation_by_decoder_rows():
    model, sae = tiny_hooked(), random_sae()
    tokens = contexts(2)
    plain = tiny_gemma2()
    W_dec = sae.W_dec.detach()

    def by_hand(x, hook):  # remove f_3 d_3 and f_5 d_5, add 2.5 d_7, everywhere
        with torch.no_grad():
            f = sae.encode(x)
        return x - f[..., [3]] * W_dec[3] - f[..., [5]] * W_dec[5] + 2.5 * W_dec[7]

    expected = plain.run_with_hooks(tokens, fwd_hooks=[(HOOK, by_hand)])
    got = run_with_edits(model, FeatureEdit(sae, ablate=[3, 5], steer={7: 2.5}), tokens)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert (got - plain(tokens)).abs().max() > 1e-2


def test_generation_with_steering_is_greedy_decoding_under_the_edit():
    model, sae = tiny_hooked(), random_sae()
    prompt = contexts(1, context=6)
    edit = FeatureEdit(sae, steer={4: 30.0})
    generated = generate_with_edits(model, edit, prompt, max_new_tokens=4)
    # Independent of generate's KV cache: full forward passes, argmax, append.
    tokens = prompt.clone()
    for _ in range(4):
        next_token = run_with_edits(model, edit, tokens)[:, -1].argmax(-1, keepdim=True)
        tokens = torch.cat([tokens, next_token], dim=1)
    assert torch.equal(generated, tokens)
    unsteered = generate_with_edits(model, FeatureEdit(sae), prompt, max_new_tokens=4)
    assert not torch.equal(unsteered, generated)


def test_bad_edits_are_refused():
    model, sae = tiny_hooked(), random_sae(d_sae=48)
    with pytest.raises(IndexError, match="feature index 48 is out of range"):
        FeatureEdit(sae, ablate=[48])
    with pytest.raises(IndexError, match="feature index 100 is out of range"):
        FeatureEdit(sae, steer={100: 1.0})
    with pytest.raises(ValueError, match=r"250 \+ 10 new tokens, longer than .* 256"):
        generate_with_edits(model, FeatureEdit(sae), list(range(4, 254)), max_new_tokens=10)
