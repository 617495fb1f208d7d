"""dictionary_learning's ``JumpReluAutoEncoder``: ``ae.pt`` + ``config.json``.

Assumed (from dictionary_learning's source, not imported here): ``ae.pt`` is ``torch.save`` of the
state dict with keys W_enc [activation_dim, dict_size], b_enc [dict_size],
W_dec [dict_size, activation_dim], b_dec [activation_dim], threshold [dict_size] (same layout as
SAELens, no transposes); ``config.json`` has a ``trainer`` entry with ``dict_class``
"JumpReluAutoEncoder", ``activation_dim`` and ``dict_size``. The encoder is
``pre = x @ W_enc + b_enc`` (``(x - b_dec) @ W_enc + b_enc`` when ``apply_b_dec_to_input``, default
False, read from ``trainer`` when present), ``f = relu(pre * (pre > threshold))`` and decode
``f @ W_dec + b_dec``; relu(pre * 1[pre > t]) = 1[pre > t] * relu(pre), SAELens's forward.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch

from sae_lens_jumprelu.convert.sae_lens_format import check_keys, read_json
from sae_lens_jumprelu.convert.weights import ConversionError, JumpReLUWeights

WEIGHTS_FILENAME = "ae.pt"
CONFIG_FILENAME = "config.json"
DICT_CLASS = "JumpReluAutoEncoder"
KEYS = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")
# trainer-config entries carried across formats as metadata, and their SAELens names
_CARRIED = {"lm_name": "model_name", "submodule_name": "submodule_name", "layer": "layer"}


def _load_state_dict(file: Path) -> dict[str, Any]:
    try:
        sd = torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise ConversionError(
            f"{file} is missing; the dictionary_learning directory is incomplete"
        ) from e
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, OSError) as e:
        raise ConversionError(
            f"{file} is not a readable torch checkpoint ({e}); truncated or corrupt"
        ) from e
    if not isinstance(sd, dict):
        raise ConversionError(f"{file} holds a {type(sd).__name__}, expected a state dict")
    return sd


def read_dictionary_learning(path: Path) -> JumpReLUWeights:
    """Read a dictionary_learning ``JumpReluAutoEncoder`` directory."""
    trainer = read_json(path / CONFIG_FILENAME).get("trainer")
    if not isinstance(trainer, dict) or trainer.get("dict_class") != DICT_CLASS:
        found = trainer.get("dict_class") if isinstance(trainer, dict) else None
        raise ConversionError(
            f"{path / CONFIG_FILENAME}: trainer.dict_class is {found!r}, expected {DICT_CLASS!r}; "
            "only JumpReLU dictionaries convert exactly"
        )
    sd = _load_state_dict(path / WEIGHTS_FILENAME)
    check_keys(sd, KEYS, str(path / WEIGHTS_FILENAME))
    weights = JumpReLUWeights(
        **{k: sd[k] for k in KEYS},
        apply_b_dec_to_input=bool(trainer.get("apply_b_dec_to_input", False)),
        metadata={ours: trainer[theirs] for theirs, ours in _CARRIED.items() if theirs in trainer},
        source=str(path),
    )
    for name, size in (("activation_dim", weights.d_in), ("dict_size", weights.d_sae)):
        if name in trainer and trainer[name] != size:
            raise ConversionError(
                f"{path / CONFIG_FILENAME}: trainer.{name} is {trainer[name]} but ae.pt has "
                f"{size}; "
                "the config belongs to another dictionary"
            )
    return weights


def write_dictionary_learning(weights: JumpReLUWeights, directory: Path) -> None:
    """Write ae.pt + config.json into an existing (temporary) directory."""
    torch.save(weights.state_dict(), directory / WEIGHTS_FILENAME)
    trainer: dict[str, Any] = {
        "dict_class": DICT_CLASS,
        "activation_dim": weights.d_in,
        "dict_size": weights.d_sae,
        "apply_b_dec_to_input": weights.apply_b_dec_to_input,
    }
    trainer.update({t: weights.metadata[o] for t, o in _CARRIED.items() if o in weights.metadata})
    (directory / CONFIG_FILENAME).write_text(json.dumps({"trainer": trainer}, indent=2))
