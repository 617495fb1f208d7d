"""Sites: where on a model an SAE reads, as the paper's three per layer.

``resid:12`` (``blocks.12.hook_resid_post``), ``attn:0-25`` (``blocks.L.attn.hook_z``: attention
output before W_O, heads concatenated, as Gemma Scope's attention SAEs), ``mlp:*``
(``blocks.L.hook_mlp_out``); layers as one number, ranges ``a-b``, lists ``3,5,7`` or ``*``. A full
TransformerLens hook name is accepted too.
"""

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

SITE_HOOKS = {
    "resid": "blocks.{layer}.hook_resid_post",
    "attn": "blocks.{layer}.attn.hook_z",
    "mlp": "blocks.{layer}.hook_mlp_out",
}
_LAYER_OF_HOOK = re.compile(r"^blocks\.(\d+)\.")


@dataclass(frozen=True)
class Site:
    """One hook point an SAE is trained on."""

    hook_name: str
    # Width of the activation vector the SAE sees (hook_z: n_heads * d_head).
    d_in: int
    # Block the hook sits in (-1 before the first block, None after the last): a forward pass
    # can stop after it.
    layer: int | None

    @property
    def is_attention_z(self) -> bool:
        return self.hook_name.endswith("attn.hook_z")


def resolve_sites(model: HookedTransformer, specs: list[str]) -> list[Site]:
    """Hook names and widths for site specs, in order, without duplicates."""
    if not specs:
        raise ValueError(f"no site given: use e.g. {default_site_spec(model)!r}")
    hook_names = list(
        dict.fromkeys(name for spec in specs for name in _hook_names_for(model, spec))
    )
    for hook_name in hook_names:
        _check_hook(model, hook_name)
    layers = {name: _layer_of(name) for name in hook_names}
    # Widths from a two-token forward pass rather than from per-hook rules: right for any hook.
    probe = torch.zeros((1, 2), dtype=torch.long, device=model.cfg.device)
    with torch.no_grad():
        _, cache = model.run_with_cache(
            probe, names_filter=hook_names, stop_at_layer=_stop_at(layers.values())
        )
    return [
        Site(hook_name=name, d_in=math.prod(cache[name].shape[2:]), layer=layers[name])
        for name in hook_names
    ]


def default_site_spec(model: HookedTransformer) -> str:
    """The residual stream after the middle block."""
    return f"resid:{model.cfg.n_layers // 2}"


def stop_at_layer(sites: list[Site]) -> int | None:
    """``stop_at_layer`` of the shallowest forward pass that reaches every site."""
    return _stop_at(site.layer for site in sites)


def _stop_at(layers: Iterable[int | None]) -> int | None:
    layers = list(layers)
    return None if None in layers else max(layers) + 1  # type: ignore[operator]


def _hook_names_for(model: HookedTransformer, spec: str) -> list[str]:
    if spec in model.hook_dict or ":" not in spec and "." in spec:
        return [spec]  # a hook name; _check_hook says if the model lacks it
    kind, sep, layers = spec.partition(":")
    if not sep or kind not in SITE_HOOKS:
        raise ValueError(
            f"unknown site {spec!r}: write KIND:LAYERS with KIND one of {sorted(SITE_HOOKS)} and "
            f"LAYERS like 6, 0-{model.cfg.n_layers - 1}, 3,5 or *, or a full hook name such as "
            f"{SITE_HOOKS['resid'].format(layer=0)!r}"
        )
    return [SITE_HOOKS[kind].format(layer=layer) for layer in _parse_layers(model, spec, layers)]


def _parse_layers(model: HookedTransformer, spec: str, text: str) -> list[int]:
    n_layers = model.cfg.n_layers
    if text.strip() == "*":
        return list(range(n_layers))
    layers: list[int] = []
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high if dash else low)
        except ValueError:
            raise ValueError(
                f"site {spec!r}: cannot read layers {text!r}; write 6, 0-{n_layers - 1}, 3,5 or *"
            ) from None
        if not 0 <= first <= last < n_layers:
            raise ValueError(
                f"site {spec!r}: layer {part.strip()} is out of range: "
                f"{model.cfg.model_name} has layers 0-{n_layers - 1}"
            )
        layers.extend(range(first, last + 1))
    return layers


def _check_hook(model: HookedTransformer, hook_name: str) -> None:
    if hook_name not in model.hook_dict:
        block0 = [name for name in model.hook_dict if name.startswith("blocks.0.")]
        raise ValueError(
            f"{model.cfg.model_name} has no hook {hook_name!r}; the hooks of block 0 are "
            f"{', '.join(block0)} (blocks 0-{model.cfg.n_layers - 1} alike)"
        )
    if hook_name.endswith(("hook_pattern", "hook_attn_scores")):
        raise ValueError(
            f"{hook_name!r} is per query-key pair, not per token: SAEs need a token site"
        )


def _layer_of(hook_name: str) -> int | None:
    if match := _LAYER_OF_HOOK.match(hook_name):
        return int(match.group(1))
    return -1 if hook_name.startswith("hook_") else None  # hook_embed... or ln_final...
