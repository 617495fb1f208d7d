"""Gemma Scope releases: ``params.npz`` (Gemma 2) and ``params.safetensors`` (Gemma Scope 2).

Read exactly as released: keys W_enc [d_model, d_sae], W_dec [d_sae, d_model], b_enc [d_sae],
b_dec [d_model], threshold [d_sae] (Gemma Scope 2 spells the matrices w_enc, w_dec), float32,
no transposes, and no b_dec subtraction (``apply_b_dec_to_input=False``). The forward of the
Gemma Scope tutorial is ``(pre > threshold) * relu(pre)`` with ``pre = x @ W_enc + b_enc``, which
is SAELens's "jumprelu" forward. The hook is inferred from a release path such as
``gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71`` as SAELens's loaders do
(``get_gemma_2_config_from_hf``, ``get_gemma_3_config_from_hf``): res/resid_post ->
``blocks.L.hook_resid_post``, mlp/mlp_out -> ``blocks.L.hook_mlp_out``, att/attn_out ->
``blocks.L.attn.hook_z`` (heads concatenated).
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from sae_lens_jumprelu.convert.sae_lens_format import check_keys, read_safetensors
from sae_lens_jumprelu.convert.weights import ConversionError, JumpReLUWeights

NPZ_FILENAME = "params.npz"
SAFETENSORS_FILENAME = "params.safetensors"
# our name -> the file's name, per flavour (explicit key maps, no transposes)
NPZ_KEYS = {"W_enc": "W_enc", "W_dec": "W_dec", "b_enc": "b_enc", "b_dec": "b_dec",
            "threshold": "threshold"}  # fmt: skip
SAFETENSORS_KEYS = {"W_enc": "w_enc", "W_dec": "w_dec", "b_enc": "b_enc", "b_dec": "b_dec",
                    "threshold": "threshold"}  # fmt: skip
_SITES = (
    (re.compile(r"(-res\b|resid_post)"), "blocks.{layer}.hook_resid_post"),
    (re.compile(r"(-mlp\b|mlp_out)"), "blocks.{layer}.hook_mlp_out"),
    (re.compile(r"(-att\b|attn_out)"), "blocks.{layer}.attn.hook_z"),
)
# Gemma 2 release -> (model_name, d_model, attention d_in = n_heads * d_head), as in SAELens's
# get_gemma_2_config_from_hf
_MODELS = {"2b": ("gemma-2-2b", 2304, 2048), "9b": ("gemma-2-9b", 3584, 4096),
           "27b": ("gemma-2-27b", 4608, 4608)}  # fmt: skip
_MODEL = re.compile(r"gemma-scope-(2b|9b|27b)(-pt|-it)?-(res|mlp|att)\b")
_WIDTH = re.compile(r"width_(\d+[km])(?=$|[_/.])")
# release widths are powers of two named loosely ("131k" is 2**17), as in SAELens's width_map
_WIDTHS = {"4k": 2**12, "16k": 2**14, "32k": 2**15, "65k": 2**16, "131k": 2**17, "262k": 2**18,
           "524k": 2**19, "1m": 2**20}  # fmt: skip


def infer_site(release_path: str) -> dict[str, Any]:
    """hook_name, d_sae, d_in, model_name implied by a release path (unknown facts omitted)."""
    facts: dict[str, Any] = {}
    layer = re.search(r"layer_(\d+)", release_path)
    if layer is not None:
        for pattern, hook in _SITES:
            if pattern.search(release_path):
                facts["hook_name"] = hook.format(layer=int(layer.group(1)))
                break
    model = _MODEL.search(release_path)
    if model is not None:
        name, d_model, d_attn = _MODELS[model.group(1)]
        facts["model_name"] = name + ("-it" if model.group(2) == "-it" else "")
        facts["d_in"] = d_attn if model.group(3) == "att" else d_model
    width = _WIDTH.search(release_path)
    if width is not None and width.group(1) in _WIDTHS:
        facts["d_sae"] = _WIDTHS[width.group(1)]
    return facts


def params_file(path: Path) -> Path:
    """The params file of a Gemma Scope release directory (or the file itself)."""
    if path.is_dir():
        for name in (NPZ_FILENAME, SAFETENSORS_FILENAME):
            if (path / name).is_file():
                return path / name
        raise ConversionError(f"{path} holds neither {NPZ_FILENAME} nor {SAFETENSORS_FILENAME}")
    return path


def _read_npz(path: Path) -> dict[str, torch.Tensor]:
    try:
        data = np.load(path, allow_pickle=False)
        # np.load reads by content: a .npy renamed .npz gives a bare array, not an archive
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ConversionError(
                f"{path} is a single .npy array, not a Gemma Scope .npz archive of W_enc, "
                "b_enc, W_dec, b_dec and threshold"
            )
        with data:
            return {k: torch.from_numpy(np.array(data[k])) for k in data.files}
    except ConversionError:
        raise
    except FileNotFoundError as e:
        raise ConversionError(f"{path} does not exist") from e
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise ConversionError(
            f"{path} is not a readable .npz archive ({e}); it is truncated or not a Gemma "
            "Scope file"
        ) from e


def read_gemma_scope(
    path: Path,
    release_path: str | None = None,
    hook_name: str | None = None,
    d_in: int | None = None,
) -> JumpReLUWeights:
    """Read a Gemma Scope params file; ``release_path`` defaults to the file's own path."""
    file = params_file(path)
    is_npz = file.suffix == ".npz"
    raw = _read_npz(file) if is_npz else read_safetensors(file)
    key_map = NPZ_KEYS if is_npz else SAFETENSORS_KEYS
    check_keys(raw, tuple(key_map.values()), str(file))
    sd = {ours: raw[theirs] for ours, theirs in key_map.items()}
    for name, tensor in sd.items():
        if tensor.dtype != torch.float32:
            raise ConversionError(
                f"{file}: {name} is {tensor.dtype}; Gemma Scope files are float32, this one was "
                "modified or is another format"
            )
    facts = infer_site(release_path if release_path is not None else str(file.resolve()))
    d_sae = int(sd["W_enc"].shape[-1]) if sd["W_enc"].ndim == 2 else -1
    if "d_sae" in facts and facts["d_sae"] != d_sae:
        raise ConversionError(
            f"{file}: the release path says width {facts['d_sae']} but W_enc has {d_sae} latents; "
            "the file does not belong to that release path (pass the right release_path)"
        )
    d_in = d_in if d_in is not None else facts.get("d_in")
    if d_in is not None and sd["W_enc"].shape[0] != d_in:
        raise ConversionError(
            f"{file}: W_enc has d_in {sd['W_enc'].shape[0]}, but {d_in} was given or implied by "
            "the release path; the file belongs to another model or site"
        )
    metadata: dict[str, Any] = {k: facts[k] for k in ("model_name",) if k in facts}
    if hook_name or facts.get("hook_name"):
        metadata["hook_name"] = hook_name or facts["hook_name"]
    return JumpReLUWeights(**sd, apply_b_dec_to_input=False, metadata=metadata, source=str(file))


def write_gemma_scope(weights: JumpReLUWeights, file: Path) -> None:
    """Write a Gemma Scope params file: .safetensors (Gemma Scope 2 keys) or else .npz."""
    w = weights.with_b_dec_applied(False).to(torch.float32)
    tensors = w.state_dict()
    if file.suffix == ".safetensors":
        save_file({SAFETENSORS_KEYS[k]: v for k, v in tensors.items()}, file)
        return
    arrays = {NPZ_KEYS[k]: v.cpu().numpy() for k, v in tensors.items()}
    with open(file, "wb") as handle:  # a handle, so numpy does not append ".npz" to the name
        np.savez(handle, **arrays)
