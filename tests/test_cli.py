"""The ``sae-jumprelu`` command line: parsing, and the synthetic demo end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sae_lens_jumprelu.commands.cli import main, parse_args


def test_parse_demo_defaults_and_flags() -> None:
    args = parse_args(["demo", "--target-l0", "4", "--steps", "10", "--recipe", "paper"])
    assert (args.command, args.target_l0, args.steps, args.recipe) == ("demo", 4.0, 10, "paper")
    assert parse_args(["demo"]).recipe == "short_budget"


def test_parse_rejects_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["demo", "--steps", "0"])
    assert "argument --steps: must be positive, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["demo", "--recipe", "nonexistent"])
    with pytest.raises(SystemExit):
        parse_args(["collect", "--out", "c", "--contexts-per-shard", "0"])
    assert "argument --contexts-per-shard: must be positive, got 0" in capsys.readouterr().err


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


def test_an_existing_output_is_refused_before_any_work(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("earlier run")
    for command in (["train"], ["sweep"], ["demo"], ["eval", str(tmp_path)]):
        assert main([*command, "--out", str(out)]) == 2, command
        err = capsys.readouterr().err
        assert "already exists (a directory)" in err and "--overwrite" in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    assert (out / "metrics.json").read_text() == "earlier run"


def test_bad_settings_fail_early_with_the_fix(tmp_path: Path, capsys) -> None:
    for lr in ("inf", "nan", "0", "-1"):
        with pytest.raises(SystemExit):
            parse_args(["train", "--lr", lr])
        assert "must be a positive finite number" in capsys.readouterr().err
    assert main(["train", "--device", "cuda", "--out", str(tmp_path / "x")]) == 2
    assert "has no usable CUDA; use --device cpu" in capsys.readouterr().err
    for flags in (["--target-l0", "0"], ["--d-sae", "0"]):
        with pytest.raises(SystemExit):
            parse_args(["demo", *flags])
        assert f"argument {flags[0]}: must be" in capsys.readouterr().err
    assert main(["demo", "--target-l0", "600", "--out", str(tmp_path / "x")]) == 2
    assert "--target-l0 must be in (0, --d-sae); got 600 with --d-sae 512" in (
        capsys.readouterr().err
    )
    (tmp_path / "a-file").write_text("x")
    assert main(["demo", "--out", str(tmp_path / "a-file" / "demo")]) == 2
    assert "cannot write in" in capsys.readouterr().err
    assert not list(tmp_path.glob("x*"))


def test_ctrl_c_exits_130_and_unexpected_errors_print_one_line(monkeypatch, capsys) -> None:
    import sae_lens_jumprelu.commands.demo as demo

    def interrupted(*_args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "run_demo", interrupted)
    assert main(["demo"]) == 130
    assert "interrupted; no partial output" in capsys.readouterr().err

    def broken(*_args: object) -> None:
        raise RuntimeError("an upstream bug")

    monkeypatch.setattr(demo, "run_demo", broken)
    assert main(["demo"]) == 1
    err = capsys.readouterr().err
    assert "unexpected error: RuntimeError: an upstream bug" in err and "Traceback" not in err
    monkeypatch.setenv("SAE_JUMPRELU_TRACEBACK", "1")
    with pytest.raises(RuntimeError, match="an upstream bug"):
        main(["demo"])


def test_every_job_field_is_a_flag_whose_help_is_its_docstring() -> None:
    from dataclasses import fields

    from simple_parsing.docstring import get_attribute_docstring

    from sae_lens_jumprelu.commands.cli import build_parser
    from sae_lens_jumprelu.commands.convert import ConvertJob
    from sae_lens_jumprelu.commands.demo import DemoJob
    from sae_lens_jumprelu.commands.eval import EvalJob
    from sae_lens_jumprelu.commands.flags import SPELLINGS
    from sae_lens_jumprelu.commands.sweep import SweepJob
    from sae_lens_jumprelu.commands.train_job import TrainJob
    from sae_lens_jumprelu.dashboard.command import DashboardJob

    (subparsers,) = [a for a in build_parser()._actions if a.dest == "command"]
    jobs = (
        ("train", TrainJob), ("sweep", SweepJob), ("eval", EvalJob), ("demo", DemoJob),
        ("convert", ConvertJob), ("dashboard", DashboardJob),
    )  # fmt: skip
    for command, job in jobs:
        flags = {action.dest: action for action in subparsers.choices[command]._actions}
        for f in fields(job):
            assert f.name in flags, (command, f.name)
            spelling = SPELLINGS.get(f.name)
            if spelling is not None and spelling.help is not None:
                assert flags[f.name].help == spelling.help
                continue
            docstring = get_attribute_docstring(job, f.name).docstring_below
            assert docstring, f"{job.__name__}.{f.name} has no docstring for its --help"
            expected = " ".join(docstring.split()).replace("``", "").replace("%", "%%")
            assert flags[f.name].help.startswith(expected), (command, f.name)
