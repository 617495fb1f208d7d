import pytest
import torch
from gemma_fixtures import BOS, EOS, PAD, random_contexts, tiny_model

from sae_lens_jumprelu.data.activations import (
    iter_site_activations,
    peek_mean_squared_norms,
    shuffled_batches,
    site_activations,
)
from sae_lens_jumprelu.data.sites import resolve_sites

SPECIAL = [PAD, EOS, BOS]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_one_pass_matches_full_forward_per_site_without_special_tokens(model):
    sites = resolve_sites(model, ["resid:1", "attn:0", "mlp:1"])
    tokens = random_contexts(3)
    batch, kept = site_activations(model, sites, tokens, SPECIAL)
    _, full = model.run_with_cache(tokens)  # every hook, no stop_at_layer
    keep = ~torch.isin(tokens, torch.tensor(SPECIAL))
    assert kept.tolist() == tokens[keep].tolist()
    assert keep.sum() == tokens.numel() - 3 - 2  # BOS per context, one EOS, one PAD
    for site in sites:
        expected = full[site.hook_name][keep].reshape(-1, site.d_in)  # hook_z: heads concatenated
        torch.testing.assert_close(batch[site.hook_name], expected)


def test_exclusion_is_configurable(model):
    sites = resolve_sites(model, ["resid:0"])
    tokens = random_contexts(2)
    batch, kept = site_activations(model, sites, tokens, exclude_token_ids=[])
    assert batch[sites[0].hook_name].shape == (tokens.numel(), model.cfg.d_model)
    assert kept.tolist() == tokens.reshape(-1).tolist()


def test_context_longer_than_the_model_is_refused(model):
    sites = resolve_sites(model, ["resid:0"])
    too_long = torch.full((1, model.cfg.n_ctx + 1), 5)
    with pytest.raises(ValueError, match=f"longer than tiny-gemma-2's {model.cfg.n_ctx}"):
        site_activations(model, sites, too_long)


def test_shuffled_batches_keep_tokens_aligned_across_sites_and_lose_none():
    torch.manual_seed(0)
    ids = torch.arange(1000, dtype=torch.float32)[:, None]
    passes = ({"a": chunk, "b": chunk * 2 + 0.5} for chunk in ids.split(100))
    batches = list(shuffled_batches(passes, ["a", "b"], batch_size=50, buffer_tokens=300))
    seen = torch.cat([b["a"] for b in batches]).flatten()
    assert sorted(seen.tolist()) == list(range(1000))  # all, once
    assert not torch.equal(seen, torch.arange(1000.0))  # shuffled
    for b in batches:
        torch.testing.assert_close(b["b"], b["a"] * 2 + 0.5)


def test_peek_measures_the_first_batches_and_keeps_them(model):
    sites = resolve_sites(model, ["resid:2"])
    contexts = random_contexts(6)
    batches = list(
        iter_site_activations(
            model, sites, contexts, contexts_per_pass=2, exclude_token_ids=SPECIAL, progress=None
        )
    )
    norms, stream = peek_mean_squared_norms(iter(batches), n_batches=2)
    head = torch.cat([b[sites[0].hook_name] for b in batches[:2]])
    assert norms[sites[0].hook_name] == pytest.approx(head.pow(2).sum(-1).mean().item(), rel=1e-6)
    assert [id(b) for b in stream] == [id(b) for b in batches]
