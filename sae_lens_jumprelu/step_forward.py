"""One training step's forward pass, dense or sparse, in the form the losses take.

``JumpReLUSTETrainingSAE`` picks the step (``takes_sparse_step``) and hands its weights here; the
sparse step itself is ``sparse_step.sparse_jumprelu``.
"""

from collections.abc import Callable
from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor, nn

from sae_lens_jumprelu.config import JumpReLUSTETrainingSAEConfig
from sae_lens_jumprelu.sparse_step import entry_density, heavy, sparse_jumprelu
from sae_lens_jumprelu.sparsity import AnyPenaltyInputs, EntryPenaltyInputs, PenaltyInputs

# sparse_step="auto" takes the sparse step while the last step touched at most this fraction of
# all (token, latent) entries (active or in a threshold window). Measured crossover, d_sae 16384,
# d_in 640, batch 4096 on the 2-core CPU (benchmarks/training_step_speed.py, crossover): sparse /
# dense step time 0.82 at 16% of entries, 1.48 at 30%, so about 1 near 20%; at d_sae 4096 about 1
# at 30%. Near the crossover either step costs about the same, so the margin is cheap.
SPARSE_STEP_MAX_DENSITY = 0.15


class StepForward(NamedTuple):
    """One step's forward pass, dense or sparse, as the losses need it."""

    feature_acts: Tensor
    """Dense with grad (dense step), or sparse COO without grad (sparse step)."""
    hidden_pre: Tensor
    """Dense pre-activations; without grad in a sparse step."""
    sae_out: Tensor
    batch_l0: Tensor
    penalty_inputs: AnyPenaltyInputs
    threshold: Tensor
    decoder_norms: Tensor
    encoder_input: Tensor | None
    """The normalised input, kept by a sparse step for the dead latents' pre-activations."""
    latent_max: Tensor
    """Each latent's largest pre-activation in the batch (no grad)."""
    density: float
    """Fraction of (token, latent) entries the step touched (1.0 where not measured)."""


def penalty_inputs(
    cfg: JumpReLUSTETrainingSAEConfig,
    hidden_pre: Tensor,
    feature_acts: Tensor,
    threshold: Tensor,
    decoder_norms: Tensor,
) -> PenaltyInputs:
    return PenaltyInputs(
        hidden_pre=hidden_pre,
        feature_acts=feature_acts,
        threshold=threshold,
        decoder_norms=decoder_norms,
        bandwidth=cfg.jumprelu_bandwidth,
        kernel=cfg.jumprelu_kernel,
        ste_to_input=cfg.jumprelu_ste_to_input,
        tanh_scale=cfg.jumprelu_tanh_scale,
    )


def dense_step_forward(
    cfg: JumpReLUSTETrainingSAEConfig,
    feature_acts: Float[Tensor, "*batch d_sae"],
    hidden_pre: Float[Tensor, "*batch d_sae"],
    sae_out: Tensor,
    threshold: Float[Tensor, " d_sae"],
    decoder_norms: Float[Tensor, " d_sae"],
) -> StepForward:
    """The dense step's forward from SAELens's encode and decode outputs; with
    ``sparse_step="auto"`` it also measures the density the next step is chosen by."""
    density = 1.0
    if cfg.sparse_step == "auto":
        density = entry_density(
            hidden_pre.detach(), threshold.detach(), cfg.jumprelu_bandwidth, cfg.jumprelu_kernel
        )
    return StepForward(
        feature_acts=feature_acts,
        hidden_pre=hidden_pre,
        sae_out=sae_out,
        batch_l0=(feature_acts > 0).sum(dim=-1, dtype=torch.float32).mean(),
        penalty_inputs=penalty_inputs(cfg, hidden_pre, feature_acts, threshold, decoder_norms),
        threshold=threshold,
        decoder_norms=decoder_norms,
        encoder_input=None,
        latent_max=hidden_pre.detach().reshape(-1, cfg.d_sae).amax(dim=0),
        density=density,
    )


