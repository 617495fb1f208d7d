"""Activation x gradient attribution checked against the clean model's gradient and finite
differences of the metric."""

import pytest
import torch
from analysis_fixtures import contexts, random_sae, tiny_hooked

from sae_lens_jumprelu.analysis import attribute, logit_difference
from sae_lens_jumprelu.data.models import tiny_gemma2

HOOK = "blocks.1.hook_resid_post"
METRIC = logit_difference(17, 42)


def _metric_with_scaled_feature(model, sae, tokens, feature, scale):
    def edit(acts, hook):
        acts = acts.clone()
        acts[..., feature] *= scale
        return acts

    with model.saes([sae], use_error_term=True):
        logits = model.run_with_hooks(tokens, fwd_hooks=[(f"{HOOK}.hook_sae_acts_post", edit)])
    return float(METRIC(logits).detach())


def test_shares_add_up_to_activation_times_the_clean_model_gradient():
    model, sae = tiny_hooked(), random_sae()
    tokens = contexts(2)
    result = attribute(model, sae, tokens, METRIC)
    site = result.sites[HOOK]
    # Independent: the unmodified model (no SAELens), gradient of the metric at the hook.
    plain = tiny_gemma2()
    kept = {}

    def keep(x, hook):
        kept["x"] = x
        return x

    logits = plain.run_with_hooks(tokens, fwd_hooks=[(HOOK, keep)])
    assert result.metric == pytest.approx(float(METRIC(logits).detach()), abs=1e-4)
    (grad,) = torch.autograd.grad(METRIC(logits), kept["x"])
    x_dot_g = (kept["x"] * grad).sum(-1).detach()
    total = site.features.sum(-1) + site.error + site.bias
    torch.testing.assert_close(total, x_dot_g, rtol=1e-4, atol=1e-4)
    # The bias share by hand: b_dec . g at every position.
    torch.testing.assert_close(site.bias, (sae.b_dec.detach() * grad).sum(-1), rtol=1e-4, atol=1e-5)
    assert site.error.abs().sum() > 0 and site.features.abs().sum() > 0


def test_feature_attribution_is_the_derivative_of_scaling_the_feature():
    model, sae = tiny_hooked(), random_sae()
    tokens = contexts(1)
    result = attribute(model, sae, tokens, METRIC)
    per_feature = result.sites[HOOK].per_feature()
    (_, top, value), *_ = result.top_features(1)
    assert value == pytest.approx(float(per_feature[top]))
    eps = 1e-2
    for feature in [top, *per_feature.abs().argsort(descending=True)[1:4].tolist()]:
        # d/ds M(f_i -> s f_i) at s = 1 is sum over positions of f_i dM/df_i (central difference).
        up = _metric_with_scaled_feature(model, sae, tokens, feature, 1 + eps)
        down = _metric_with_scaled_feature(model, sae, tokens, feature, 1 - eps)
        derivative = (up - down) / (2 * eps)
        assert float(per_feature[feature]) == pytest.approx(derivative, rel=2e-2, abs=1e-3)


def test_without_error_term_the_error_share_is_zero_and_several_saes_are_reported():
    model = tiny_hooked()
    saes = [random_sae(HOOK), random_sae("blocks.2.attn.hook_z", seed=1)]
    result = attribute(model, saes, contexts(1), METRIC, use_error_term=False)
    assert set(result.sites) == {HOOK, "blocks.2.attn.hook_z"}
    for site in result.sites.values():
        assert torch.all(site.error == 0)
        assert site.features.shape == (1, 16, 48)
    with_sae = result.metric
    assert abs(with_sae - attribute(model, saes, contexts(1), METRIC).metric) > 1e-4


def test_metric_must_be_a_scalar():
    model, sae = tiny_hooked(), random_sae()
    with pytest.raises(ValueError, match="must return a scalar"):
        attribute(model, sae, contexts(1), lambda logits: logits[:, -1, :3])
