"""Run a function on N gloo ranks in forked processes (no re-import: seconds, not minutes).

Each rank gets torchrun's environment variables, joins the process group through
``distributed.init_from_env`` and calls ``fn(dist, *args)``; an exception is written to
``<tmp>/rank<r>.err`` and the process exits 1.
"""

import os
import socket
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.multiprocessing as mp

from sae_lens_jumprelu.training import distributed


@dataclass
class RankResult:
    exitcode: int | None
    """None: still running when the harness gave up (killed)."""
    error: str
    """The traceback the rank wrote, or ''."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(
    fn: Callable[..., Any],
    world_size: int,
    tmp: Path,
    *args: Any,
    timeout_s: float = 30.0,
    join_s: float = 120.0,
) -> list[RankResult]:
    port = free_port()
    context = mp.get_context("fork")
    procs = [
        context.Process(target=_rank_main, args=(fn, rank, world_size, port, tmp, timeout_s, args))
        for rank in range(world_size)
    ]
    for proc in procs:
        proc.start()
    results = []
    for rank, proc in enumerate(procs):
        proc.join(join_s)
        if proc.is_alive():
            proc.kill()
            proc.join()
            results.append(RankResult(None, "hung"))
            continue
        err = tmp / f"rank{rank}.err"
        results.append(RankResult(proc.exitcode, err.read_text() if err.exists() else ""))
    return results


def _rank_main(
    fn: Callable[..., Any],
    rank: int,
    world_size: int,
    port: int,
    tmp: Path,
    timeout_s: float,
    args: tuple[Any, ...],
) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    code = 0
    try:
        dist, _ = distributed.init_from_env(timeout_s)
        fn(dist, *args)
    except BaseException:  # noqa: BLE001 - everything goes to the test through the file
        (tmp / f"rank{rank}.err").write_text(traceback.format_exc())
        code = 1
    finally:
        if code == 0:
            distributed.destroy()
    os._exit(code)
