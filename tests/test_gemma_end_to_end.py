"""The real embedded Gemma 3 270M, end to end: collect -> train -> save -> reload with plain
SAELens in a fresh process -> eval. Prepares the model on first use (~1 min), as CI does."""

import json
import subprocess
import sys

import pytest

from sae_lens_jumprelu.commands.cli import main

pytestmark = pytest.mark.slow

SMALL = "--tokens 4096 --eval-tokens 512 --context-size 64".split()
RESID, ATTN = "blocks.3.hook_resid_post", "blocks.3.attn.hook_z"


def test_collect_then_train_from_cache_then_reload_in_plain_sae_lens(tmp_path, capsys, monkeypatch):
    cache, run = tmp_path / "cache", tmp_path / "run"
    collect = f"collect --site resid:3 --site attn:3 --out {cache} --contexts-per-shard 16"
    assert main(collect.split() + SMALL) == 0
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["complete"] and manifest["model"] == "gemma-3-270m"
    assert [s["d_in"] for s in manifest["sites"]] == [640, 1024]  # hook_z: 4 heads x 256
    # BOS opens every context of 64 (and separates documents) and is excluded; enough contexts
    # are read that the rest fills --tokens 4096 (66 contexts of 63 text tokens, not 64)
    assert 4096 - 30 < manifest["tokens"] <= 66 * 63
    assert manifest["mean_squared_norm"][RESID] > 1e5  # Gemma's residual norms are thousands

    train = f"train --activations {cache} --out {run} --d-sae 256 --batch-size 512 --target-l0 20"
    assert main(train.split() + SMALL) == 0
    assert f"{ATTN}: held-out L0" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    for hook in (RESID, ATTN):
        m = metrics[hook]
        assert m["tokens"] > 400 and 0 < m["l0"] < 256 and 0 < m["fvu"] < 1.5
        assert m["ce_clean"] > 0 and abs(m["delta_lm_loss"]) < 20
        assert (run / "saes" / hook / "training_curve.png").stat().st_size > 10_000

    # A process that never imports sae_lens_jumprelu loads the SAEs and runs them on the hook;
    # their rows are unit-norm and their metadata is the held-out evaluation's, nothing else.
    script = f"""
import json, sys, torch
from sae_lens import SAE
metrics = json.load(open({str(run / "metrics.json")!r}))
for hook, shape in [({RESID!r}, (2, 5, 640)), ({ATTN!r}, (2, 5, 4, 256))]:
    sae = SAE.load_from_disk({str(run / "saes")!r} + "/" + hook)
    meta, m = sae.cfg.metadata, metrics[hook]
    assert sae.cfg.architecture() == "jumprelu" and meta.hook_name == hook
    assert sae(torch.randn(shape) * 50).shape == shape
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(256))
    assert (meta.held_out_l0, meta.held_out_frac_dead, meta.held_out_tokens) == (
        m["l0"], m["frac_dead"], m["tokens"])
    assert (meta.held_out_fvu, meta.held_out_delta_lm_loss) == (m["fvu"], m["delta_lm_loss"])
    assert "l0" not in meta and "num_dead_features" not in meta  # the trainer's window stats
    assert (meta.model_name, meta.context_size, meta.prepend_bos) == ("gemma-3-270m", 64, True)
    assert meta.dataset_path == "embedded" and meta.exclude_special_tokens
assert "sae_lens_jumprelu" not in sys.modules
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]

    # A rerun into the same --out is refused; with --overwrite, a Ctrl-C during the held-out
    # evaluation exits 130 and leaves the earlier run exactly as it was, with nothing beside it.
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(train.split() + SMALL) == 2
    assert "already exists" in capsys.readouterr().err

    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("sae_lens_jumprelu.commands.pipeline.evaluate_saes", interrupted)
    assert main(train.split() + SMALL + ["--overwrite"]) == 130
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "run"]


def test_streamed_sweep_and_input_errors(tmp_path, capsys):
    run = tmp_path / "run"
    # a sweep on one site: two SAEs fed by the same forward passes
    sweep = f"train --site mlp:2 --out {run} --d-sae 128 --batch-size 256"
    assert main(sweep.split() + "--l0-coefficient 1e-4 --l0-coefficient 1".split() + SMALL) == 0
    summary = json.loads((run / "run.json").read_text())
    assert summary["model"] == "gemma-3-270m" and summary["dataset"] == "embedded"
    low, high = (f"blocks.2.hook_mlp_out@l0_coefficient={v}" for v in ("0.0001", "1"))
    assert set(summary["metrics"]) == {low, high}
    assert summary["metrics"][high]["l0"] < summary["metrics"][low]["l0"]
    assert (run / "saes" / high / "cfg.json").exists()

    bad = tmp_path / "bad"
    assert main(f"train --site resid:18 --out {bad}".split() + SMALL) == 2
    assert "layer 18 is out of range: gemma-3-270m has layers 0-17" in capsys.readouterr().err
    assert main(f"train --context-size 100000 --out {bad} --tokens 1000".split()) == 2
    assert "longer than gemma-3-270m's context" in capsys.readouterr().err
    assert not bad.exists()
