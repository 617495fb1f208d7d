import numpy as np
import pytest
import torch
from gemma_fixtures import BOS, EOS, PAD, random_contexts, tiny_model
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

from sae_lens_jumprelu.data.sites import resolve_sites
from sae_lens_jumprelu.evals import _Accumulator, evaluate_saes, markdown_table, write_evaluations

SPECIAL = [PAD, EOS, BOS]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def make_sae(d_in: int, hook: str, n_dead: int = 0) -> JumpReLUSAE:
    """Exact reconstruction: latents relu(x) and relu(-x), decoded as their difference; plus
    ``n_dead`` latents whose pre-activation is always 0, so they never fire."""
    eye = torch.eye(d_in)
    cfg = JumpReLUSAEConfig(
        d_in=d_in,
        d_sae=2 * d_in + n_dead,
        reshape_activations="hook_z" if hook.endswith("hook_z") else "none",
    )
    cfg.metadata.hook_name = hook
    sae = JumpReLUSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye, torch.zeros(d_in, n_dead)], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye, torch.zeros(n_dead, d_in)], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.threshold.zero_()
    return sae


def kept_activations(model, hook, contexts):
    _, cache = model.run_with_cache(contexts, names_filter=[hook])
    keep = ~torch.isin(contexts, torch.tensor(SPECIAL))
    return cache[hook][keep].reshape(int(keep.sum()), -1)


@pytest.mark.parametrize("spec", ["resid:1", "attn:2"])
def test_perfect_reconstruction_has_fvu_0_and_no_loss_change(model, spec):
    (site,) = resolve_sites(model, [spec])
    contexts = random_contexts(6)
    sae = make_sae(site.d_in, site.hook_name, n_dead=3)
    result = evaluate_saes(
        model, {"exact": sae}, contexts, SPECIAL, zero_ablation=True, progress=None
    )["exact"]
    acts = kept_activations(model, site.hook_name, contexts)
    assert result.tokens == acts.shape[0] == 6 * 15 - 2
    assert result.fvu == pytest.approx(0.0, abs=1e-10)
    assert result.delta_lm_loss == pytest.approx(0.0, abs=1e-6)
    assert result.ce_loss_score == pytest.approx(1.0, abs=1e-5)
    # latent i fires where x_i > 0, latent d_in + i where x_i < 0; the last 3 never
    positive = (acts > 0).double().mean(0)
    negative = (acts < 0).double().mean(0)
    expected = torch.cat([positive, negative, torch.zeros(3, dtype=torch.float64)])
    torch.testing.assert_close(
        torch.tensor(result.feature_frequency, dtype=torch.float64), expected
    )
    assert result.l0 == pytest.approx(((acts != 0).sum(-1).double().mean()).item())
    assert result.frac_dead == pytest.approx((expected == 0).double().mean().item())
    assert result.frac_dead >= 3 / sae.cfg.d_sae
    assert result.frac_over_10pct == pytest.approx((expected > 0.1).double().mean().item())


def test_mean_reconstruction_has_fvu_1(model):
    (site,) = resolve_sites(model, ["resid:2"])
    contexts = random_contexts(4)
    sae = make_sae(site.d_in, site.hook_name)
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.copy_(kept_activations(model, site.hook_name, contexts).mean(0))
    result = evaluate_saes(model, {"mean": sae}, contexts, SPECIAL, progress=None)["mean"]
    assert result.fvu == pytest.approx(1.0, rel=1e-5)
    assert abs(result.delta_lm_loss) > 1e-3  # the splice took effect


def test_clean_loss_matches_transformer_lens(model):
    (site,) = resolve_sites(model, ["resid:0"])
    contexts = random_contexts(4)
    saes = {"a": make_sae(site.d_in, site.hook_name)}
    everything = evaluate_saes(model, saes, contexts, [], progress=None)["a"]
    assert everything.ce_clean == pytest.approx(
        model(contexts, return_type="loss").item(), rel=1e-5
    )
    per_token = model(contexts, return_type="loss", loss_per_token=True)
    counted = ~torch.isin(contexts[:, 1:], torch.tensor(SPECIAL))
    masked = evaluate_saes(model, saes, contexts, SPECIAL, progress=None)["a"]
    assert masked.ce_clean == pytest.approx(per_token[counted].mean().item(), rel=1e-5)


