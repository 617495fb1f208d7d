"""The real ``torchrun ... -m sae_lens_jumprelu train --distributed data|sae`` command, end to
end on 2 gloo ranks with the embedded Gemma 3 270M: what a user launches, in fresh processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sae_lens import SAE

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("mode", ["data", "sae"])
def test_torchrun_train_on_two_ranks(mode: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "sae_lens_jumprelu", "train", "--distributed", mode,
        "--tokens", "2048", "--eval-tokens", "256", "--d-sae", "64", "--batch-size", "128",
        "--target-l0", "8", "--target-l0", "16", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    # rank 0 alone reports: one line per SAE with its held-out L0 next to its target
    assert done.stdout.count("held-out L0") == 2, done.stdout
    assert "(target 8)" in done.stdout and "(target 16)" in done.stdout

    run = json.loads((out / "run.json").read_text())
    assert run["job"]["distributed"] == mode
    metrics = json.loads((out / "metrics.json").read_text())
    names = sorted(p.name for p in (out / "saes").iterdir())
    assert names == sorted(metrics) and len(names) == 2
    for name in names:
        sae = SAE.load_from_disk(out / "saes" / name)  # stock SAELens reads what rank 0 wrote
        assert sae.cfg.architecture() == "jumprelu" and sae.cfg.d_sae == 64
        assert metrics[name]["l0"] > 0 and metrics[name]["fvu"] > 0
    assert not list(tmp_path.glob("*.tmp*")), "a staging directory was left behind"
