"""A disk cache of activations: sharded safetensors plus a JSON manifest, resumable.

Shard ``i`` holds the activations of contexts ``[i * contexts_per_shard, (i + 1) *
contexts_per_shard)`` at every site (one key per hook name, plus ``token_ids``), rows shuffled
within the shard. Shards are written to a temporary file and renamed; the manifest, rewritten
atomically after each shard, lists only shards that are complete, with their size and CRC32. A
run interrupted at any point therefore leaves a valid cache; running the same ``collect`` again
verifies what is there, re-collects missing or damaged shards from their own contexts and adds
the rest: no token is duplicated or lost.
"""

import json
import math
import re
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from sae_lens_jumprelu.atomic import prepare_output, write_file_atomic
from sae_lens_jumprelu.data.activations import SiteBatch, shuffled_batches, site_activations
from sae_lens_jumprelu.data.sites import Site

FORMAT = "sae-lens-jumprelu/activation-cache"
VERSION = 1
MANIFEST = "manifest.json"
HELD_OUT = "held_out_tokens.safetensors"
# What must match for a resumed run to extend a cache rather than mix two different ones.
_IDENTITY_KEYS = (
    "model",
    "sites",
    "dtype",
    "context_size",
    "dataset",
    "exclude_token_ids",
    "contexts_per_shard",
    "seed",
)


class ActivationCacheError(ValueError):
    """The cache directory is unusable as it stands; the message says what to do."""


@dataclass(frozen=True)
class CacheSpec:
    """What a cache holds; recorded in the manifest."""

    model: str
    sites: list[Site]
    dataset: str
    context_size: int
    exclude_token_ids: list[int]
    contexts_per_shard: int = 64
    seed: int = 0

    def identity(self, dtype: torch.dtype) -> dict[str, Any]:
        return {
            "model": self.model,
            "sites": [
                {"hook_name": s.hook_name, "d_in": s.d_in, "layer": s.layer} for s in self.sites
            ],
            "dtype": str(dtype).removeprefix("torch."),
            "context_size": self.context_size,
            "dataset": self.dataset,
            "exclude_token_ids": list(self.exclude_token_ids),
            "contexts_per_shard": self.contexts_per_shard,
            "seed": self.seed,
        }


def write_activation_cache(
    out_dir: str | Path,
    model: HookedTransformer,
    spec: CacheSpec,
    contexts: Int[Tensor, "n_contexts context"],
    held_out: Int[Tensor, "n_held_out context"] | None = None,
    *,
    contexts_per_pass: int = 16,
) -> "ActivationCache":
    """Collect (or finish collecting) the activations of ``contexts`` into ``out_dir``."""
    out = Path(out_dir)
    check_cache_destination(out)
    out.mkdir(parents=True, exist_ok=True)
    for stray in out.glob(".*.tmp-*"):
        if _is_own_temp(stray.name):
            stray.unlink()  # a shard or manifest whose write was interrupted
    identity = spec.identity(model.cfg.dtype)
    manifest = _start_manifest(out, identity)
    if held_out is not None:
        manifest["held_out"] = _write_held_out(out, manifest.get("held_out"), held_out)
    n_shards = math.ceil(contexts.shape[0] / spec.contexts_per_shard)
    # A shard counts as done only if it holds the contexts it would hold in a fresh collect of
    # this size: a larger --tokens re-collects the old partial last shard instead of leaving a
    # gap after it.
    grown_from = [e["file"] for e in manifest["shards"] if e["index"] >= n_shards]
    if grown_from:
        raise ActivationCacheError(
            f"{out} holds more contexts than asked for ({grown_from[0]} and after): a cache is "
            "only extended; ask for at least its own --tokens, or collect into a new --out"
        )
    expected = {
        i: [i * spec.contexts_per_shard, min((i + 1) * spec.contexts_per_shard, len(contexts))]
        for i in range(n_shards)
    }
    done = {
        entry["index"]: entry
        for entry in manifest["shards"]
        if entry["contexts"] == expected.get(entry["index"]) and _shard_ok(out, entry)
    }
    regrown = [e["file"] for e in manifest["shards"] if e["index"] not in done
               and e["contexts"] != expected.get(e["index"])]  # fmt: skip
    damaged = [e["file"] for e in manifest["shards"] if e["index"] not in done
               and e["file"] not in regrown]  # fmt: skip
    if regrown:
        warnings.warn(
            f"re-collecting {regrown}: their contexts differ from a collect of this size "
            f"({len(contexts)} contexts)",
            stacklevel=2,
        )
    if damaged:
        warnings.warn(f"re-collecting damaged or missing shards {damaged}", stacklevel=2)
    todo = [index for index in range(n_shards) if index not in done]
    for index in tqdm(todo, desc=f"collecting to {out}", unit="shard"):
        start = index * spec.contexts_per_shard
        shard_contexts = contexts[start : start + spec.contexts_per_shard]
        done[index] = _collect_shard(out, model, spec, index, shard_contexts, contexts_per_pass)
        manifest["shards"] = [done[i] for i in sorted(done)]
        _write_manifest(out, manifest, n_shards)
    _write_manifest(out, {**manifest, "shards": [done[i] for i in sorted(done)]}, n_shards)
    return ActivationCache(out)