def sparse_step_forward(
    cfg: JumpReLUSTETrainingSAEConfig,
    x_n: Float[Tensor, "batch d_in"],
    W_enc: nn.Parameter,
    b_enc: nn.Parameter,
    b_dec: nn.Parameter,
    W_dec: nn.Parameter,
    threshold: Float[Tensor, " d_sae"],
    decode_product: Callable[[Tensor], Tensor],
) -> StepForward:
    """The dense step's losses and gradients, touching only active latents and threshold
    windows after the encoder matmul. ``x_n`` is the normalised input; ``decode_product`` maps
    ``f @ W_dec`` to the SAE's output."""
    with heavy():
        decoder_norms = W_dec.norm(dim=-1)
    step = sparse_jumprelu(
        x_n,
        W_enc,
        b_enc,
        b_dec if cfg.apply_b_dec_to_input else None,
        threshold,
        W_dec,
        cfg.jumprelu_bandwidth,
        cfg.jumprelu_kernel,
        cfg.jumprelu_ste_to_input,
    )
    pattern, n_rows = step.pattern, x_n.shape[0]
    with torch.no_grad():
        active = step.feature_acts != 0
        feature_acts = pattern.to_sparse_coo(step.feature_acts.detach(), active)
        hidden_pre = pattern.to_sparse_coo(step.hidden_pre.detach())
    return StepForward(
        feature_acts=feature_acts,
        hidden_pre=hidden_pre,
        sae_out=decode_product(step.recon),
        batch_l0=active.sum(dtype=torch.float32) / n_rows,
        # The penalties' STEs are elementwise: each entry takes its latent's threshold.
        penalty_inputs=EntryPenaltyInputs(
            hidden_pre=step.hidden_pre,
            feature_acts=step.feature_acts,
            threshold=threshold.index_select(0, pattern.cols),
            decoder_norms=decoder_norms.index_select(0, pattern.cols),
            bandwidth=cfg.jumprelu_bandwidth,
            kernel=cfg.jumprelu_kernel,
            ste_to_input=cfg.jumprelu_ste_to_input,
            tanh_scale=cfg.jumprelu_tanh_scale,
            rows=pattern.rows,
            n_rows=n_rows,
        ),
        threshold=threshold,
        decoder_norms=decoder_norms,
        encoder_input=x_n,
        latent_max=step.latent_max,
        density=step.hidden_pre.shape[0] / (n_rows * cfg.d_sae),
    )


def takes_sparse_step(
    cfg: JumpReLUSTETrainingSAEConfig, x: Tensor, hook_points: dict[str, nn.Module], density: float
) -> bool:
    """Whether this batch takes the sparse step: always with "on" (an error if it cannot run),
    never with "off", and with "auto" while the last step's ``density`` was low."""
    if cfg.sparse_step == "off":
        return False
    blocker = sparse_step_blocker(x, hook_points)
    if cfg.sparse_step == "on":
        if blocker is not None:
            raise ValueError(
                f"sparse_step='on' but the sparse step cannot run: {blocker}; use "
                "sparse_step='auto' to fall back to the dense step in such cases"
            )
        return True
    return blocker is None and density <= SPARSE_STEP_MAX_DENSITY


def sparse_step_blocker(x: Tensor, hook_points: dict[str, nn.Module]) -> str | None:
    """Why the sparse step cannot run on this batch, or None. ``hook_points``: the hooks that
    would need a dense tensor, by name."""
    if x.ndim != 2:
        return f"the batch has shape {tuple(x.shape)}, not [tokens, d_in]"
    if x.requires_grad:
        return "the input requires grad (the sparse step gives it none)"
    for name, hook_point in hook_points.items():
        if hook_point._forward_hooks or hook_point._backward_hooks:
            return f"hooks are attached to {name}, which has no dense tensor to hook"
    return None
