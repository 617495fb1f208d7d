"""What the synthetic benchmarks share: train one SAE per worker process, score it, collect rows.

Each worker trains with one thread: on this 2-core machine two single-threaded runs side by side
finish sooner than two two-threaded runs in turn (small matmuls gain little from a second thread).
"""

import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from typing import Any

import torch
from sae_lens.saes.sae import TrainingSAE

from sae_lens_jumprelu.data.synthetic import SyntheticTask, score_on_synthetic, train_on_synthetic
from sae_lens_jumprelu.recipes import Recipe

SaeFactory = Callable[[int], TrainingSAE[Any]]
"""Builds a fresh SAE for ``d_in``; must be picklable (a module-level function or a partial)."""


def train_and_score(
    label: dict[str, Any], make_sae: SaeFactory, trainer: Recipe, steps: int, task: SyntheticTask
) -> dict[str, Any]:
    torch.set_num_threads(1)
    model = task.build()
    seed = label.get("seed", 0)
    torch.manual_seed(seed)  # the same initialisation whichever worker and job order
    sae = make_sae(task.hidden_dim)
    start = time.perf_counter()
    train_on_synthetic(sae, model, trainer.trainer_settings(steps * trainer.batch_size), seed=seed)
    seconds = time.perf_counter() - start
    scores = score_on_synthetic(sae, model)
    print(f"{label}: {scores}", flush=True)
    return {**label, **asdict(scores), "train_seconds": seconds}


Job = tuple[dict[str, Any], SaeFactory, Recipe]
"""A row label, the SAE to build, and the recipe whose optimiser settings train it. A label's
``"seed"`` (default 0) seeds the SAE's initialisation and the training batches."""


def run_jobs(
    jobs: list[Job], steps: int, task: SyntheticTask, workers: int = 2
) -> list[dict[str, Any]]:
    """Train and score every job on the same batches; rows come back in job order."""
    with ProcessPoolExecutor(workers) as pool:
        futures = [
            pool.submit(train_and_score, label, make, recipe, steps, task)
            for label, make, recipe in jobs
        ]
        return [future.result() for future in futures]