def check_cache_destination(out: Path) -> None:
    """``out`` can be collected into: absent, empty, or a cache this tool wrote (to extend).
    Run before the model loads (``run_collect``) and when the collect starts."""
    if out.exists() and not out.is_dir():
        raise ActivationCacheError(f"--out {out} is a file, not a directory; choose another --out")
    if not out.exists():
        prepare_output(out, overwrite=False)  # its directory must take a new entry
        return
    if (out / MANIFEST).exists():
        return
    if any(out.glob("shard_*.safetensors")):
        raise ActivationCacheError(
            f"{out} has shards but no {MANIFEST}: it is not a cache this tool can extend; "
            "choose an empty directory"
        )
    others = sorted(
        p.name for p in out.iterdir() if p.name != HELD_OUT and not _is_own_temp(p.name)
    )
    if others:
        raise ActivationCacheError(
            f"{out} is not empty and not a cache (it holds {others[:3]}): collect writes "
            "into a new or empty directory, or extends a cache it wrote; choose another --out"
        )


def _start_manifest(out: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """The manifest to extend, or a new one (``out`` already passed
    ``check_cache_destination``)."""
    if not (out / MANIFEST).exists():
        return {"format": FORMAT, "version": VERSION, **identity, "shards": []}
    manifest = _read_manifest(out)
    changed = [key for key in _IDENTITY_KEYS if manifest.get(key) != identity[key]]
    if changed:
        detail = "; ".join(
            f"{k}: cache has {manifest.get(k)!r}, now {identity[k]!r}" for k in changed
        )
        raise ActivationCacheError(
            f"{out} holds a different collection ({detail}); resume with the same settings or "
            "write to a new directory"
        )
    return manifest


@torch.no_grad()
def _collect_shard(
    out: Path,
    model: HookedTransformer,
    spec: CacheSpec,
    index: int,
    contexts: Tensor,
    contexts_per_pass: int,
) -> dict[str, Any]:
    parts: list[SiteBatch] = []
    token_parts: list[Tensor] = []
    for start in range(0, contexts.shape[0], contexts_per_pass):
        batch, tokens = site_activations(
            model, spec.sites, contexts[start : start + contexts_per_pass], spec.exclude_token_ids
        )
        parts.append({hook: acts.cpu() for hook, acts in batch.items()})
        token_parts.append(tokens)
    # Rows shuffled within the shard, one permutation for every site (seeded by shard: a
    # re-collected shard is bit-identical).
    token_ids = torch.cat(token_parts)
    order = torch.randperm(
        token_ids.shape[0], generator=torch.Generator().manual_seed(spec.seed * 1_000_003 + index)
    )
    tensors = {"token_ids": token_ids[order].contiguous()}
    for site in spec.sites:
        tensors[site.hook_name] = torch.cat([p[site.hook_name] for p in parts])[order].contiguous()
    data = save(tensors)
    name = f"shard_{index:06d}.safetensors"
    _atomic_write(out / name, data)
    return {
        "index": index,
        "file": name,
        "contexts": [
            index * spec.contexts_per_shard,
            index * spec.contexts_per_shard + contexts.shape[0],
        ],
        "tokens": int(token_ids.shape[0]),
        "bytes": len(data),
        "crc32": zlib.crc32(data),
        "sum_squared_norm": {
            site.hook_name: tensors[site.hook_name].float().pow(2).sum().item()
            for site in spec.sites
        },
    }


def _write_held_out(
    out: Path, entry: dict[str, Any] | None, held_out: Int[Tensor, "n context"]
) -> dict[str, Any]:
    """The held-out tokens of this collect, rewritten when the file is missing, damaged or
    holds other tokens (a collect of another size holds out other documents, which would
    otherwise overlap the new training contexts); its manifest entry (size and CRC32)."""
    data = save({"tokens": held_out.contiguous()})
    new = {"file": HELD_OUT, "bytes": len(data), "crc32": zlib.crc32(data)}
    if entry != new or not _shard_ok(out, new):
        if (out / HELD_OUT).exists():
            warnings.warn(
                f"rewriting {out / HELD_OUT}: it differs from this collect's", stacklevel=3
            )
        _atomic_write(out / HELD_OUT, data)
    return new


def _shard_ok(out: Path, entry: dict[str, Any]) -> bool:
    path = out / entry["file"]
    if not path.exists() or path.stat().st_size != entry["bytes"]:
        return False
    return zlib.crc32(path.read_bytes()) == entry["crc32"]


def _write_manifest(out: Path, manifest: dict[str, Any], n_shards: int) -> None:
    shards = manifest["shards"]
    tokens = sum(entry["tokens"] for entry in shards)
    manifest["tokens"] = tokens
    manifest["complete"] = set(range(n_shards)) <= {entry["index"] for entry in shards}
    manifest["n_shards"] = n_shards
    manifest["mean_squared_norm"] = {
        site["hook_name"]: sum(e["sum_squared_norm"][site["hook_name"]] for e in shards)
        / max(1, tokens)
        for site in manifest["sites"]
    }
    _atomic_write(out / MANIFEST, json.dumps(manifest, indent=1).encode())


def _read_manifest(out: Path) -> dict[str, Any]:
    path = out / MANIFEST
    if not path.exists():
        raise ActivationCacheError(
            f"{out} is not an activation cache (no {MANIFEST}); write one with "
            "`sae-jumprelu collect --out DIR`"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ActivationCacheError(
            f"{path} is not valid JSON ({error}); the cache is damaged"
        ) from error
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ActivationCacheError(
            f"{path}: format {manifest.get('format')!r} version {manifest.get('version')!r}, "
            f"expected {FORMAT!r} version {VERSION}"
        )
    missing = [key for key in ("shards", *_IDENTITY_KEYS) if key not in manifest]
    if missing:
        raise ActivationCacheError(
            f"{path} lacks {missing}: the cache's manifest is damaged or edited; collect into a "
            "new --out"
        )
    return manifest


def _is_own_temp(name: str) -> bool:
    """A temporary name ``write_file_atomic`` gave one of the cache's own files (never a
    user's file that merely looks alike, such as ``.notes.tmp-2024``)."""
    own = re.fullmatch(r"\.(.+)\.tmp-[A-Za-z0-9_]+(\.[a-z]+)?", name)
    if own is None:
        return False
    target = own.group(1)
    shard = re.fullmatch(r"shard_\d+\.safetensors", target)
    return target in (MANIFEST, HELD_OUT) or shard is not None


def _atomic_write(path: Path, data: bytes) -> None:
    write_file_atomic(path, lambda tmp: tmp.write_bytes(data), overwrite=True)


class ActivationCache:
    """Reads a cache written by ``write_activation_cache``."""

    def __init__(self, path: str | Path, *, verify: bool = True):
        self.path = Path(path)
        self.manifest = _read_manifest(self.path)
        # CRC32 of every shard read; off saves ~a third of the read time on trusted caches.
        self.verify = verify

    @property
    def sites(self) -> list[Site]:
        return [Site(**site) for site in self.manifest["sites"]]

    @property
    def tokens(self) -> int:
        return self.manifest["tokens"]

    @property
    def complete(self) -> bool:
        return self.manifest["complete"]

    def mean_squared_norm(self, hook_name: str) -> float:
        """E||x||^2 over every cached token: the dataset-wide normalisation scalar is its
        inverse square root."""
        return self.manifest["mean_squared_norm"][hook_name]

    def held_out_tokens(self) -> Tensor | None:
        """The held-out contexts, checked against the manifest's size and CRC32; None for a
        cache written without them."""
        path, entry = self.path / HELD_OUT, self.manifest.get("held_out")
        if entry is None:  # written before the manifest listed it: readable or not
            if not path.exists():
                return None
            entry = {"file": HELD_OUT, "bytes": path.stat().st_size, "crc32": None}
            try:
                return load(path.read_bytes())["tokens"]
            except (SafetensorError, KeyError):
                pass
        if entry["crc32"] is None or not _shard_ok(self.path, entry):
            raise ActivationCacheError(
                f"{path} is missing or damaged (size or CRC32 differs from the manifest); "
                "run the same `sae-jumprelu collect` again: it rewrites it"
            )
        return load(path.read_bytes())["tokens"]

    def read_shard(self, entry: dict[str, Any], hook_names: list[str]) -> SiteBatch:
        path = self.path / entry["file"]
        fix = (
            f"delete it and run the same `sae-jumprelu collect` again: it re-collects only "
            f"that shard (contexts {entry['contexts'][0]}-{entry['contexts'][1] - 1})"
        )
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ActivationCacheError(f"cache shard {path} is missing; {fix}") from None
        if len(data) != entry["bytes"]:
            raise ActivationCacheError(
                f"cache shard {path} is truncated or altered ({len(data)} bytes, manifest says "
                f"{entry['bytes']}); {fix}"
            )
        if self.verify and zlib.crc32(data) != entry["crc32"]:
            raise ActivationCacheError(f"cache shard {path} is corrupt (CRC32 mismatch); {fix}")
        try:
            tensors = load(data)
        except SafetensorError as error:
            raise ActivationCacheError(
                f"cache shard {path} is unreadable ({error}); {fix}"
            ) from error
        d_in = {site.hook_name: site.d_in for site in self.sites}
        for hook in hook_names:
            if hook not in tensors or tensors[hook].shape[-1] != d_in.get(hook):
                found = tuple(tensors[hook].shape) if hook in tensors else "nothing"
                raise ActivationCacheError(
                    f"cache shard {path} holds {found} for {hook}, but {MANIFEST} says d_in "
                    f"{d_in.get(hook)}: the manifest was edited or the cache is damaged; "
                    "collect into a new --out"
                )
        return {hook: tensors[hook] for hook in hook_names}

    def head(self, hook_name: str, tokens: int) -> Float[Tensor, "n d_in"]:
        """The first ``tokens`` activations at ``hook_name`` in stored order (fewer if the
        cache holds fewer): a fixed sample to inspect, read without a batch stream."""
        parts: list[Tensor] = []
        for entry in self.manifest["shards"]:
            if sum(part.shape[0] for part in parts) >= tokens:
                break
            parts.append(self.read_shard(entry, [hook_name])[hook_name])
        if not parts:
            raise ActivationCacheError(f"{self.path} holds no complete shard yet")
        return torch.cat(parts)[:tokens]

    def iter_batches(
        self,
        batch_size: int,
        hook_names: list[str] | None = None,
        *,
        shuffle_shards: bool = True,
        buffer_shards: int = 4,
        seed: int = 0,
    ) -> Iterator[SiteBatch]:
        """One pass over the cache in fixed-size batches (the last partial batch dropped),
        shards in a seeded random order and rows mixed across ``buffer_shards`` shards."""
        if not self.manifest["shards"]:
            raise ActivationCacheError(f"{self.path} holds no complete shard yet")
        hooks = hook_names or [site.hook_name for site in self.sites]
        missing = sorted(set(hooks) - {site.hook_name for site in self.sites})
        if missing:
            raise ActivationCacheError(
                f"{self.path} has no activations for {missing}; it holds "
                f"{[site.hook_name for site in self.sites]}"
            )
        entries = list(self.manifest["shards"])
        if shuffle_shards:
            order = torch.randperm(len(entries), generator=torch.Generator().manual_seed(seed))
            entries = [entries[i] for i in order]
        mean_shard = self.tokens / len(entries)
        shards = (self.read_shard(entry, hooks) for entry in entries)
        return shuffled_batches(shards, hooks, batch_size, int(buffer_shards * mean_shard))
