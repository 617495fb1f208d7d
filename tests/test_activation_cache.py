import json
import warnings

import pytest
import torch
from gemma_fixtures import BOS, EOS, PAD, random_contexts, tiny_model

from sae_lens_jumprelu.data.activation_cache import (
    MANIFEST,
    ActivationCache,
    ActivationCacheError,
    CacheSpec,
    write_activation_cache,
)
from sae_lens_jumprelu.data.activations import site_activations
from sae_lens_jumprelu.data.sites import resolve_sites

SPECIAL = [PAD, EOS, BOS]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def sites(model):
    return resolve_sites(model, ["resid:1", "attn:2"])


def spec_for(sites, **changes):
    fields = dict(
        model="tiny",
        sites=sites,
        dataset="random",
        context_size=16,
        exclude_token_ids=SPECIAL,
        contexts_per_shard=3,
    )
    return CacheSpec(**{**fields, **changes})


def rows_sorted(t: torch.Tensor) -> torch.Tensor:
    """Rows in a canonical order, to compare collections regardless of shuffling."""
    order = sorted(range(t.shape[0]), key=lambda i: t[i].tolist())
    return t[order]


def test_cache_holds_every_token_once_with_its_norm(tmp_path, model, sites):
    contexts = random_contexts(10)
    cache = write_activation_cache(
        tmp_path, model, spec_for(sites), contexts, contexts[:2], contexts_per_pass=2
    )
    expected, kept = site_activations(model, sites, contexts, SPECIAL)
    assert cache.complete and cache.tokens == kept.numel() == 10 * 15 - 2
    assert len(cache.manifest["shards"]) == 4  # 3 + 3 + 3 + 1 contexts
    hooks = [s.hook_name for s in sites]
    batches = list(cache.iter_batches(batch_size=cache.tokens, hook_names=hooks, buffer_shards=4))
    assert len(batches) == 1
    for hook in hooks:
        torch.testing.assert_close(rows_sorted(batches[0][hook]), rows_sorted(expected[hook]))
        expected_norm = expected[hook].pow(2).sum(-1).mean().item()
        assert cache.mean_squared_norm(hook) == pytest.approx(expected_norm, rel=1e-5)
    # one permutation for every site: row i of each hook is the same token
    stacked = torch.cat([expected[h] for h in hooks], dim=1)
    got = torch.cat([batches[0][h] for h in hooks], dim=1)
    torch.testing.assert_close(rows_sorted(got), rows_sorted(stacked))
    assert torch.equal(cache.held_out_tokens(), contexts[:2])


def test_head_is_the_first_tokens_in_stored_order(tmp_path, model, sites):
    contexts = random_contexts(10)
    cache = write_activation_cache(tmp_path, model, spec_for(sites), contexts, contexts_per_pass=2)
    hook = sites[0].hook_name
    stored = torch.cat([cache.read_shard(e, [hook])[hook] for e in cache.manifest["shards"]])
    assert torch.equal(cache.head(hook, 50), stored[:50])  # 50 tokens: across two shards
    assert torch.equal(cache.head(hook, 10_000), stored)  # more than the cache holds: all


class Interrupt(Exception):
    pass


