"""The process group of a multi-process run and the few collectives training needs.

Processes are started by ``torchrun`` (its ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` environment variables); the backend is gloo on CPU and nccl
on CUDA. Every collective has a timeout, and a failed one (a peer that died, or stalled longer
than the timeout) becomes a ``RankFailureError`` naming the rank and what to do, so a job stops
instead of hanging.
"""

import contextlib
import datetime
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class RankFailureError(RuntimeError):
    """A collective failed: another rank died, stalled past the timeout, or disagreed."""


@dataclass(frozen=True)
class Dist:
    """This process's place in the job; with ``world_size`` 1 every collective is a no-op."""

    rank: int = 0
    world_size: int = 1
    timeout_s: float = 300.0
    """Seconds a collective may wait for the other ranks before the job fails."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def mean_(self, tensor: Tensor) -> Tensor:
        """In place: the average of ``tensor`` over ranks (every rank gets it)."""
        return self.sum_(tensor).div_(self.world_size)

    def sum_(self, tensor: Tensor) -> Tensor:
        """In place: the sum of ``tensor`` over ranks."""
        return self._all_reduce_(tensor, dist.ReduceOp.SUM)

    def min_(self, tensor: Tensor) -> Tensor:
        """In place: the elementwise minimum of ``tensor`` over ranks."""
        return self._all_reduce_(tensor, dist.ReduceOp.MIN)

    def max_(self, tensor: Tensor) -> Tensor:
        """In place: the elementwise maximum of ``tensor`` over ranks."""
        return self._all_reduce_(tensor, dist.ReduceOp.MAX)

    def _all_reduce_(self, tensor: Tensor, op: Any) -> Tensor:
        if self.active:
            with self.collective("all_reduce"):
                dist.all_reduce(tensor, op=op)
        return tensor

    def all_true(self, flag: bool) -> bool:
        """True when ``flag`` holds on every rank (e.g. "I still have a batch")."""
        return self.min_int(int(flag)) == 1

    def min_int(self, value: int) -> int:
        return self._reduce_int(value, dist.ReduceOp.MIN)

    def max_int(self, value: int) -> int:
        return self._reduce_int(value, dist.ReduceOp.MAX)

    def _reduce_int(self, value: int, op: Any) -> int:
        if not self.active:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=_comm_device())
        with self.collective("all_reduce"):
            dist.all_reduce(tensor, op=op)
        return int(tensor.item())

    def broadcast_module_(self, module: nn.Module) -> None:
        """Every parameter and buffer takes rank 0's value (DDP does the same at start)."""
        if not self.active:
            return
        with self.collective("broadcast"), torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def gather_to_main(self, obj: Any) -> list[Any] | None:
        """Rank 0 gets every rank's ``obj`` in rank order (pickled; tensors move to CPU)."""
        if not self.active:
            return [obj]
        gathered: list[Any] | None = [None] * self.world_size if self.is_main else None
        with self.collective("gather_object"):
            dist.gather_object(pickle.dumps(obj), gathered, dst=0)
        return None if gathered is None else [pickle.loads(blob) for blob in gathered]

    def barrier(self) -> None:
        if not self.active:
            return
        with self.collective("barrier"):
            if dist.get_backend() == "gloo":
                # Names the ranks that did not arrive, instead of a bare timeout.
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=self.timeout_s))
            else:
                dist.barrier()

    @contextlib.contextmanager
    def collective(self, what: str) -> Iterator[None]:
        """Turn a failed collective into a ``RankFailureError`` that says what to do."""
        try:
            yield
        except (RuntimeError, dist.DistError) as error:
            if isinstance(error, RankFailureError):
                raise
            raise RankFailureError(
                f"rank {self.rank} of {self.world_size}: {what} failed ({_first_line(error)}). "
                f"Another rank has probably died or stalled for more than the "
                f"{self.timeout_s:g} s timeout (--dist-timeout): read its log. Resume from the "
                "last checkpoint with --resume, on any number of ranks."
            ) from error


SINGLE = Dist()
"""The one-process job."""


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in _TORCHRUN_VARS)


def init_from_env(timeout_s: float, device: str = "cpu") -> tuple[Dist, str]:
    """Join the process group torchrun set up; returns this rank and its device (``cuda`` ->
    ``cuda:LOCAL_RANK``)."""
    if not launched_by_torchrun():
        missing = [name for name in _TORCHRUN_VARS if name not in os.environ]
        raise ValueError(
            f"distributed training needs torchrun's environment ({', '.join(missing)} unset): "
            "launch with `torchrun --nproc-per-node N -m sae_lens_jumprelu train --distributed "
            "data ...`"
        )
    if not timeout_s > 0:
        raise ValueError(f"--dist-timeout must be positive seconds, got {timeout_s}")
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return Dist(dist.get_rank(), dist.get_world_size(), timeout_s), device


def destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _comm_device() -> str:
    return "cuda" if dist.is_initialized() and dist.get_backend() == "nccl" else "cpu"


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__
