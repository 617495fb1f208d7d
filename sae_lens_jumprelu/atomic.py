"""Atomic output: a reader sees the old DST, nothing, or the complete new DST, never a part.

Files are written to a temporary name in DST's directory and renamed over it (``os.replace`` is
atomic within one file system); a directory is assembled in a temporary directory beside DST and
renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


class OutputExistsError(FileExistsError):
    """DST exists and overwriting was not requested."""


class UnwritableOutputError(PermissionError):
    """DST's directory cannot take a new entry."""


def check_destination(dst: Path, overwrite: bool) -> None:
    """Refuse an existing ``dst`` unless ``overwrite``, and a missing parent directory."""
    if dst.exists() and not overwrite:
        raise OutputExistsError(
            f"{dst} already exists; choose another destination or pass overwrite=True "
            "(--overwrite) to replace it"
        )
    if not dst.parent.is_dir():
        raise FileNotFoundError(f"the parent directory of {dst} does not exist; create it first")


def prepare_output(dst: Path, overwrite: bool, flag: str = "--out") -> None:
    """The early check of an output a command will write at its end, run before any model or
    text loads so that no work is lost to it: ``dst`` is refused if it exists (unless
    ``overwrite``), its missing parents are created, and its directory must take a new entry."""
    if dst.exists() and not overwrite:
        kind = "a directory" if dst.is_dir() else "a file"
        raise OutputExistsError(
            f"{flag} {dst} already exists ({kind}); choose another {flag}, or pass --overwrite "
            "to replace it once the new output is complete"
        )
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        Path(tempfile.mkdtemp(prefix=f".{dst.name}.probe-", dir=dst.parent)).rmdir()
    except OSError as error:
        raise UnwritableOutputError(
            f"{flag} {dst}: cannot write in {dst.parent} ({error.strerror or error}); "
            f"choose a {flag} in a writable directory"
        ) from None


def _umask() -> int:
    # Linux reports it; setting and restoring it instead would briefly give umask 0 to every
    # other thread of the process.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _temp_beside(dst: Path, is_dir: bool) -> Iterator[Path]:
    prefix = f".{dst.name}.tmp-"
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=dst.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=dst.parent, suffix=dst.suffix)
        os.close(fd)
        tmp = Path(name)
    # tempfile creates owner-only entries; DST gets the mode a plain open()/mkdir() would give.
    tmp.chmod((0o777 if is_dir else 0o666) & ~_umask())
    try:
        yield tmp
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def _shareable(tmp: Path) -> None:
    """Files under ``tmp`` get the mode a plain ``open()`` gives under the umask: safetensors'
    ``save_file`` creates them owner-only (0600 under umask 022), which colleagues cannot read."""
    mode = 0o666 & ~_umask()
    for path in [tmp, *tmp.rglob("*")] if tmp.is_dir() else [tmp]:
        if path.is_file() and not path.is_symlink():
            path.chmod(path.stat().st_mode & 0o111 | mode)


def _replace(tmp: Path, dst: Path) -> None:
    if tmp.is_dir() or (dst.is_dir() and not dst.is_symlink()):
        # A directory cannot be replaced in one rename: move the old DST aside first.
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
        if dst.exists() or dst.is_symlink():
            os.replace(dst, old / dst.name)
        os.replace(tmp, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dst)


def write_file_atomic(dst: Path, write: Callable[[Path], None], overwrite: bool = False) -> None:
    """Call ``write(tmp_path)`` then rename the finished file to ``dst``."""
    check_destination(dst, overwrite)
    with _temp_beside(dst, is_dir=False) as tmp:
        write(tmp)
        _shareable(tmp)
        _replace(tmp, dst)


def write_dir_atomic(dst: Path, write: Callable[[Path], None], overwrite: bool = False) -> None:
    """Call ``write(tmp_dir)`` to fill a fresh directory, then rename it to ``dst``."""
    with staged_dir(dst, overwrite) as tmp:
        write(tmp)


@contextlib.contextmanager
def staged_dir(dst: Path, overwrite: bool, carry: tuple[str, ...] = ()) -> Iterator[Path]:
    """A fresh directory beside ``dst`` for a whole output; when the block completes it is
    renamed to ``dst``, and on any error or Ctrl-C it is removed, leaving ``dst`` as it was.
    An existing ``dst`` is refused unless ``overwrite``; the entries named in ``carry`` (say the
    checkpoints a run wrote into ``dst`` while it trained) are moved over from it first."""
    check_destination(dst, overwrite)
    with _temp_beside(dst, is_dir=True) as tmp:
        yield tmp
        for name in carry:
            if (dst / name).exists() and not (tmp / name).exists():
                os.replace(dst / name, tmp / name)
        _shareable(tmp)
        _replace(tmp, dst)


def write_text_atomic(dst: Path, text: str) -> None:
    """Replace ``dst`` (if any) by a file holding ``text``, atomically."""
    write_file_atomic(dst, lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite=True)
