"""Atomic writes: complete or absent, and with the permissions a plain write would give."""

import os
from pathlib import Path

import pytest

from sae_lens_jumprelu.atomic import OutputExistsError, write_dir_atomic, write_file_atomic


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_written_file_and_directory_get_the_umask_default_mode(tmp_path: Path) -> None:
    write_file_atomic(tmp_path / "a.json", lambda tmp: tmp.write_text("{}"))
    write_dir_atomic(tmp_path / "d", lambda tmp: (tmp / "x.txt").write_text("x"))
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~_umask()


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
