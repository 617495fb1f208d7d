"""Ablating and steering SAE features while the model runs or generates.

Edits act on ``hook_sae_acts_post`` of SAEs attached with SAELens's error term, so an edit
changes the activation by exactly the edited features' decoder terms: ablating feature i removes
f_i d_i, steering adds c d_i (the feature's activation raised by c), everything else is the
unmodified model.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from sae_lens import SAE, HookedSAETransformer
from torch import Tensor

from sae_lens_jumprelu.analysis.hooked import attached, check_features, to_tokens


@dataclass(frozen=True)
class FeatureEdit:
    """What to do to one SAE's features."""

    sae: SAE[Any]
    """The SAE whose features are edited (attached for the run)."""
    ablate: Sequence[int] = ()
    """Features set to 0 at every position."""
    steer: Mapping[int, float] = field(default_factory=dict)
    """Feature -> amount added to its activation at every position (steering by c d_i)."""

    def __post_init__(self) -> None:
        check_features(self.sae, [*self.ablate, *self.steer])

    def hook(self) -> tuple[str, Any]:
        """The forward hook on ``hook_sae_acts_post`` that applies the edit."""
        ablate = torch.tensor(list(self.ablate), dtype=torch.long)
        steer_index = torch.tensor(list(self.steer), dtype=torch.long)
        steer_amount = torch.tensor(list(self.steer.values()), dtype=torch.float32)

        def edit(acts: Float[Tensor, "batch pos d_sae"], hook: Any) -> Tensor:
            acts = acts.clone()
            acts[..., ablate.to(acts.device)] = 0.0
            acts[..., steer_index.to(acts.device)] += steer_amount.to(acts)
            return acts

        return f"{self.sae.cfg.metadata.hook_name}.hook_sae_acts_post", edit


def _as_list(edits: FeatureEdit | Sequence[FeatureEdit]) -> list[FeatureEdit]:
    return [edits] if isinstance(edits, FeatureEdit) else list(edits)


def run_with_edits(
    model: HookedSAETransformer,
    edits: FeatureEdit | Sequence[FeatureEdit],
    prompt: str | Sequence[int] | Int[Tensor, "batch pos"],
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits of the model with the edits applied (no edit: the unmodified model's logits)."""
    edits = _as_list(edits)
    tokens = to_tokens(model, prompt)
    with attached(model, [e.sae for e in edits], use_error_term=True), torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=[e.hook() for e in edits])


def generate_with_edits(
    model: HookedSAETransformer,
    edits: FeatureEdit | Sequence[FeatureEdit],
    prompt: str | Sequence[int] | Int[Tensor, "batch pos"],
    *,
    max_new_tokens: int = 20,
    **generate_kwargs: Any,
) -> Int[Tensor, "batch total"]:
    """Token ids of prompt + continuation, generated with the edits applied at every step
    (TransformerLens's ``generate``; greedy unless ``do_sample=True`` is passed)."""
    edits = _as_list(edits)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    tokens = to_tokens(model, prompt, extra_tokens=max_new_tokens)
    generate_kwargs.setdefault("do_sample", False)
    generate_kwargs.setdefault("verbose", False)
    # Without a tokenizer there is no EOS to stop at (tiny_gemma2).
    generate_kwargs.setdefault("stop_at_eos", model.tokenizer is not None)
    with (
        attached(model, [e.sae for e in edits], use_error_term=True),
        model.hooks(fwd_hooks=[e.hook() for e in edits]),
    ):
        return model.generate(
            tokens, max_new_tokens=max_new_tokens, return_type="tokens", **generate_kwargs
        )
