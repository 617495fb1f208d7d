"""SAE-parallel on 2 gloo ranks: each rank gets, at its SAEs' hooks, exactly the batches one
process would feed them (tiny Gemma 2, one forward pass split across the ranks)."""

from pathlib import Path

import torch
from distributed_harness import run_ranks
from gemma_fixtures import BOS, random_contexts, tiny_model

from sae_lens_jumprelu.data.activations import iter_site_activations, shuffled_batches
from sae_lens_jumprelu.data.sites import resolve_sites
from sae_lens_jumprelu.training.distributed import Dist
from sae_lens_jumprelu.training.sharding import (
    ContextPosition,
    assign_round_robin,
    data_parallel_passes,
    sae_parallel_passes,
)

SPECS = ["resid:1", "attn:1", "mlp:0"]
N_CONTEXTS, PER_PASS, BATCH, BUFFER = 40, 16, 96, 512  # 40 = 2.5 passes: an uneven last one


def _setup():
    model = tiny_model()
    return model, resolve_sites(model, SPECS), random_contexts(N_CONTEXTS, context=24)


def _stream(passes, hooks):
    torch.manual_seed(7)  # the shuffle buffer's permutations
    return list(shuffled_batches(passes, hooks, BATCH, BUFFER))


def _rank(dist: Dist, out: Path) -> None:
    model, sites, contexts = _setup()
    hooks = [s.hook_name for s in sites]
    owner = assign_round_robin(hooks, dist.world_size)  # one SAE per site
    needed = [[h for h in hooks if owner[h] == r] for r in range(dist.world_size)]
    position = ContextPosition()
    passes = sae_parallel_passes(
        model, sites, contexts, dist, position, needed, exclude_token_ids=[BOS], progress=None
    )
    batches = _stream(passes, needed[dist.rank])
    torch.save({"batches": batches, "position": position.next_context}, out / f"r{dist.rank}.pt")


def test_each_rank_gets_the_batches_one_process_would_give_its_saes(tmp_path):
    results = run_ranks(_rank, 2, tmp_path, tmp_path)
    assert [r.exitcode for r in results] == [0, 0], [r.error for r in results]
    model, sites, contexts = _setup()
    hooks = [s.hook_name for s in sites]
    passes = iter_site_activations(
        model, sites, contexts, contexts_per_pass=PER_PASS, exclude_token_ids=[BOS], progress=None
    )
    alone = _stream(passes, hooks)
    assert len(alone) == (N_CONTEXTS * 23) // BATCH  # BOS dropped, the rest in full batches
    got = [torch.load(tmp_path / f"r{rank}.pt") for rank in range(2)]
    assert set(got[0]["batches"][0]) == {hooks[0], hooks[2]}  # round robin: 0 and 2 on rank 0
    assert set(got[1]["batches"][0]) == {hooks[1]}
    for rank in range(2):
        assert got[rank]["position"] == N_CONTEXTS
        assert len(got[rank]["batches"]) == len(alone)
        for mine, reference in zip(got[rank]["batches"], alone, strict=True):
            for hook, acts in mine.items():
                # Half the contexts per forward pass: equal up to fp32 rounding of the GEMMs.
                torch.testing.assert_close(acts, reference[hook], rtol=1e-5, atol=1e-5)


def _data_parallel_rank(dist: Dist, out: Path) -> None:
    model, sites, contexts = _setup()
    position = ContextPosition(16)  # resuming: the first 16 contexts were read
    passes = data_parallel_passes(
        model, sites, contexts, dist, position, contexts_per_pass=4, progress=None
    )
    rows = sum(batch[sites[0].hook_name].shape[0] for batch in passes)
    torch.save({"rows": rows, "position": position.next_context}, out / f"dp{dist.rank}.pt")


def test_data_parallel_ranks_read_disjoint_shares_that_cover_the_rest(tmp_path):
    results = run_ranks(_data_parallel_rank, 2, tmp_path, tmp_path)
    assert [r.exitcode for r in results] == [0, 0], [r.error for r in results]
    got = [torch.load(tmp_path / f"dp{rank}.pt") for rank in range(2)]
    # 24 contexts left, rounds of 2 x 4: rank 0 reads 16-19, 24-27, 32-35; rank 1 the others
    assert [g["rows"] for g in got] == [12 * 24, 12 * 24]
    assert [g["position"] for g in got] == [N_CONTEXTS, N_CONTEXTS]
