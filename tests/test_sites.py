import pytest
import torch
from gemma_fixtures import tiny_model

from sae_lens_jumprelu.data.sites import default_site_spec, resolve_sites, stop_at_layer


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_tiny_gemma2_keeps_the_gemma2_architecture(model):
    cfg = model.cfg
    assert cfg.original_architecture == "Gemma2ForCausalLM"
    assert cfg.attn_scores_soft_cap == 50.0 and cfg.output_logits_soft_cap == 30.0
    assert cfg.use_normalization_before_and_after and cfg.normalization_type == "RMS"
    assert cfg.attn_types == ["local", "global", "local", "global"] and cfg.use_local_attn
    assert cfg.n_key_value_heads < cfg.n_heads  # grouped-query attention
    assert "blocks.0.ln1_post.hook_normalized" in model.hook_dict


def test_specs_resolve_to_hooks_and_widths(model):
    sites = resolve_sites(model, ["resid:1", "attn:0-1", "mlp:*", "resid:1"])
    assert [s.hook_name for s in sites] == [
        "blocks.1.hook_resid_post",
        "blocks.0.attn.hook_z",
        "blocks.1.attn.hook_z",
        "blocks.0.hook_mlp_out",
        "blocks.1.hook_mlp_out",
        "blocks.2.hook_mlp_out",
        "blocks.3.hook_mlp_out",
    ]
    by_hook = {s.hook_name: s for s in sites}
    assert by_hook["blocks.0.attn.hook_z"].d_in == model.cfg.n_heads * model.cfg.d_head
    assert by_hook["blocks.1.hook_resid_post"].d_in == model.cfg.d_model
    assert stop_at_layer(sites) == 4
    assert stop_at_layer(sites[:3]) == 2


def test_layer_lists_full_hook_names_and_hooks_outside_blocks(model):
    sites = resolve_sites(model, ["resid:0,2", "blocks.3.mlp.hook_post", "hook_embed"])
    assert [(s.hook_name, s.layer) for s in sites] == [
        ("blocks.0.hook_resid_post", 0),
        ("blocks.2.hook_resid_post", 2),
        ("blocks.3.mlp.hook_post", 3),
        ("hook_embed", -1),
    ]
    assert sites[2].d_in == model.cfg.d_mlp
    assert stop_at_layer(resolve_sites(model, ["ln_final.hook_normalized"])) is None
    assert default_site_spec(model) == "resid:2"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("res:1", "unknown site 'res:1'.*KIND one of \\['attn', 'mlp', 'resid'\\]"),
        ("resid:4", "layer 4 is out of range: tiny-gemma-2 has layers 0-3"),
        ("mlp:2-9", "layer 2-9 is out of range"),
        ("attn:x", "cannot read layers 'x'"),
        ("blocks.0.hook_nope", "has no hook 'blocks.0.hook_nope'.*blocks.0.hook_resid_post"),
        ("blocks.0.attn.hook_pattern", "per query-key pair"),
    ],
)
def test_bad_sites_are_named_with_what_exists(model, spec, message):
    with pytest.raises(ValueError, match=message):
        resolve_sites(model, [spec])


def test_no_site_suggests_one(model):
    with pytest.raises(ValueError, match="resid:2"):
        resolve_sites(model, [])


def test_widths_match_the_model_forward(model):
    (site,) = resolve_sites(model, ["attn:2"])
    _, cache = model.run_with_cache(torch.tensor([[2, 5, 6]]), names_filter=[site.hook_name])
    assert cache[site.hook_name][0, 0].numel() == site.d_in
