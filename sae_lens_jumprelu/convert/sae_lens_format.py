"""SAELens's on-disk format: ``cfg.json`` + ``sae_weights.safetensors``, "jumprelu" or "gated".

Key maps (SAELens 6, ``saes/jumprelu_sae.py`` and ``saes/gated_sae.py``), no transposes:

- jumprelu: W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in], threshold [d_sae]
- gated:    W_enc [d_in, d_sae], b_gate, r_mag, b_mag [d_sae], W_dec [d_sae, d_in], b_dec [d_in]

Only SAEs whose inputs are not normalised at run time (``normalize_activations`` "none") are
converted: a run-time normalisation is not part of the other formats.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE
from sae_lens.saes.gated_sae import GatedSAE, GatedSAEConfig
from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from sae_lens_jumprelu.convert.weights import ConversionError, GatedWeights, JumpReLUWeights

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
JUMPRELU_KEYS = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")
GATED_KEYS = ("W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec")
# cfg fields that are SAE-independent facts, carried across formats in ``metadata``
_CARRIED = ("model_name", "hook_name", "hook_head_index", "prepend_bos", "context_size")


def check_keys(found: dict[str, Any], expected: tuple[str, ...], source: str) -> None:
    """Raise naming every missing and unexpected key."""
    missing = [k for k in expected if k not in found]
    extra = sorted(k for k in found if k not in expected)
    if missing or extra:
        raise ConversionError(
            f"{source}: expected exactly the keys {list(expected)}; missing {missing}, "
            f"unexpected {extra}. The file is not this format or comes from another architecture"
        )


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ConversionError(f"{path} is missing; the SAE directory is incomplete") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(
            f"{path} is not valid JSON ({e}); the file is truncated or corrupt"
        ) from e
    if not isinstance(data, dict):
        raise ConversionError(f"{path} holds a JSON {type(data).__name__}, expected an object")
    return data


def read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(path)
    except FileNotFoundError as e:
        raise ConversionError(f"{path} is missing; the SAE directory is incomplete") from e
    except (SafetensorError, OSError, ValueError) as e:
        raise ConversionError(
            f"{path} is not a readable safetensors file ({e}); it is truncated or corrupt"
        ) from e


def read_sae_lens(path: Path) -> JumpReLUWeights | GatedWeights:
    """Read a SAELens "jumprelu" or "gated" SAE directory."""
    cfg = read_json(path / CFG_FILENAME)
    arch = cfg.get("architecture")
    if arch not in ("jumprelu", "gated"):
        raise ConversionError(
            f"{path / CFG_FILENAME}: architecture {arch!r} is not convertible; "
            "expected 'jumprelu' or 'gated'"
        )
    norm = cfg.get("normalize_activations") or "none"
    if norm != "none":
        raise ConversionError(
            f"{path / CFG_FILENAME}: normalize_activations={norm!r} normalises inputs at run time, "
            "which the other formats cannot express; fold the normalisation into the weights first"
        )
    sd = read_safetensors(path / WEIGHTS_FILENAME)
    source = str(path)
    meta = dict(cfg.get("metadata") or {})
    meta.update({k: cfg[k] for k in _CARRIED if k in cfg and k not in meta})
    meta.pop("sae_lens_version", None)
    meta.pop("sae_lens_training_version", None)
    apply = bool(cfg.get("apply_b_dec_to_input", True))
    if arch == "gated":
        check_keys(sd, GATED_KEYS, source)
        return GatedWeights(**{k: sd[k] for k in GATED_KEYS}, apply_b_dec_to_input=apply,
                            metadata=meta, source=source)  # fmt: skip
    check_keys(sd, JUMPRELU_KEYS, source)
    return JumpReLUWeights(**{k: sd[k] for k in JUMPRELU_KEYS}, apply_b_dec_to_input=apply,
                           metadata=meta, source=source)  # fmt: skip


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def sae_lens_cfg(weights: JumpReLUWeights | GatedWeights) -> dict[str, Any]:
    """The cfg.json SAELens's ``SAE.load_from_disk`` reads for these weights."""
    cls = GatedSAEConfig if isinstance(weights, GatedWeights) else JumpReLUSAEConfig
    meta = {k: v for k, v in weights.metadata.items() if k != "reshape_activations"}
    cfg = cls(
        d_in=weights.d_in,
        d_sae=weights.d_sae,
        dtype=_dtype_name(weights.W_enc.dtype),
        apply_b_dec_to_input=weights.apply_b_dec_to_input,
        reshape_activations=weights.metadata.get("reshape_activations", "none"),
    )
    cfg.metadata.__dict__.update(meta)
    return cfg.to_dict()


def to_sae_lens_sae(weights: JumpReLUWeights | GatedWeights) -> JumpReLUSAE | GatedSAE:
    """An in-memory SAELens SAE (``JumpReLUSAE`` or ``GatedSAE``) holding these weights."""
    cfg_dict = sae_lens_cfg(weights)
    if isinstance(weights, GatedWeights):
        sae: JumpReLUSAE | GatedSAE = GatedSAE(GatedSAEConfig.from_dict(cfg_dict))
    else:
        sae = JumpReLUSAE(JumpReLUSAEConfig.from_dict(cfg_dict))
    sae.load_state_dict(weights.state_dict())
    return sae


def fold_saved_decoder_norms(directory: Path) -> bool:
    """Rewrite the SAELens SAE in ``directory`` with unit-norm decoder rows, by SAELens's own
    ``fold_W_dec_norm`` (the same function and active set). Returns False, writing nothing, when
    the rows are already unit or the fold is not exact for the architecture (TopK, whose top-k
    choice changes when latents are rescaled)."""
    sae = SAE.load_from_disk(directory)
    norms = sae.W_dec.detach().norm(dim=-1)
    if torch.allclose(norms, torch.ones_like(norms), rtol=0, atol=1e-5):
        return False
    try:
        sae.fold_W_dec_norm()
    except NotImplementedError:
        return False
    sae.save_model(directory)
    return True


def write_sae_lens(weights: JumpReLUWeights | GatedWeights, directory: Path) -> None:
    """Write cfg.json + sae_weights.safetensors into an existing (temporary) directory."""
    save_file(weights.state_dict(), directory / WEIGHTS_FILENAME)
    (directory / CFG_FILENAME).write_text(json.dumps(sae_lens_cfg(weights), indent=2))
