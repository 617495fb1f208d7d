"""Streaming per-feature statistics against a brute-force pass over all activations."""

import pytest
import torch
from analysis_fixtures import contexts, random_sae, tiny_hooked

from sae_lens_jumprelu.analysis import collect_feature_stats
from sae_lens_jumprelu.data.models import tiny_gemma2

HOOK = "blocks.1.hook_resid_post"
BOS = 2


def _all_acts(tokens, sae):
    """Every activation at once (what the streaming pass must never hold)."""
    _, cache = tiny_gemma2().run_with_cache(tokens, names_filter=[HOOK])
    with torch.no_grad():
        acts = sae.encode(cache[HOOK])
    return acts * (tokens != BOS).unsqueeze(-1)  # [n, pos, d_sae]


@pytest.mark.parametrize("batch_size", [1, 5, 40])
def test_top_examples_frequency_and_windows_match_brute_force(batch_size):
    model, sae = tiny_hooked(), random_sae()
    with torch.no_grad():
        sae.threshold[0] = 1e6  # a dead feature: no examples at all
    tokens = contexts(40, context=20)
    k, before, after = 4, 6, 2
    stats = collect_feature_stats(
        model,
        sae,
        tokens.split(batch_size),
        k=k,
        window=(before, after),
        exclude_token_ids=[BOS],
        progress=None,
    )
    acts = _all_acts(tokens, sae)
    assert stats.n_tokens == 40 * 19
    torch.testing.assert_close(stats.frequency, (acts > 0).float().mean(dim=(0, 1)) * 20 / 19)
    context_max, context_pos = acts.max(dim=1)  # [n, d_sae]
    top = context_max.topk(k, dim=0)  # [k, d_sae]
    torch.testing.assert_close(stats.top_values, top.values.T)
    torch.testing.assert_close(stats.max_activation, acts.amax(dim=(0, 1)))
    fired = top.values.T > 0
    assert torch.equal(stats.top_contexts[fired], top.indices.T[fired])
    assert torch.all(stats.top_contexts[~fired] == -1)
    assert fired.any() and not fired[0].any()
    # One window by hand: feature 0's best context, tokens [pos - 6, pos + 2] clipped.
    feature = int(stats.top_values[:, 0].argmax())
    c, p = int(top.indices[0, feature]), int(context_pos[top.indices[0, feature], feature])
    lo, hi = max(0, p - before), min(20, p + after + 1)
    inside = stats.window_tokens[feature, 0] >= 0
    assert torch.equal(stats.window_tokens[feature, 0][inside], tokens[c, lo:hi])
    torch.testing.assert_close(stats.window_acts[feature, 0][inside], acts[c, lo:hi, feature])
    assert stats.window_acts[feature, 0][before] == stats.top_values[feature, 0]
    # The histogram counts every nonzero activation once, in the bin of its log2.
    assert torch.equal(stats.histogram.sum(1), (acts > 0).sum(dim=(0, 1)))
    value = acts[acts > 0][0]
    edges = stats.bin_edges
    assert edges[0] <= value < edges[-1]


def test_a_subset_of_features_gives_the_same_rows():
    model, sae = tiny_hooked(), random_sae()
    tokens = contexts(10)
    full = collect_feature_stats(model, sae, tokens.split(3), k=3, progress=None)
    part = collect_feature_stats(model, sae, tokens.split(4), features=[7, 2], k=3, progress=None)
    assert part.features.tolist() == [7, 2]
    torch.testing.assert_close(part.top_values, full.top_values[[7, 2]])
    torch.testing.assert_close(part.histogram, full.histogram[[7, 2]])


def test_bad_input():
    model, sae = tiny_hooked(), random_sae(d_sae=48)
    with pytest.raises(IndexError, match="feature index 99 is out of range"):
        collect_feature_stats(model, sae, [contexts(2)], features=[99])
    with pytest.raises(ValueError, match="no contexts"):
        collect_feature_stats(model, sae, [], progress=None)
    with pytest.raises(ValueError, match="has no hook"):
        collect_feature_stats(model, random_sae("blocks.7.hook_mlp_out"), [contexts(2)])
