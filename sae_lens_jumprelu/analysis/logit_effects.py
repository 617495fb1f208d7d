"""The logits a feature promotes and suppresses: its decoder row mapped into the residual
stream and through the unembedding, ``W_dec @ W_U`` (the direct path, as feature dashboards
show it)."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from sae_lens import SAE
from torch import Tensor
from transformer_lens import HookedTransformer

from sae_lens_jumprelu.analysis.hooked import check_features

# Hooks whose activations live in the residual stream basis (d_model wide).
_RESIDUAL_HOOKS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_mlp_out",
                   "hook_attn_out", "hook_embed")  # fmt: skip


@dataclass(frozen=True)
class LogitEffects:
    """The ``k`` most promoted and most suppressed tokens of each feature."""

    features: Int[Tensor, " n"]
    """The SAE feature index of each row."""
    promoted_ids: Int[Tensor, "n k"]
    promoted_values: Float[Tensor, "n k"]
    """Largest entries of the feature's direct logit effect, descending."""
    suppressed_ids: Int[Tensor, "n k"]
    suppressed_values: Float[Tensor, "n k"]
    """Most negative entries, ascending."""


def residual_directions(
    model: HookedTransformer, sae: SAE[Any], features: Sequence[int]
) -> Float[Tensor, "n d_model"] | None:
    """Each feature's decoder row as a residual-stream direction (up to a positive per-token
    scale of normalisations), or None if the hook has no direct path to the residual stream."""
    hook = sae.cfg.metadata.hook_name or ""
    rows = sae.W_dec[torch.tensor(check_features(sae, features), dtype=torch.long)].detach()
    if hook.endswith("attn.hook_z"):
        layer = int(hook.split(".")[1])
        block = model.blocks[layer]
        W_O = block.attn.W_O.detach()  # [n_heads, d_head, d_model]
        # [n, n_heads * d_head] -> [n, n_heads, d_head], through each head's W_O, summed.
        out = torch.einsum("nhd,hdm->nm", rows.reshape(len(rows), *W_O.shape[:2]), W_O)
        # Gemma 2/3 normalise the attention output before adding it to the residual stream:
        # its elementwise scale changes the direction, the per-token scale does not.
        post_norm = getattr(block, "ln1_post", None)
        return out * post_norm.w.detach() if hasattr(post_norm, "w") else out
    if hook.endswith(_RESIDUAL_HOOKS) and rows.shape[1] == model.cfg.d_model:
        return rows
    return None


@torch.no_grad()
def logit_effects(
    model: HookedTransformer, sae: SAE[Any], features: Sequence[int], k: int = 10
) -> LogitEffects | None:
    """Top promoted / suppressed tokens per feature, None where the hook has no direct path.

    The final norm's elementwise scale (``ln_final.w``) is applied as the model applies it;
    its per-token normalisation is not, as it rescales all logits of a token alike.
    """
    directions = residual_directions(model, sae, features)
    if directions is None:
        return None
    directions = directions.to(model.W_U)
    if getattr(model, "ln_final", None) is not None and hasattr(model.ln_final, "w"):
        directions = directions * model.ln_final.w
    effects = directions @ model.W_U  # [n, d_vocab]
    k = min(k, effects.shape[1])
    top, bottom = effects.topk(k, dim=1), effects.topk(k, dim=1, largest=False)
    return LogitEffects(
        features=torch.tensor(list(features), dtype=torch.long),
        promoted_ids=top.indices,
        promoted_values=top.values,
        suppressed_ids=bottom.indices,
        suppressed_values=bottom.values,
    )
