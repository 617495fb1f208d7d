"""Checkpoints resumed on another number of ranks, and a rank that dies, on 2 gloo processes."""

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from distributed_harness import run_ranks
from test_data_parallel import BATCH, HOOK, SETTINGS, STEPS, global_batches, make_sae

from sae_lens_jumprelu.training import checkpoint
from sae_lens_jumprelu.training.distributed import Dist, RankFailureError
from sae_lens_jumprelu.training.distributed_loop import CheckpointPlan, train_sharded
from sae_lens_jumprelu.training.sharding import ContextPosition


def _local(batches: list[torch.Tensor], dist: Dist) -> Iterator[dict[str, torch.Tensor]]:
    rows = BATCH // dist.world_size
    return iter({HOOK: b[dist.rank * rows : (dist.rank + 1) * rows]} for b in batches)


def _train_with_checkpoints(dist: Dist, out: Path) -> None:
    torch.manual_seed(100)
    sae = make_sae("jumprelu_ste")
    plan = CheckpointPlan(out / "ckpt", 4, ContextPosition(40 + dist.rank), ["sae"])
    train_sharded(
        {"sae": sae},
        {"sae": HOOK},
        _local(global_batches(), dist),
        SETTINGS,
        dist,
        "data",
        checkpoints=plan,
        progress=None,
    )
    if dist.is_main:
        torch.save(sae.state_dict(), out / "uninterrupted.pt")


def _resume(dist: Dist, out: Path) -> None:
    ckpt = out / "ckpt"
    sae = checkpoint.load_sae(ckpt, "sae", "cpu")
    done = checkpoint.read_progress(ckpt).step
    trainers = train_sharded(
        {"sae": sae},
        {"sae": HOOK},
        _local(global_batches()[done:], dist),
        SETTINGS,
        dist,
        "data",
        resume=ckpt,
        progress=None,
    )
    assert trainers["sae"].n_training_steps == STEPS
    if dist.is_main:
        torch.save(sae.state_dict(), out / "resumed.pt")


def test_a_checkpoint_of_two_ranks_resumes_on_one_and_gives_the_same_weights(tmp_path):
    results = run_ranks(_train_with_checkpoints, 2, tmp_path, tmp_path)
    assert [r.exitcode for r in results] == [0, 0], [r.error for r in results]
    progress = checkpoint.read_progress(tmp_path / "ckpt")  # LATEST -> step_000000004
    assert (progress.step, progress.sae_names) == (4, ["sae"])
    assert progress.next_context == 41  # the furthest any rank had read
    assert not list((tmp_path / "ckpt").glob(".*tmp*")), "a temporary directory was left"

    _resume(Dist(), tmp_path)  # one process, no process group
    uninterrupted = torch.load(tmp_path / "uninterrupted.pt")
    resumed = torch.load(tmp_path / "resumed.pt")
    for name, value in uninterrupted.items():
        torch.testing.assert_close(resumed[name].float(), value.float(), rtol=1e-4, atol=1e-5)


def test_a_checkpoint_of_one_process_resumes_on_two_ranks(tmp_path):
    _train_with_checkpoints(Dist(), tmp_path)
    results = run_ranks(_resume, 2, tmp_path, tmp_path)
    assert [r.exitcode for r in results] == [0, 0], [r.error for r in results]
    uninterrupted = torch.load(tmp_path / "uninterrupted.pt")
    resumed = torch.load(tmp_path / "resumed.pt")
    for name, value in uninterrupted.items():
        torch.testing.assert_close(resumed[name].float(), value.float(), rtol=1e-4, atol=1e-5)


def test_resuming_something_else_is_a_clear_error(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="not a checkpoint"):
        checkpoint.read_progress(tmp_path)


def _dies_at_step_three(dist: Dist, out: Path) -> None:
    def batches() -> Iterator[dict[str, torch.Tensor]]:
        for step, batch in enumerate(_local(global_batches(), dist)):
            if dist.rank == 1 and step == 3:
                os._exit(3)  # no cleanup, as a killed process
            yield batch

    torch.manual_seed(0)
    started = time.monotonic()
    try:
        train_sharded(
            {"sae": make_sae("jumprelu_ste")},
            {"sae": HOOK},
            batches(),
            SETTINGS,
            dist,
            "data",
            progress=None,
        )
    finally:
        (out / f"seconds{dist.rank}").write_text(str(time.monotonic() - started))


def test_a_rank_that_dies_stops_the_others_with_a_clear_error(tmp_path):
    timeout = 10.0
    results = run_ranks(_dies_at_step_three, 2, tmp_path, tmp_path, timeout_s=timeout, join_s=60)
    assert results[1].exitcode == 3
    assert results[0].exitcode == 1, results[0].error
    assert RankFailureError.__name__ in results[0].error
    assert "rank 0 of 2" in results[0].error and "--resume" in results[0].error
    assert float((tmp_path / "seconds0").read_text()) < timeout + 5


def test_resume_starts_where_the_steps_got_not_past_the_shuffle_buffer(monkeypatch, tmp_path):
    from sae_lens_jumprelu.commands.distributed_train import _resume_position
    from sae_lens_jumprelu.commands.train_job import TrainJob

    # step 80 of batch 256 in contexts of 128: 160 contexts' tokens trained on, though the
    # forward passes (filling the shuffle buffer) had read 500
    progress = checkpoint.Progress(80, 500, ["blocks.6.hook_resid_post"])
    monkeypatch.setattr(checkpoint, "read_progress", lambda _path: progress)
    job = TrainJob(distributed="data", resume=tmp_path, batch_size=256, context_size=128)
    with pytest.warns(UserWarning, match="resuming at step 80, context 160: the shuffle buffer"):
        assert _resume_position(job, ["blocks.6.hook_resid_post"]) == 160
    early = checkpoint.Progress(80, 100, ["blocks.6.hook_resid_post"])
    monkeypatch.setattr(checkpoint, "read_progress", lambda _path: early)
    with pytest.warns(UserWarning):
        assert _resume_position(job, ["blocks.6.hook_resid_post"]) == 100
