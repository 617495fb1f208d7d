"""SAELens's ``HookedSAETransformer`` for our models, SAE loading, and the input checks every
analysis helper shares (a hook the model lacks, a feature index out of range, a prompt longer
than the context) so that bad input fails with a message instead of SAELens's silent skip."""

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from sae_lens import SAE, HookedSAETransformer
from torch import Tensor
from transformer_lens import HookedTransformer

from sae_lens_jumprelu.data.models import load_model
from sae_lens_jumprelu.data.sites import resolve_sites


def hooked_sae_transformer(
    model: HookedTransformer | str | None = None, *, device: str = "cpu", dtype: str = "float32"
) -> HookedSAETransformer:
    """A ``HookedSAETransformer`` with the weights of ``model``.

    ``model`` is a loaded ``HookedTransformer`` (its weights are copied; the original is left as
    it is), or a name for ``models.load_model`` (None: the embedded Gemma 3 270M).
    """
    if isinstance(model, HookedSAETransformer):
        return model
    if not isinstance(model, HookedTransformer):
        model = load_model(model, device=device, dtype=dtype)
    # The weights come from the state dict: skip the random initialisation of a 270M model.
    cfg = dataclasses.replace(model.cfg, init_weights=False)
    hooked = HookedSAETransformer(cfg, tokenizer=model.tokenizer, move_to_device=False)
    hooked.load_state_dict(model.state_dict(), strict=True)
    if torch.device(model.cfg.device).type != "cpu":  # built on the CPU (move_to_device=False)
        hooked.to(model.cfg.device)
    hooked.eval()
    return hooked


def load_sae(spec: str | Path, *, device: str = "cpu", hook_name: str | None = None) -> SAE[Any]:
    """An SAE from anything ``sae_source.load_sae`` reads (a SAELens directory, Gemma Scope
    params, dictionary_learning, a SAELens ``RELEASE/SAE_ID``), its hook set to ``hook_name``
    when given.

    The one place the analysis tools read SAEs.
    """
    from sae_lens_jumprelu.sae_source import load_sae as load_any

    sae = load_any(spec, device=device).sae
    if hook_name is not None:
        sae.cfg.metadata.hook_name = hook_name
    if not sae.cfg.metadata.hook_name:
        raise ValueError(f"{spec}: the SAE names no hook point; pass hook_name=... (--hook-name)")
    return sae


def check_saes(model: HookedTransformer, saes: Iterable[SAE[Any]]) -> None:
    """Each SAE's hook exists in ``model`` and has the SAE's input width."""
    for sae in saes:
        hook = sae.cfg.metadata.hook_name
        if hook is None:
            raise ValueError("the SAE names no hook point (cfg.metadata.hook_name is None)")
        try:
            (site,) = resolve_sites(model, [hook])
        except ValueError as error:
            raise ValueError(
                f"the SAE reads {hook!r}, which does not fit the model: {error}"
            ) from None
        if site.d_in != sae.cfg.d_in:
            raise ValueError(
                f"the SAE on {hook!r} takes d_in={sae.cfg.d_in}, but {model.cfg.model_name}'s "
                f"{hook} has width {site.d_in}: the SAE was trained on another model"
            )


@contextlib.contextmanager
def attached(
    model: HookedSAETransformer, saes: SAE[Any] | Sequence[SAE[Any]], use_error_term: bool = True
) -> Iterator[HookedSAETransformer]:
    """Attach SAEs for the ``with`` block (SAELens's ``model.saes``), after checking them.

    With ``use_error_term`` the model computes exactly what it computes without SAEs, and
    edits of feature activations change the output by exactly the edited features' decoder
    terms (SAELens adds the clean reconstruction error back).
    """
    saes = [saes] if isinstance(saes, SAE) else list(saes)
    if not isinstance(model, HookedSAETransformer):
        raise TypeError(
            "SAEs attach to a HookedSAETransformer: convert the model with "
            "sae_lens_jumprelu.analysis.hooked_sae_transformer(model)"
        )
    check_saes(model, saes)
    with model.saes(saes=saes, use_error_term=use_error_term):
        yield model


def to_tokens(
    model: HookedTransformer, prompt: str | Sequence[int] | Tensor, *, extra_tokens: int = 0
) -> Int[Tensor, "batch pos"]:
    """Token ids ``[batch, pos]`` of a prompt (text gets BOS first, as the model's
    ``to_tokens``), refused when the prompt plus ``extra_tokens`` exceeds the model's context."""
    if isinstance(prompt, str):
        if model.tokenizer is None:
            raise ValueError(
                f"{model.cfg.model_name} has no tokenizer: pass token ids instead of text"
            )
        tokens = model.to_tokens(prompt, truncate=False)
    else:
        tokens = torch.as_tensor(prompt, dtype=torch.long)
        tokens = tokens.unsqueeze(0) if tokens.ndim == 1 else tokens
    if tokens.ndim != 2 or tokens.shape[1] == 0:
        raise ValueError(f"expected token ids [batch, pos], got shape {tuple(tokens.shape)}")
    length = tokens.shape[1] + extra_tokens
    if length > model.cfg.n_ctx:
        what = f"{tokens.shape[1]} + {extra_tokens} new" if extra_tokens else f"{tokens.shape[1]}"
        raise ValueError(
            f"the prompt is {what} tokens, longer than {model.cfg.model_name}'s context of "
            f"{model.cfg.n_ctx}: shorten it (or generate fewer tokens)"
        )
    return tokens.to(model.cfg.device)


def check_features(sae: SAE[Any], features: Iterable[int]) -> list[int]:
    """The feature indices as a list, each checked to be in ``[0, d_sae)``."""
    features = [int(f) for f in features]
    bad = [f for f in features if not 0 <= f < sae.cfg.d_sae]
    if bad:
        raise IndexError(
            f"feature index {bad[0]} is out of range: the SAE on {sae.cfg.metadata.hook_name!r} "
            f"has features 0-{sae.cfg.d_sae - 1}"
            + (f" (also out of range: {bad[1:6]})" if len(bad) > 1 else "")
        )
    return features
