"""The ``sae-jumprelu`` command line: parsing, and the synthetic demo end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sae_lens_jumprelu.cli import main, parse_args


def test_parse_demo_defaults_and_flags() -> None:
    args = parse_args(["demo", "--target-l0", "4", "--steps", "10", "--recipe", "paper"])
    assert (args.command, args.target_l0, args.steps, args.recipe) == ("demo", 4.0, 10, "paper")
    assert parse_args(["demo"]).recipe == "short_budget"


def test_parse_rejects_bad_input() -> None:
    with pytest.raises(SystemExit, match="--steps must be positive"):
        parse_args(["demo", "--steps", "0"])
    with pytest.raises(SystemExit):
        parse_args(["demo", "--recipe", "nonexistent"])


@pytest.mark.slow
def test_demo_trains_saves_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "40", "--d-sae", "64"]) == 0
    printed = capsys.readouterr().out
    assert "FVU" in printed and "L0" in printed and str(out / "sae") in printed
    assert (out / "training_curve.png").read_bytes()[:4] == b"\x89PNG"
    cfg = json.loads((out / "sae" / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu" and cfg["d_sae"] == 64

    # stock SAELens, in a process that never imports this package, loads what the demo wrote
    check = (
        "import sys, sae_lens; sae = sae_lens.SAE.load_from_disk(sys.argv[1]); "
        "assert 'sae_lens_jumprelu' not in sys.modules; print(type(sae).__name__)"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", check, str(out / "sae")], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "JumpReLUSAE"
