"""Atomic writes: complete or absent, and with the permissions a plain write would give."""

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sae_lens_jumprelu.atomic import (
    OutputExistsError,
    UnwritableOutputError,
    prepare_output,
    staged_dir,
    write_dir_atomic,
    write_file_atomic,
)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_written_file_and_directory_get_the_umask_default_mode(tmp_path: Path) -> None:
    write_file_atomic(tmp_path / "a.json", lambda tmp: tmp.write_text("{}"))
    write_dir_atomic(tmp_path / "d", lambda tmp: (tmp / "x.txt").write_text("x"))
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~_umask()


def test_safetensors_files_are_readable_by_the_group_under_umask_022(tmp_path: Path) -> None:
    # safetensors' save_file creates owner-only (0600) files; written outputs get the umask's
    old = os.umask(0o022)
    try:
        write_dir_atomic(tmp_path / "d", lambda tmp: save_file({"a": torch.zeros(2)}, tmp / "w"))
        write_file_atomic(tmp_path / "f.safetensors", lambda t: save_file({"a": torch.zeros(1)}, t))
    finally:
        os.umask(old)
    assert (tmp_path / "d" / "w").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "f.safetensors").stat().st_mode & 0o777 == 0o644


def test_staged_output_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    dst = tmp_path / "run"
    with staged_dir(dst, overwrite=False) as staging:
        (staging / "metrics.json").write_text("old")
        (staging / "checkpoints").mkdir()
        (staging / "checkpoints" / "step_1").write_text("ckpt")
    with pytest.raises(KeyboardInterrupt), staged_dir(dst, overwrite=True) as staging:
        (staging / "metrics.json").write_text("new")
        raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging left
    assert (dst / "metrics.json").read_text() == "old"
    with staged_dir(dst, overwrite=True, carry=("checkpoints",)) as staging:
        (staging / "metrics.json").write_text("new")
    assert sorted(p.name for p in dst.iterdir()) == ["checkpoints", "metrics.json"]
    assert (dst / "metrics.json").read_text() == "new"
    assert (dst / "checkpoints" / "step_1").read_text() == "ckpt"


def test_outputs_are_checked_before_the_work(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    with pytest.raises(OutputExistsError, match="--out .*run already exists .*--overwrite"):
        prepare_output(tmp_path / "run", overwrite=False)
    prepare_output(tmp_path / "run", overwrite=True)
    prepare_output(tmp_path / "new" / "deeper" / "run", overwrite=False)  # parents are made
    assert (tmp_path / "new" / "deeper").is_dir() and not (tmp_path / "new/deeper/run").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UnwritableOutputError, match="cannot write in .*file"):
        prepare_output(tmp_path / "file" / "run", overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "new", "run"]  # no probe left


def test_failed_write_leaves_nothing_and_existing_output_is_kept(tmp_path: Path) -> None:
    def fail(tmp: Path) -> None:
        tmp.write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_file_atomic(tmp_path / "a.json", fail)
    assert list(tmp_path.iterdir()) == []
    write_file_atomic(tmp_path / "a.json", lambda tmp: tmp.write_text("1"))
    with pytest.raises(OutputExistsError, match="already exists"):
        write_file_atomic(tmp_path / "a.json", lambda tmp: tmp.write_text("2"))
    assert (tmp_path / "a.json").read_text() == "1"