def test_interrupted_collection_resumes_to_the_same_bytes(tmp_path, model, sites):
    contexts = random_contexts(10)
    reference = write_activation_cache(tmp_path / "ref", model, spec_for(sites), contexts)

    calls = {"n": 0}

    def stop_on_third_pass(acts, hook):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Interrupt  # as Ctrl-C would, in the middle of shard 1
        return acts

    model.add_hook("blocks.0.hook_resid_post", stop_on_third_pass)
    try:
        with pytest.raises(Interrupt):
            write_activation_cache(
                tmp_path / "run", model, spec_for(sites), contexts, contexts_per_pass=2
            )
    finally:
        model.reset_hooks()
    partial = ActivationCache(tmp_path / "run")
    assert not partial.complete and [e["index"] for e in partial.manifest["shards"]] == [0]
    (tmp_path / "run" / ".shard_000001.safetensors.tmp-x1").write_bytes(b"half a shard")

    resumed = write_activation_cache(tmp_path / "run", model, spec_for(sites), contexts)
    assert resumed.complete and resumed.tokens == reference.tokens
    for entry in reference.manifest["shards"]:
        name = entry["file"]
        assert (tmp_path / "run" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()
    assert not list((tmp_path / "run").glob(".*.tmp-*"))


def test_damaged_shards_are_reported_and_recollected(tmp_path, model, sites):
    contexts = random_contexts(6)
    cache = write_activation_cache(tmp_path, model, spec_for(sites), contexts)
    original = (tmp_path / "shard_000001.safetensors").read_bytes()
    corrupt = bytearray(original)
    corrupt[-10] ^= 0xFF
    (tmp_path / "shard_000001.safetensors").write_bytes(bytes(corrupt))
    with pytest.raises(
        ActivationCacheError, match="shard_000001.safetensors is corrupt.*re-collects"
    ):
        list(cache.iter_batches(8))
    (tmp_path / "shard_000001.safetensors").write_bytes(original[:-100])
    with pytest.raises(ActivationCacheError, match="truncated"):
        list(cache.iter_batches(8))
    write_activation_cache(tmp_path, model, spec_for(sites), contexts)  # resume repairs it
    assert (tmp_path / "shard_000001.safetensors").read_bytes() == original


def test_resuming_with_other_settings_is_refused(tmp_path, model, sites):
    contexts = random_contexts(3)
    write_activation_cache(tmp_path, model, spec_for(sites), contexts)
    with pytest.raises(ActivationCacheError, match="sites: cache has"):
        write_activation_cache(tmp_path, model, spec_for(sites[:1]), contexts)


def test_not_a_cache_and_damaged_manifest_errors(tmp_path, model, sites):
    with pytest.raises(ActivationCacheError, match="no manifest.json.*sae-jumprelu collect"):
        ActivationCache(tmp_path)
    write_activation_cache(tmp_path, model, spec_for(sites), random_contexts(3))
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(ActivationCacheError, match="not valid JSON"):
        ActivationCache(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format": "other"}))
    with pytest.raises(ActivationCacheError, match="expected 'sae-lens-jumprelu/activation-cache'"):
        ActivationCache(tmp_path)


def test_unknown_hook_requested_from_cache(tmp_path, model, sites):
    cache = write_activation_cache(tmp_path, model, spec_for(sites), random_contexts(3))
    with pytest.raises(
        ActivationCacheError, match="no activations for \\['blocks.3.hook_mlp_out'\\]"
    ):
        cache.iter_batches(8, ["blocks.3.hook_mlp_out"])


def test_a_larger_collect_extends_to_the_bytes_of_a_fresh_one(tmp_path, model, sites):
    contexts = random_contexts(10)  # shards of 3: the first collect's last shard is partial
    write_activation_cache(tmp_path / "grown", model, spec_for(sites), contexts[:7], contexts[:2])
    with pytest.warns(UserWarning, match=r"re-collecting \['shard_000002.safetensors'\]"):
        grown = write_activation_cache(
            tmp_path / "grown", model, spec_for(sites), contexts, contexts[:2]
        )
    fresh = write_activation_cache(
        tmp_path / "fresh", model, spec_for(sites), contexts, contexts[:2]
    )
    assert grown.complete and grown.tokens == fresh.tokens
    assert grown.manifest["shards"] == fresh.manifest["shards"]
    for entry in fresh.manifest["shards"]:
        name = entry["file"]
        assert (tmp_path / "grown" / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes()
    with pytest.raises(ActivationCacheError, match="only extended; ask for at least"):
        write_activation_cache(tmp_path / "grown", model, spec_for(sites), contexts[:4])


def test_held_out_tokens_are_checked_and_follow_the_collect(tmp_path, model, sites):
    contexts = random_contexts(6)
    write_activation_cache(tmp_path, model, spec_for(sites), contexts[:4], contexts[4:5])
    path = tmp_path / "held_out_tokens.safetensors"
    path.write_bytes(path.read_bytes()[:-8])  # truncated
    with pytest.raises(ActivationCacheError, match="held_out_tokens.safetensors is missing or"):
        ActivationCache(tmp_path).held_out_tokens()
    # a rerun repairs it; another held-out split (another size's) replaces the old one
    with pytest.warns(UserWarning, match="rewriting"):
        write_activation_cache(tmp_path, model, spec_for(sites), contexts[:4], contexts[4:5])
    assert torch.equal(ActivationCache(tmp_path).held_out_tokens(), contexts[4:5])
    with pytest.warns(UserWarning, match="rewriting"):
        write_activation_cache(tmp_path, model, spec_for(sites), contexts[:4], contexts[5:6])
    assert torch.equal(ActivationCache(tmp_path).held_out_tokens(), contexts[5:6])


def test_collect_never_deletes_or_mixes_with_a_users_files(tmp_path, model, sites):
    mine = tmp_path / ".notes.tmp-2024"
    mine.write_text("a user's file")
    with pytest.raises(ActivationCacheError, match=r"not empty and not a cache .*notes"):
        write_activation_cache(tmp_path, model, spec_for(sites), random_contexts(3))
    assert mine.read_text() == "a user's file" and sorted(tmp_path.iterdir()) == [mine]


def test_a_manifest_edit_is_reported_as_a_cache_problem(tmp_path, model, sites):
    write_activation_cache(tmp_path, model, spec_for(sites), random_contexts(3))
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest["sites"][0]["d_in"] += 1
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ActivationCacheError, match="says d_in .*the manifest was edited"):
        list(ActivationCache(tmp_path).iter_batches(8))
    del manifest["shards"]
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ActivationCacheError, match=r"lacks \['shards'\]: the cache's manifest"):
        ActivationCache(tmp_path)


def test_a_budget_beyond_the_cache_reads_it_again_reshuffled(tmp_path, model, sites):
    from sae_lens_jumprelu.commands.pipeline import cache_passes

    contexts = random_contexts(10)
    cache = write_activation_cache(tmp_path, model, spec_for(sites), contexts, contexts[:2])
    hook = sites[0].hook_name
    assert cache.tokens == 148  # 4 batches of 32 a pass, 20 tokens dropped
    torch.manual_seed(0)  # the shuffle buffer draws from the global RNG
    with pytest.warns(UserWarning, match="holds 148 tokens: --tokens 300 reads it 3 times"):
        batches = [b[hook] for b in cache_passes(cache, 300, 32, [hook], seed=5)]
    assert len(batches) == 12
    passes = [torch.cat(batches[i : i + 4]) for i in (0, 4, 8)]
    torch.manual_seed(0)
    first_pass = torch.cat([b[hook] for b in cache.iter_batches(32, [hook], seed=5)])
    assert torch.equal(passes[0], first_pass)
    assert not torch.equal(passes[0], passes[1])  # each pass has its own order
    everything = cache.iter_batches(cache.tokens, [hook], shuffle_shards=False)
    every_row = {tuple(r.tolist()) for r in next(everything)[hook]}
    for rows in passes:
        assert {tuple(r.tolist()) for r in rows} <= every_row and len(rows) == 128
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a budget the cache covers: one pass, said nothing
        assert len(list(cache_passes(cache, 128, 32, [hook], seed=5))) == 4
