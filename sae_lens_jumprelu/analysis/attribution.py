"""Per-feature attribution of a metric (activation x gradient), with the error term's share.

For an SAE at a hook with activation x = sum_i f_i d_i + b_dec + e (features f, decoder rows d_i,
reconstruction error e), the first-order change of a metric M when a part is removed is its
activation times the gradient: f_i (d_i . g) for feature i, e . g for the error and b_dec . g for
the bias, with g = dM/dx. They add up exactly to x . g, the linear estimate of removing x
altogether. The gradients come from SAELens's ``HookedSAETransformer`` with the SAEs attached
(``hook_sae_acts_post``, ``hook_sae_output``); SAELens's error term carries no gradient, so with
several SAEs an upstream feature's gradient passes through the downstream SAEs' reconstructions
(downstream errors held fixed).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from sae_lens import SAE, HookedSAETransformer
from torch import Tensor

from sae_lens_jumprelu.analysis.hooked import attached, to_tokens

Metric = Callable[[Float[Tensor, "batch pos d_vocab"]], Float[Tensor, ""]]
"""Maps the model's logits to the scalar to attribute."""


@dataclass(frozen=True)
class SiteAttribution:
    """Attributions at one SAE, per batch element and position."""

    hook_name: str
    """The hook the SAE reads."""
    feature_acts: Float[Tensor, "batch pos d_sae"]
    """The features' activations f."""
    features: Float[Tensor, "batch pos d_sae"]
    """f_i * dM/df_i: each feature's first-order share of the metric."""
    error: Float[Tensor, "batch pos"]
    """e . dM/dx: the reconstruction error's share (0 without the error term)."""
    bias: Float[Tensor, "batch pos"]
    """The decoder bias's share, b_dec . dM/dx."""

    def per_feature(self) -> Float[Tensor, " d_sae"]:
        """Feature attributions summed over batch and positions."""
        return self.features.sum(dim=(0, 1))

    def total(self) -> float:
        """Features + error + bias: the linear estimate of the metric change on removing x."""
        return float(self.features.sum() + self.error.sum() + self.bias.sum())


@dataclass(frozen=True)
class Attribution:
    """What ``attribute`` returns."""

    metric: float
    """The metric's value on the prompt with the SAEs attached."""
    sites: dict[str, SiteAttribution]
    """Per SAE, keyed by hook name."""

    def top_features(self, k: int = 10) -> list[tuple[str, int, float]]:
        """The ``k`` (hook, feature, attribution) with the largest |attribution|, summed over
        positions; error terms are in ``sites[hook].error``."""
        rows = [
            (hook, index, value)
            for hook, site in self.sites.items()
            for index, value in enumerate(site.per_feature().tolist())
        ]
        return sorted(rows, key=lambda row: -abs(row[2]))[:k]


def logit_difference(good: int, bad: int, position: int = -1) -> Metric:
    """logit[good] - logit[bad] at ``position``, summed over the batch."""

    def metric(logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, ""]:
        return (logits[:, position, good] - logits[:, position, bad]).sum()

    return metric


def attribute(
    model: HookedSAETransformer,
    saes: SAE[Any] | Sequence[SAE[Any]],
    prompt: str | Sequence[int] | Int[Tensor, "batch pos"],
    metric: Metric,
    *,
    use_error_term: bool = True,
) -> Attribution:
    """Attribute ``metric(logits)`` to the features of each SAE, by activation x gradient.

    With ``use_error_term`` (the default) the model runs exactly as without SAEs and each
    site's error share is reported; without it the SAEs' reconstructions replace the
    activations and the error share is 0.
    """
    saes = [saes] if isinstance(saes, SAE) else list(saes)
    tokens = to_tokens(model, prompt)
    with attached(model, saes, use_error_term=use_error_term):
        captured: dict[str, Tensor] = {}

        def keep(tensor: Tensor, hook: Any) -> Tensor:
            captured[hook.name] = tensor
            return tensor

        hooks = [
            (f"{sae.cfg.metadata.hook_name}.{point}", keep)
            for sae in saes
            for point in ("hook_sae_acts_post", "hook_sae_output", "hook_sae_error")
        ]
        with torch.enable_grad():
            value = metric(model.run_with_hooks(tokens, fwd_hooks=hooks))
            if value.ndim != 0:
                raise ValueError(f"the metric must return a scalar, got shape {tuple(value.shape)}")
            grad_of = [name for name in captured if not name.endswith("hook_sae_error")]
            grads = dict(
                zip(
                    grad_of, torch.autograd.grad(value, [captured[n] for n in grad_of]), strict=True
                )
            )
    sites = {
        sae.cfg.metadata.hook_name: _site(sae.cfg.metadata.hook_name, captured, grads)
        for sae in saes
    }
    return Attribution(metric=float(value.detach()), sites=sites)


def _site(hook: str, captured: dict[str, Tensor], grads: dict[str, Tensor]) -> SiteAttribution:
    acts = captured[f"{hook}.hook_sae_acts_post"].detach()
    output = captured[f"{hook}.hook_sae_output"].detach()
    grad_output = grads[f"{hook}.hook_sae_output"]
    error = captured.get(f"{hook}.hook_sae_error")
    # hook_z outputs are [batch, pos, n_heads, d_head]: one vector per position.
    output, grad_output = output.flatten(2), grad_output.flatten(2)
    error = torch.zeros_like(output) if error is None else error.detach().flatten(2)
    features = acts * grads[f"{hook}.hook_sae_acts_post"]
    error_share = (error * grad_output).sum(-1)
    reconstruction_share = ((output - error) * grad_output).sum(-1)
    return SiteAttribution(
        hook_name=hook,
        feature_acts=acts,
        features=features,
        error=error_share,
        bias=reconstruction_share - features.sum(-1),
    )
