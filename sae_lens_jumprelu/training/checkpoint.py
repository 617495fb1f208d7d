"""Training checkpoints that any number of ranks can resume: written once, by rank 0, atomically.

A checkpoint holds, per SAE, the full training SAE (SAELens's ``save_model``: weights, the
threshold, E||x||^2 scale and target-mode controller state) and its ``SAETrainer`` state (Adam's
moments, learning-rate and coefficient schedules, step and sample counts, firing statistics),
plus ``progress.json`` (the step and the index of the next unread context). Nothing in it
depends on the number of ranks: data-parallel replicas are identical, so rank 0's copy is the
SAE, and in SAE-parallel runs rank 0 gathers every rank's SAEs before writing.

Layout: ``<dir>/step_<N>/{progress.json, saes/<name>/...}`` and ``<dir>/LATEST`` naming the
newest one; each ``step_<N>`` is assembled beside its final name and renamed into place.
"""

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sae_lens.saes.sae import TrainingSAE
from sae_lens.training.sae_trainer import SAETrainer

from sae_lens_jumprelu.atomic import write_dir_atomic, write_file_atomic
from sae_lens_jumprelu.training.distributed import Dist

_PROGRESS = "progress.json"
_LATEST = "LATEST"
_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed; the message says why and what to do."""


@dataclass(frozen=True)
class Progress:
    step: int
    """Optimizer steps taken by every SAE."""
    next_context: int
    """Index of the first context not yet read by any rank (where reading resumes)."""
    sae_names: list[str]


def save_checkpoint(
    directory: Path,
    trainers: dict[str, SAETrainer[Any, Any]],
    progress: Progress,
    dist: Dist,
    *,
    replicated: bool,
) -> Path | None:
    """Write ``<directory>/step_<N>`` from rank 0; every rank must call it. ``replicated``:
    every rank holds every SAE (data-parallel), else each holds its own (SAE-parallel).
    Returns the path on rank 0."""
    send = {} if replicated and not dist.is_main else trainers
    gathered = dist.gather_to_main(files_written_by(_trainer_writer(send)))
    path = None
    if gathered is not None:
        files = {name: data for part in gathered for name, data in part.items()}
        missing = sorted(set(progress.sae_names) - {n.split("/", 1)[0] for n in files})
        if missing:
            raise CheckpointError(f"no rank sent the SAEs {missing} for the checkpoint")
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"step_{progress.step:09d}"
        write_dir_atomic(path, lambda tmp: _write(tmp, files, progress), overwrite=True)
        write_file_atomic(
            directory / _LATEST, lambda tmp: tmp.write_text(path.name), overwrite=True
        )
    dist.barrier()  # no rank runs ahead of a checkpoint that might fail to be written
    return path


def resolve(path: Path) -> Path:
    """A ``step_<N>`` directory, or a checkpoint directory (its ``LATEST``)."""
    if (path / _LATEST).is_file():
        path = path / (path / _LATEST).read_text().strip()
    if not (path / _PROGRESS).is_file():
        raise CheckpointError(
            f"{path} is not a checkpoint (no {_PROGRESS}): give a directory written by "
            "--checkpoint-every, or one of its step_<N> subdirectories"
        )
    return path


def read_progress(path: Path) -> Progress:
    data = json.loads((resolve(path) / _PROGRESS).read_text())
    if data.get("format") != _FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {data.get('format')}, expected 1")
    return Progress(data["step"], data["next_context"], data["sae_names"])


def load_sae(path: Path, name: str, device: str) -> TrainingSAE[Any]:
    """The training SAE ``name`` as it was at the checkpoint."""
    sae_dir = resolve(path) / "saes" / name
    if not sae_dir.is_dir():
        raise CheckpointError(
            f"{resolve(path)} has no SAE {name!r}: resume with the sites and settings of the "
            "run that wrote it"
        )
    return TrainingSAE.load_from_disk(sae_dir, device=device)


def load_trainer_state(path: Path, name: str, trainer: SAETrainer[Any, Any]) -> None:
    trainer.load_trainer_state(resolve(path) / "saes" / name)


def files_written_by(write: Callable[[Path], None]) -> dict[str, bytes]:
    """What ``write(directory)`` puts in a fresh directory, as ``{relative path: bytes}``: how
    a rank sends files to rank 0, which writes them."""
    with tempfile.TemporaryDirectory() as tmp:
        write(Path(tmp))
        return {
            str(file.relative_to(tmp)): file.read_bytes()
            for file in sorted(Path(tmp).rglob("*"))
            if file.is_file()
        }


def write_files(directory: Path, files: dict[str, bytes]) -> None:
    for relative, data in files.items():
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def _trainer_writer(trainers: dict[str, SAETrainer[Any, Any]]) -> Callable[[Path], None]:
    def write(directory: Path) -> None:
        for name, trainer in trainers.items():
            trainer.sae.save_model(directory / name)
            trainer.save_trainer_state(directory / name)

    return write


def _write(tmp: Path, files: dict[str, bytes], progress: Progress) -> None:
    write_files(tmp / "saes", files)
    record = {
        "format": _FORMAT,
        "step": progress.step,
        "next_context": progress.next_context,
        "sae_names": progress.sae_names,
    }
    (tmp / _PROGRESS).write_text(json.dumps(record, indent=2))
