"""The analysis path and the dashboard command on the embedded Gemma 3 270M (real tokenizer,
real text), with a random SAE: what is checked is the plumbing, not the SAE."""

import json

import pytest
import torch
from analysis_fixtures import random_sae
from headless_chromium import Chromium, find_chromium, requests_outside

from sae_lens_jumprelu.analysis import attribute, hooked_sae_transformer, logit_difference
from sae_lens_jumprelu.commands.cli import main

HOOK = "blocks.3.hook_resid_post"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model():
    return hooked_sae_transformer(None)


def test_attribution_on_a_text_prompt(model):
    sae = random_sae(HOOK, d_in=640, d_sae=64)
    with torch.no_grad():
        sae.threshold.zero_()  # the random SAE must fire on Gemma's large residual norms
    paris, london = model.to_single_token(" Paris"), model.to_single_token(" London")
    prompt = "The capital of France is"
    result = attribute(model, sae, prompt, logit_difference(paris, london))
    clean = model(prompt)[0, -1].detach()
    assert result.metric == pytest.approx(float(clean[paris] - clean[london]), abs=1e-3)
    assert result.metric > 0  # the model knows
    kept = {}

    def keep(x, hook):
        kept["x"] = x
        return x

    logits = model.run_with_hooks(prompt, fwd_hooks=[(HOOK, keep)])
    (grad,) = torch.autograd.grad(logits[0, -1, paris] - logits[0, -1, london], kept["x"])
    site = result.sites[HOOK]
    expected = (kept["x"] * grad).sum(-1).detach()
    torch.testing.assert_close(site.features.sum(-1) + site.error + site.bias, expected,
                               rtol=1e-3, atol=1e-2)  # fmt: skip


@pytest.mark.skipif(find_chromium() is None, reason="Debian's chromium is not installed")
def test_dashboard_command_on_the_embedded_model(tmp_path, capsys):
    sae = random_sae(HOOK, d_in=640, d_sae=64)
    with torch.no_grad():
        sae.threshold.fill_(20.0)
    sae.cfg.metadata.model_name = "gemma-3-270m"
    sae.save_model(tmp_path / "sae")
    out = tmp_path / "dash"
    argv = ["dashboard", str(tmp_path / "sae"), "--out", str(out), "--tokens", "1024",
            "--context-size", "64"]  # fmt: skip
    assert main([*argv, "--features", "60-64"]) == 2
    assert "feature index 64 is out of range" in capsys.readouterr().err
    assert not out.exists()
    assert main([*argv, "--features", "0-9"]) == 0
    assert "10 feature pages over" in capsys.readouterr().out
    summary = json.loads((out / "dashboard.json").read_text())
    assert summary["source"]["model"] == "gemma-3-270m" and summary["n_tokens"] > 900
    fired = [f["feature"] for f in summary["features"] if f["frequency"] > 0]
    assert fired, "no feature fired: raise the token count or lower the threshold"
    browser = Chromium(find_chromium())
    try:
        page = browser.open((out / f"feature-{fired[0]:06d}.html").as_uri())
        assert requests_outside(page.requests, out) == []
        text = page.evaluate("document.querySelector('#examples').innerText")
        # Decoded English from the embedded corpus, not token ids.
        assert sum(word in text for word in (" the", " of", " a", " to", " is")) >= 2
        assert page.evaluate("document.querySelectorAll('#promoted tr').length") == 10
    finally:
        browser.close()
