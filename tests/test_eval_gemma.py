"""``sae-jumprelu eval`` on the real embedded Gemma 3 270M (prepared on first use, ~1 min)."""

import json

import pytest
import torch
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

from sae_lens_jumprelu.commands.cli import main

pytestmark = pytest.mark.slow

HOOK = "blocks.3.hook_resid_post"


def test_eval_of_an_exact_and_a_sparse_sae_on_the_embedded_model(tmp_path, capsys):
    """Latents relu(x_i) and relu(-x_i) reconstruct exactly; with thresholds only the large
    coordinates pass, so the same SAE becomes a lossy, sparse one."""
    cfg = JumpReLUSAEConfig(d_in=640, d_sae=1280)
    cfg.metadata.__dict__.update(hook_name=HOOK, model_name="gemma-3-270m", context_size=64)
    sae = JumpReLUSAE(cfg)
    eye = torch.eye(640)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_(), sae.b_dec.zero_(), sae.threshold.zero_()
    sae.save_model(tmp_path / "exact")
    with torch.no_grad():
        sae.threshold.fill_(20.0)  # residual coordinates are tens to thousands here
    sae.save_model(tmp_path / "sparse")

    metrics = {}
    for name in ("exact", "sparse"):
        out = tmp_path / f"eval-{name}"
        assert main(["eval", str(tmp_path / name), "--tokens", "256", "--out", str(out)]) == 0
        metrics[name] = json.loads((out / "metrics.json").read_text())
        assert (out / "feature_frequency.png").stat().st_size > 5_000
    printed = capsys.readouterr().out
    assert f"on {HOOK}: L0" in printed and "CE recovered" in printed

    exact, sparse = metrics["exact"], metrics["sparse"]
    for m in (exact, sparse):
        assert (m["model"], m["dataset"], m["held_out"], m["context_size"]) == (
            "gemma-3-270m",
            "embedded",
            True,
            64,
        )
        assert m["tokens_read"] == 256 and 200 < m["tokens"] < 256  # BOS and separators out
        assert 1 < m["ce_clean"] < 10  # nats per token on English text
        assert 2 in m["excluded_token_ids"]  # Gemma's BOS
    assert exact["fvu"] < 1e-8 and abs(exact["delta_lm_loss"]) < 1e-3
    assert exact["ce_loss_score"] == pytest.approx(1, abs=1e-3)
    assert 0 < sparse["l0"] < exact["l0"] and 0 < sparse["fvu"] < 1
    assert sparse["l0_p10"] <= sparse["l0_p50"] <= sparse["l0_p90"] <= sparse["l0_max"]
    assert sparse["delta_lm_loss"] > exact["delta_lm_loss"]
    assert sparse["ce_zero_ablation"] > sparse["ce_spliced"] > exact["ce_spliced"] - 1e-3
    assert 0 < sparse["frac_dead"] < 1 and sparse["ce_loss_score"] < 1
