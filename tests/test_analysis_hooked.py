"""HookedSAETransformer from our models, SAE loading and attachment, and the input checks."""

import pytest
import torch
from analysis_fixtures import contexts, random_sae, tiny_hooked
from sae_lens import SAE, HookedSAETransformer

from sae_lens_jumprelu.analysis import (
    attached,
    check_features,
    hooked_sae_transformer,
    load_sae,
    to_tokens,
)
from sae_lens_jumprelu.convert import convert
from sae_lens_jumprelu.data.models import tiny_gemma2

HOOK = "blocks.1.hook_resid_post"


def test_hooked_sae_transformer_computes_what_the_model_computes():
    model = tiny_gemma2()
    hooked = hooked_sae_transformer(model)
    assert isinstance(hooked, HookedSAETransformer)
    tokens = contexts(3)
    torch.testing.assert_close(hooked(tokens), model(tokens), rtol=0, atol=0)
    assert hooked_sae_transformer(hooked) is hooked


def test_error_term_keeps_the_output_and_splicing_matches_the_sae_forward():
    model, sae = tiny_hooked(), random_sae()
    tokens = contexts(3)
    clean = model(tokens)
    with attached(model, sae, use_error_term=True):
        torch.testing.assert_close(model(tokens), clean, rtol=1e-5, atol=1e-5)
    # Without the error term the reconstruction replaces the activation: the same as a hook
    # that applies SAELens's own SAE.forward.
    spliced = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, lambda x, hook: sae(x))])
    with attached(model, sae, use_error_term=False):
        torch.testing.assert_close(model(tokens), spliced, rtol=1e-5, atol=1e-5)
        assert (model(tokens) - clean).abs().max() > 1e-2  # the SAE is not exact
    assert model.acts_to_saes == {}  # detached after the block


def test_several_saes_including_attention_z():
    model = tiny_hooked()
    saes = [random_sae(HOOK), random_sae("blocks.2.attn.hook_z", d_in=64, seed=1)]
    tokens = contexts(2)
    with attached(model, saes, use_error_term=False):
        _, cache = model.run_with_cache(tokens)
    assert cache["blocks.2.attn.hook_z.hook_sae_acts_post"].shape == (2, 16, 48)
    assert cache[f"{HOOK}.hook_sae_acts_post"].shape == (2, 16, 48)


def test_sae_whose_hook_is_not_in_the_model_is_refused():
    model = tiny_hooked()
    with pytest.raises(ValueError, match=r"reads 'blocks\.9\.hook_resid_post'.*has no hook"):
        with attached(model, random_sae("blocks.9.hook_resid_post")):
            pass
    with pytest.raises(ValueError, match=r"d_in=32.*has width 64"):
        with attached(model, random_sae(HOOK, d_in=32)):
            pass
    with pytest.raises(TypeError, match="hooked_sae_transformer"):
        with attached(tiny_gemma2(), random_sae()):
            pass


def test_feature_index_out_of_range():
    sae = random_sae(d_sae=48)
    assert check_features(sae, [0, 47]) == [0, 47]
    with pytest.raises(IndexError, match=r"feature index 48 is out of range.*features 0-47"):
        check_features(sae, [3, 48, -1])


def test_prompt_longer_than_the_context():
    model = tiny_hooked()  # n_ctx 256
    assert to_tokens(model, list(range(4, 260))).shape == (1, 256)
    with pytest.raises(ValueError, match=r"257 tokens, longer than .* context of 256"):
        to_tokens(model, list(range(4, 261)))
    with pytest.raises(ValueError, match=r"250 \+ 10 new tokens"):
        to_tokens(model, list(range(4, 254)), extra_tokens=10)
    with pytest.raises(ValueError, match="has no tokenizer"):
        to_tokens(model, "some text")


def test_load_sae_reads_saelens_directories_and_gemma_scope_files(tmp_path):
    sae = random_sae()
    sae.save_model(tmp_path / "sae")
    x = torch.randn(5, 64) * 4
    loaded = load_sae(tmp_path / "sae")
    assert isinstance(loaded, SAE) and loaded.cfg.metadata.hook_name == HOOK
    torch.testing.assert_close(loaded.encode(x), sae.encode(x))
    convert(tmp_path / "sae", tmp_path / "params.npz", "gemma-scope")
    from_npz = load_sae(tmp_path / "params.npz", hook_name=HOOK)
    assert from_npz.cfg.metadata.hook_name == HOOK
    torch.testing.assert_close(from_npz.encode(x), sae.encode(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="does not exist"):
        load_sae(tmp_path / "missing")
