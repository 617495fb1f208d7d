"""Data-parallel training on 2 gloo ranks equals one process on the same global batches."""

from pathlib import Path
from typing import Any

import pytest
import torch
from distributed_harness import run_ranks
from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig

from sae_lens_jumprelu.recipes import get_recipe
from sae_lens_jumprelu.training.distributed import SINGLE, Dist
from sae_lens_jumprelu.training.distributed_loop import train_sharded
from sae_lens_jumprelu.training.settings import TrainerSettings

D_IN, D_SAE, BATCH, STEPS = 8, 32, 64, 8
SETTINGS = TrainerSettings(total_samples=BATCH * STEPS, batch_size=BATCH, lr=3e-3)
HOOK = "blocks.0.hook_resid_post"


def global_batches() -> list[torch.Tensor]:
    """Activations with a large mean and unequal scales, like a residual stream."""
    generator = torch.Generator().manual_seed(1)
    scale = torch.linspace(0.5, 3.0, D_IN)
    return [torch.randn(BATCH, D_IN, generator=generator) * scale + 2.0 for _ in range(STEPS)]


def make_sae(kind: str) -> Any:
    if kind == "jumprelu_ste":  # target mode, b_dec at the mean, E||x||^2 from the first batch
        cfg = get_recipe("short_budget").sae_config(D_IN, D_SAE, target_l0=4)
        from sae_lens_jumprelu import JumpReLUSTETrainingSAE

        return JumpReLUSTETrainingSAE(cfg)
    return TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=4))


def train(kind: str, dist: Dist, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    sae = make_sae(kind)
    rows = BATCH // dist.world_size
    local = [b[dist.rank * rows : (dist.rank + 1) * rows] for b in global_batches()]
    trainers = train_sharded(
        {"sae": sae},
        {"sae": HOOK},
        iter({HOOK: b} for b in local),
        SETTINGS,
        dist,
        "data",
        progress=None,
    )
    trainer = trainers["sae"]
    return {
        "state": {k: v.detach().clone() for k, v in sae.state_dict().items()},
        "act_freq_scores": trainer.act_freq_scores.clone(),
        "since_fired": trainer.n_forward_passes_since_fired.clone(),
        "samples": trainer.n_training_samples,
        "exp_avg_sq": trainer.optimizer.state_dict()["state"][0]["exp_avg_sq"].clone(),
    }


def _rank(dist: Dist, kind: str, out: Path) -> None:
    # A different seed per rank: only rank 0's initial weights may survive (broadcast).
    torch.save(train(kind, dist, seed=100 + dist.rank), out / f"result{dist.rank}.pt")


@pytest.mark.parametrize("kind", ["jumprelu_ste", "topk"])
def test_two_ranks_give_the_weights_of_one_process(kind: str, tmp_path: Path) -> None:
    results = run_ranks(_rank, 2, tmp_path, kind, tmp_path)
    assert [r.exitcode for r in results] == [0, 0], [r.error for r in results]
    alone = train(kind, SINGLE, seed=100)
    initial = make_sae_state(kind, seed=100)
    for rank in range(2):
        got = torch.load(tmp_path / f"result{rank}.pt")
        for name, value in alone["state"].items():
            torch.testing.assert_close(got["state"][name], value, rtol=1e-4, atol=1e-5)
        for key in ("act_freq_scores", "since_fired", "exp_avg_sq"):
            torch.testing.assert_close(got[key], alone[key], rtol=1e-4, atol=1e-7)
        assert got["samples"] == alone["samples"] == BATCH * STEPS
    # the run moved the weights: equality above is not equality of untouched initial weights
    assert (alone["state"]["W_enc"] - initial["W_enc"]).abs().max() > 1e-3
    if kind == "jumprelu_ste":  # the controller and the first-batch statistics were global
        assert alone["state"]["l0_coefficient_integral"] != initial["l0_coefficient_integral"]
        assert alone["state"]["input_scale"] != 1.0


def make_sae_state(kind: str, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in make_sae(kind).state_dict().items()}


def test_one_rank_alone_differs_from_the_global_batch() -> None:
    """The control: training on one half alone does not give the global result."""
    alone = train("jumprelu_ste", SINGLE, seed=100)
    half = Dist(rank=0, world_size=1)
    torch.manual_seed(100)
    sae = make_sae("jumprelu_ste")
    train_sharded(
        {"sae": sae},
        {"sae": HOOK},
        iter({HOOK: b[: BATCH // 2]} for b in global_batches()),
        SETTINGS,
        half,
        "data",
        progress=None,
    )
    assert not torch.allclose(sae.W_enc, alone["state"]["W_enc"], rtol=1e-4, atol=1e-5)