def test_several_saes_on_one_hook_and_the_report(tmp_path, model):
    (site,) = resolve_sites(model, ["mlp:1"])
    saes = {
        "exact": make_sae(site.d_in, site.hook_name),
        "lossy": make_sae(site.d_in, site.hook_name),
    }
    with torch.no_grad():
        saes["lossy"].threshold.fill_(0.5)
    results = evaluate_saes(model, saes, random_contexts(3), SPECIAL, progress=None)
    assert results["exact"].fvu < 1e-10 < results["lossy"].fvu
    assert results["lossy"].l0 < results["exact"].l0
    path = write_evaluations(results, tmp_path)
    assert set(__import__("json").loads(path.read_text())) == {"exact", "lossy"}
    assert "| lossy |" in markdown_table(results)


def test_mismatched_sae_errors_name_both_sides(model):
    contexts = random_contexts(2)
    wrong_width = make_sae(32, "blocks.0.hook_resid_post")
    with pytest.raises(
        ValueError, match="d_in=32 but tiny-gemma-2's blocks.0.hook_resid_post gives 64"
    ):
        evaluate_saes(model, {"x": wrong_width}, contexts, SPECIAL)
    wrong_hook = make_sae(64, "blocks.9.hook_resid_post")
    with pytest.raises(ValueError, match="'blocks.9.hook_resid_post', which tiny-gemma-2 does not"):
        evaluate_saes(model, {"x": wrong_hook}, contexts, SPECIAL)
    nameless = make_sae(64, "")
    with pytest.raises(ValueError, match="does not say which hook"):
        evaluate_saes(model, {"x": nameless}, contexts, SPECIAL)


def test_l0_distribution_and_frequencies_of_a_hand_built_feature_matrix():
    # per-token L0 2, 0, 2, 1, 2: histogram [1, 1, 3]; latent 3 never fires
    features = torch.tensor(
        [[1.0, 0, 2, 0], [0, 0, 0, 0], [3, 1, 0, 0], [0, 0, 5, 0], [1, 1, 0, 0]]
    )
    acc = _Accumulator(d_sae=4)
    acc.add_features(features[:2], torch.ones(2, 3), torch.ones(2, 3))
    acc.add_features(features[2:], torch.zeros(3, 3), torch.zeros(3, 3))
    for name in ("clean", "spliced"):
        acc.add_loss(name, torch.ones(1, 2), torch.ones(1, 2, dtype=torch.bool))
    result = acc.result("blocks.0.hook_resid_post")
    assert result.l0_histogram == [1, 1, 3]
    assert result.l0 == pytest.approx(7 / 5)
    assert (result.l0_p10, result.l0_p50, result.l0_p90, result.l0_max) == (0, 2, 2, 2)
    assert result.feature_frequency == pytest.approx([3 / 5, 2 / 5, 2 / 5, 0])
    assert result.frac_dead == 0.25 and result.frac_over_10pct == 0.75
    summary = result.summary()
    assert "l0_histogram" not in summary and "feature_frequency" not in summary
    assert summary["l0_p50"] == 2


def test_l0_histogram_matches_the_models_activations(model):
    (site,) = resolve_sites(model, ["resid:1"])
    contexts = random_contexts(4)
    sae = make_sae(site.d_in, site.hook_name)
    with torch.no_grad():
        sae.threshold.fill_(0.7)  # latent i fires where x_i > 0.7, latent d_in + i where < -0.7
    result = evaluate_saes(model, {"s": sae}, contexts, SPECIAL, progress=None)["s"]
    per_token = (kept_activations(model, site.hook_name, contexts).abs() > 0.7).sum(-1)
    assert result.l0_histogram == torch.bincount(per_token).tolist()
    for q, got in [(0.1, result.l0_p10), (0.5, result.l0_p50), (0.9, result.l0_p90)]:
        assert got == np.quantile(per_token.numpy(), q, method="inverted_cdf")
    assert result.l0_max == per_token.max() and result.l0_p10 < result.l0_max
