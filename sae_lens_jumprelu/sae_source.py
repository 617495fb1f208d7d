"""Any SAE a user names, as a SAELens ``SAE``: a SAELens directory (any architecture), anything
``sae_lens_jumprelu.convert`` reads (Gemma Scope params files, dictionary_learning directories),
or a SAELens pretrained ``release/sae_id``.

SAELens directories go through ``SAE.load_from_disk``, so every architecture SAELens knows loads
(topk, gated, standard, jumprelu...); the other formats are converted exactly, in memory.
"""

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sae_lens import SAE
from safetensors import SafetensorError

from sae_lens_jumprelu.convert.api import detect_format, load
from sae_lens_jumprelu.convert.sae_lens_format import to_sae_lens_sae
from sae_lens_jumprelu.convert.weights import ConversionError

ACCEPTED = (
    "a SAELens SAE directory (cfg.json + sae_weights.safetensors), a Gemma Scope params.npz / "
    "params.safetensors file or its directory, a dictionary_learning directory (ae.pt + "
    "config.json), or a SAELens pretrained release and SAE id written RELEASE/SAE_ID (e.g. "
    "gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical)"
)


class SAESourceError(ValueError):
    """The SAE spec cannot be read; the message says what is accepted."""


@dataclass
class LoadedSAE:
    """An SAE and where it came from."""

    sae: SAE[Any]
    """The SAELens SAE (in memory; converted if the source was another format)."""
    source_format: str
    """"sae-lens", "gemma-scope", "dictionary-learning" or "pretrained"."""
    name: str
    """Short name for tables: the directory or file name, or the SAE id."""


def load_sae(spec: str | Path, *, device: str = "cpu") -> LoadedSAE:
    """Read the SAE named by ``spec`` (see ``ACCEPTED``)."""
    path = Path(spec).expanduser()
    if path.exists():
        return _load_path(path, device)
    release, sae_id = _split_release(str(spec))
    return LoadedSAE(_from_pretrained(release, sae_id, device), "pretrained", sae_id)


def _cfg_field(path: Path, name: str) -> Any:
    try:
        return json.loads((path / "cfg.json").read_text()).get(name)
    except (OSError, ValueError):
        return None


def _load_path(path: Path, device: str) -> LoadedSAE:
    try:
        source_format = detect_format(path)
    except ConversionError as error:
        raise SAESourceError(f"{error}. Accepted: {ACCEPTED}") from error
    name = path.resolve().name if path.is_dir() else path.stem
    if source_format == "sae-lens":
        # SAELens's own loader: every architecture it knows, its config defaulting included
        try:
            sae = SAE.load_from_disk(path, device=device)
        except RuntimeError as error:  # load_state_dict: shapes that disagree with cfg.json
            first = str(error).strip().splitlines()
            raise SAESourceError(
                f"{path}: its weights do not match its cfg.json (d_in {_cfg_field(path, 'd_in')}, "
                f"d_sae {_cfg_field(path, 'd_sae')}): {' '.join(first[-2:])[:300]}; fix cfg.json "
                "or re-export the SAE"
            ) from None
        except (KeyError, ValueError, OSError, SafetensorError) as error:
            raise SAESourceError(
                f"{path}: SAELens cannot load this directory ({type(error).__name__}: {error}); "
                "its cfg.json or weights are damaged or from an unknown architecture"
            ) from error
        if sae.cfg.normalize_activations == "expected_average_only_in":
            # SAELens applies no scaling at inference for this mode: the factor must be folded
            # into the weights (SAELens's runner does so when it saves), else inputs are off
            warnings.warn(
                f"{path}: normalize_activations is 'expected_average_only_in' and SAELens "
                "runs it on raw activations; unless the scaling factor was folded into the "
                "weights (sae.fold_activation_norm_scaling_factor), the metrics are wrong",
                stacklevel=2,
            )
        return LoadedSAE(sae, source_format, name)
    sae = to_sae_lens_sae(load(path))
    return LoadedSAE(sae.to(device), source_format, name)


def _split_release(spec: str) -> tuple[str, str]:
    """``RELEASE/SAE_ID`` at the first ``/`` whose left side is a known release (SAE ids hold
    slashes themselves)."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    releases = get_pretrained_saes_directory()
    parts = spec.split("/")
    for cut in range(1, len(parts)):
        release = "/".join(parts[:cut])
        if release in releases:
            sae_id = "/".join(parts[cut:])
            if sae_id not in releases[release].saes_map:
                ids = list(releases[release].saes_map)
                raise SAESourceError(
                    f"release {release!r} has no SAE {sae_id!r}; it has {len(ids)}, e.g. {ids[:5]}"
                )
            return release, sae_id
    if spec in releases:
        ids = list(releases[spec].saes_map)
        raise SAESourceError(
            f"{spec!r} is a release, not one SAE: add an SAE id, e.g. {spec}/{ids[0]}"
        )
    raise SAESourceError(
        f"{spec!r} does not exist as a file or directory and is not a known SAELens release "
        f"(RELEASE/SAE_ID). Accepted: {ACCEPTED}"
    )


def _from_pretrained(release: str, sae_id: str, device: str) -> SAE[Any]:
    try:
        return SAE.from_pretrained(release, sae_id, device=device)
    except Exception as error:  # hub errors come in many types (offline, gated, missing)
        raise SAESourceError(
            f"cannot fetch {release}/{sae_id} from the Hugging Face hub "
            f"({type(error).__name__}: {error}). Without network access, download it where you "
            "have access and pass the directory, or convert it with `sae-jumprelu convert`"
        ) from error
