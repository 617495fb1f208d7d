"""Every bad command line of issue 16 through the real ``sae-jumprelu`` entry point: exit code 2,
one line naming the problem and the fix, no traceback, nothing written and nothing of the user's
touched. All of them fail before a model loads (each case takes well under a second)."""

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from convert_factories import make_jumprelu

from sae_lens_jumprelu.commands.cli import main
from sae_lens_jumprelu.convert.sae_lens_format import write_sae_lens


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's directory: a file, a directory of notes, a .npy renamed .npz, an SAE whose
    cfg.json disagrees with its weights, a cache whose manifest lost its shards."""
    root = tmp_path_factory.mktemp("user")
    (root / "afile").write_text("a user's file")
    (root / "notes").mkdir()
    (root / "notes" / ".notes.tmp-2024").write_text("a user's notes")
    np.save(root / "array.npy", np.zeros(3))
    (root / "array.npy").rename(root / "params.npz")
    (root / "sae").mkdir()
    write_sae_lens(make_jumprelu(6, 10, apply=True), root / "sae")
    (root / "bad_sae" / "sae").mkdir(parents=True)
    write_sae_lens(make_jumprelu(6, 10, apply=True), root / "bad_sae" / "sae")
    cfg = root / "bad_sae" / "sae" / "cfg.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "d_in": 7}))
    (root / "cache").mkdir()
    (root / "cache" / "manifest.json").write_text(
        json.dumps({"format": "sae-lens-jumprelu/activation-cache", "version": 1})
    )
    return root


# (command line, a fragment of the one-line error)
CASES = [
    (["train", "--out", "afile"], "afile already exists (a file)"),
    (["train", "--out", "notes"], "pass --overwrite"),
    (["train", "--device", "cuda"], "no usable CUDA; use --device cpu"),
    (["train", "--target-l0", "5000"], "cannot be reached with --d-sae 2048"),
    (["train", "--batch-size", "300000"], "less than one batch of 300000"),
    (["train", "--dataset", "/nonexistent/corpus"], "no such file or directory"),
    (["train", "--dataset", "missing.jsonl"], "missing.jsonl: no such file or directory"),
    (["train", "--checkpoint-every", "10"], "launch with `torchrun"),
    (["train", "--activations", "notes"], "is not an activation cache"),
    (["train", "--activations", "cache"], "manifest"),
    (["train", "--sae-config", "no_such_field=1"], "not a JumpReLUSTETrainingSAEConfig field"),
    (["train", "--sae-config", "d_sae=8"], "is set by the job itself"),
    (["sweep", "--out", "afile"], "afile already exists (a file)"),
    (["sweep", "--tokens", "100"], "less than one batch of 256"),
    (["sweep", "--dataset", "/nonexistent/corpus"], "no such file or directory"),
    (["sweep", "--device", "cuda"], "no usable CUDA"),
    (["collect", "--out", "afile"], "afile is a file, not a directory"),
    (["collect", "--out", "notes"], "is not empty and not a cache"),
    (["collect", "--out", "c", "--dataset", "/nonexistent/corpus"], "no such file or directory"),
    (["collect", "--out", "c", "--device", "cuda"], "no usable CUDA"),
    (["eval", "notes"], "cannot tell the format of notes"),
    (["eval", "/nonexistent/sae"], "does not exist as a file or directory"),
    (["eval", "sae", "--out", "afile"], "afile already exists (a file)"),
    (["eval", "sae", "--dataset", "/nonexistent/corpus"], "no such file or directory"),
    (["eval", "bad_sae/sae"], "d_in"),
    (["convert", "params.npz", "converted", "--to", "jumprelu"], "a single .npy array"),
    (["convert", "sae", "converted", "--to", "gemma-scope"], ".npz"),
    (["convert", "sae", "afile", "--to", "jumprelu"], "afile"),
    (["convert", "/nonexistent/sae", "converted", "--to", "jumprelu"], "does not exist"),
    (["dashboard", "/nonexistent/sae", "--out", "d"], "does not exist as a file or directory"),
    (["demo", "--out", "afile"], "afile already exists (a file)"),
]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(("argv", "fragment"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_command_line_is_one_line_and_touches_nothing(
    argv: list[str], fragment: str, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _snapshot(files)
    monkeypatch.chdir(files)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    message = err.getvalue()
    assert code == 2, message
    assert "Traceback" not in message and "unexpected error" not in message, message
    assert fragment in message, message
    assert _snapshot(files) == before


def test_the_entry_point_in_a_fresh_process_prints_one_line(files: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sae_lens_jumprelu", "collect", "--out", "notes"],
        cwd=files,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "is not empty and not a cache" in done.stderr
