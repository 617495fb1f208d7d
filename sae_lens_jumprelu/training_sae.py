"""``JumpReLUSTETrainingSAE``: the "jumprelu_ste" training architecture registered with SAELens.

It trains inside SAELens's ``SAETrainer`` (and so ``LanguageModelSAETrainingRunner``) and saves as
SAELens's plain ``"jumprelu"`` inference SAE: normalisation folded in, thresholds in float32.
"""

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from jaxtyping import Float
from sae_lens.saes.sae import TrainCoefficientConfig, TrainingSAE, TrainStepInput, TrainStepOutput
from torch import Tensor, nn
from typing_extensions import override

from sae_lens_jumprelu import dead_latents, saved_weights
from sae_lens_jumprelu.batch_checks import check_batch
from sae_lens_jumprelu.config import JumpReLUSTETrainingSAEConfig
from sae_lens_jumprelu.grad_control import GradientGuard
from sae_lens_jumprelu.sparse_step import serial_bookkeeping
from sae_lens_jumprelu.sparsity import PENALTIES, TargetL0Controller
from sae_lens_jumprelu.ste import jumprelu
from sae_lens_jumprelu.step_forward import (
    StepForward,
    dense_step_forward,
    sparse_step_forward,
    takes_sparse_step,
)

# Kept in float32 whatever the SAE dtype: Adam's ~lr-sized steps round away in bfloat16.
_FLOAT32_STATE = ("threshold_raw", "input_scale", "l0_coefficient_integral", "threshold_ceiling")
# Training state that the inference "jumprelu" SAE does not have.
_TRAINING_ONLY_STATE = (
    "threshold_raw",
    "input_scale",
    "input_scale_pending",
    "l0_coefficient_integral",
    "threshold_ceiling",
)


class JumpReLUSTETrainingSAE(TrainingSAE[JumpReLUSTETrainingSAEConfig]):
    """JumpReLU SAE trained with straight-through estimators of the L0 (Rajamanoharan et al. 2024).

    State beyond SAELens's ``W_enc [d_in, d_sae]``, ``b_enc``, ``W_dec [d_sae, d_in]``, ``b_dec``:
    ``threshold_raw`` (theta / threshold_lr_scale, or log theta), ``input_scale`` (the scalar
    that gives E||x||^2 = ``normalized_mean_squared_norm``, or the centred
    ``normalized_variance``; the weights live in those units),
    ``l0_coefficient_integral`` (the integral term of target mode's controller) and
    ``threshold_ceiling`` (the moving average of each latent's batch maximum that bounds its
    theta).
    """

    b_enc: nn.Parameter
    threshold_raw: nn.Parameter
    input_scale: Tensor
    input_scale_pending: Tensor
    l0_coefficient_integral: Tensor
    threshold_ceiling: Tensor

    def __init__(self, cfg: JumpReLUSTETrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        f32 = {"dtype": torch.float32, "device": self.device}
        self.threshold_raw = nn.Parameter(
            torch.full(
                (cfg.d_sae,), self._raw_from_threshold(cfg.jumprelu_init_threshold).item(), **f32
            )
        )
        self.register_buffer("input_scale", torch.ones((), **f32))
        self.register_buffer(
            "input_scale_pending",
            torch.tensor(
                cfg.normalize_to_unit_mean_square
                or cfg.init_b_dec_to_mean
                or cfg.init_threshold_at_target,
                device=self.device,
            ),
        )
        self.register_buffer("l0_coefficient_integral", torch.ones((), **f32))
        # +inf until the first batch: no ceiling before there is a maximum to follow.
        self.register_buffer("threshold_ceiling", torch.full((cfg.d_sae,), math.inf, **f32))
        self._penalty = PENALTIES[cfg.jumprelu_sparsity_loss_mode]
        self._controller = (
            TargetL0Controller(
                cfg.target_l0,  # type: ignore[arg-type]
                cfg.target_l0_rate,
                cfg.target_l0_gain,
                initial=_initial_l0_coefficient(cfg),
            )
            if cfg.target_mode
            else None
        )
        self._guard: GradientGuard | None = None
        self._dataset_mean_square: float | None = None
        self.step_density = 1.0
        """Fraction of (token, latent) entries the last step touched; "auto" starts dense."""
        self.cross_replica_mean: Callable[[Tensor], Tensor] | None = None
        """Set by data-parallel training (``data_parallel.replicate``): averages a tensor over
        ranks in place. Gradients and the statistics this SAE takes from its batch (first-batch
        E||x||^2 and mean, target mode's batch L0) go through it, so every replica takes the
        same step as one process on the global batch."""
        self.cross_replica_max: Callable[[Tensor], Tensor] | None = None
        """Set with ``cross_replica_mean``: the elementwise maximum over ranks in place (each
        latent's batch maximum, for the threshold ceiling)."""

    # ---- parameters -------------------------------------------------------------------------

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        self.b_enc = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=self.dtype, device=self.device))

    @property
    def threshold(self) -> Float[Tensor, " d_sae"]:
        """theta in float32, in the SAE's normalised input units."""
        if self.cfg.threshold_parametrization == "log":
            return self.threshold_raw.exp()
        return self.threshold_raw * self.cfg.threshold_lr_scale

    def _raw_from_threshold(self, threshold: Tensor | float) -> Tensor:
        theta = torch.as_tensor(threshold, dtype=torch.float32)
        if self.cfg.threshold_parametrization == "log":
            return theta.clamp(min=1e-30).log()
        return theta / self.cfg.threshold_lr_scale

    @override
    def _apply(self, *args: Any, **kwargs: Any) -> "JumpReLUSTETrainingSAE":
        out = super()._apply(*args, **kwargs)
        # nn.Module.to(dtype) casts every float tensor; the load paths call it with cfg.dtype.
        for name in _FLOAT32_STATE:
            tensor = getattr(self, name, None)
            if tensor is not None and tensor.dtype != torch.float32:
                tensor.data = tensor.data.float()
        return out

    # ---- forward ----------------------------------------------------------------------------

    def _normalised_input(self, x: Tensor) -> Tensor:
        x = self.reshape_fn_in(x.to(self.dtype))
        x = self.run_time_activation_norm_fn_in(self.hook_sae_input(x))
        return x * self.input_scale.to(x.dtype)

    @override
    def encode_with_hidden_pre(
        self, x: Float[Tensor, "*batch d_in"]
    ) -> tuple[Float[Tensor, "*batch d_sae"], Float[Tensor, "*batch d_sae"]]:
        x_n = self._normalised_input(x)
        hidden_pre = self.hook_sae_acts_pre(
            (x_n - self.b_dec * self.cfg.apply_b_dec_to_input) @ self.W_enc + self.b_enc
        )
        feature_acts = jumprelu(
            hidden_pre,
            self.threshold,
            self.cfg.jumprelu_bandwidth,
            self.cfg.jumprelu_kernel,
            self.cfg.jumprelu_ste_to_input,
        )
        return self.hook_sae_acts_post(feature_acts), hidden_pre

    @override
    def decode(self, feature_acts: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_in"]:
        return self._decode_product(feature_acts @ self.W_dec)

    def _decode_product(self, product: Tensor) -> Tensor:
        """The decoder after ``f @ W_dec``: bias, back to raw units, hooks."""
        out = (product + self.b_dec) / self.input_scale.to(product.dtype)
        out = self.run_time_activation_norm_fn_out(self.hook_sae_recons(out))
        return self.reshape_fn_out(out, self.d_head)

    # ---- training ---------------------------------------------------------------------------

    @override
    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {
            "l0": TrainCoefficientConfig(
                value=self.cfg.l0_coefficient, warm_up_steps=self.cfg.l0_warm_up_steps
            )
        }

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        x = step_input.sae_in
        check_batch(x, self.cfg.d_in, step_input.n_training_steps, self.cfg.check_finite)
        self._prepare_step(x)

        fwd = self._step_forward(x)
        self.step_density = fwd.density
        # The paper's loss is in normalised units: ||x - x_hat||^2 at the input scale's E||x||^2.
        error = (fwd.sae_out - x.to(fwd.sae_out.dtype)).float() * self.input_scale
        mse_loss = error.pow(2).sum(dim=-1).mean()

        self._update_threshold_ceiling(fwd.latent_max)
        coefficient = self._l0_coefficient(step_input, fwd.batch_l0)
        losses = {"mse_loss": mse_loss, **self._sparsity_losses(step_input, coefficient, fwd)}
        if self.cfg.auxk_loss_coefficient is not None:
            losses["auxk_loss"] = self._auxk_loss(step_input.dead_neuron_mask, fwd, -error)
        return TrainStepOutput(
            sae_in=x,
            sae_out=fwd.sae_out,
            feature_acts=fwd.feature_acts,
            hidden_pre=fwd.hidden_pre,
            loss=sum(losses.values(), torch.zeros((), device=x.device)),
            losses=losses,
            metrics={"l0": fwd.batch_l0, "l0_coefficient": coefficient},
        )

    def _step_forward(self, x: Tensor) -> StepForward:
        """Sparse or dense, as ``sparse_step`` and the last step's density choose."""
        hooks = {name: getattr(self, name) for name in ("hook_sae_acts_pre", "hook_sae_acts_post")}
        if takes_sparse_step(self.cfg, x, hooks, self.step_density):
            with serial_bookkeeping(x.device):
                return sparse_step_forward(
                    self.cfg, self._normalised_input(x), self.W_enc, self.b_enc, self.b_dec,
                    self.W_dec, self.threshold, self._decode_product,
                )  # fmt: skip
        feature_acts, hidden_pre = self.encode_with_hidden_pre(x)
        return self._dense_step_forward(feature_acts, hidden_pre, self.decode(feature_acts))

    def _l0_coefficient(self, step_input: TrainStepInput, batch_l0: Tensor) -> Tensor | float:
        """lambda for this step: the controller's in target mode (advancing it), else the
        trainer's warm-up schedule."""
        if self._controller is None:
            return step_input.coefficients["l0"]
        return self._controller.step(self.l0_coefficient_integral, self._global_mean(batch_l0))

    @torch.no_grad()
    def _update_threshold_ceiling(self, latent_max: Tensor) -> None:
        """Move the ceiling towards this batch's maxima, never below them (data-parallel: the
        global batch's)."""
        decay = self.cfg.threshold_ceiling_decay
        if decay is None:
            return
        latent_max = latent_max.detach().float().clone()
        if self.cross_replica_max is not None:
            self.cross_replica_max(latent_max)
        average = decay * self.threshold_ceiling + (1 - decay) * latent_max
        first = torch.isinf(self.threshold_ceiling)
        self.threshold_ceiling.copy_(torch.where(first, latent_max, average.maximum(latent_max)))

    def _global_mean(self, tensor: Tensor) -> Tensor:
        """``tensor`` (a mean over this rank's batch) averaged over data-parallel ranks."""
        if self.cross_replica_mean is None:
            return tensor
        return self.cross_replica_mean(tensor.detach().clone())

    @override
    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: Tensor,
        hidden_pre: Tensor,
        sae_out: Tensor,
    ) -> dict[str, Tensor]:
        fwd = self._dense_step_forward(feature_acts, hidden_pre, sae_out)
        coefficient = self._l0_coefficient(step_input, fwd.batch_l0)
        return self._sparsity_losses(step_input, coefficient, fwd)

    def _dense_step_forward(
        self, feature_acts: Tensor, hidden_pre: Tensor, sae_out: Tensor
    ) -> StepForward:
        return dense_step_forward(
            self.cfg, feature_acts, hidden_pre, sae_out, self.threshold, self.W_dec.norm(dim=-1)
        )

    def _sparsity_losses(
        self, step_input: TrainStepInput, coefficient: Tensor | float, fwd: StepForward
    ) -> dict[str, Tensor]:
        per_token = self._penalty(fwd.penalty_inputs, self.cfg.target_l0)
        losses = {"l0_loss": coefficient * per_token.mean()}
        if self.cfg.pre_act_loss_coefficient is not None:
            losses["pre_act_loss"] = self._pre_act_loss(step_input.dead_neuron_mask, fwd)
        return losses

    def _pre_act_loss(self, dead: Tensor | None, fwd: StepForward) -> Tensor:
        assert self.cfg.pre_act_loss_coefficient is not None
        return dead_latents.pre_act_loss(
            self.cfg.pre_act_loss_coefficient, dead, partial(self._dead_pre_activations, fwd),
            fwd.threshold, fwd.decoder_norms, fwd.sae_out,
        )  # fmt: skip

    def _auxk_loss(
        self, dead: Tensor | None, fwd: StepForward, residual: Float[Tensor, "batch d_in"]
    ) -> Tensor:
        assert self.cfg.auxk_loss_coefficient is not None
        return dead_latents.auxk_loss(
            self.cfg.auxk_loss_coefficient,
            dead,
            partial(self._dead_pre_activations, fwd),
            self.W_dec,
            residual,
        )

    def _dead_pre_activations(self, fwd: StepForward, idx: Tensor) -> Tensor:
        """Pre-activations of the latents ``idx`` on this step's batch, with grad: sliced from
        a dense step's, or (a sparse step keeps none) a matmul as wide as ``idx``."""
        if fwd.encoder_input is None:
            return fwd.hidden_pre.reshape(-1, self.cfg.d_sae).index_select(1, idx)
        x_enc = fwd.encoder_input - self.b_dec * self.cfg.apply_b_dec_to_input
        return x_enc @ self.W_enc.index_select(1, idx) + self.b_enc.index_select(0, idx)

    @torch.no_grad()
    def _prepare_step(self, x: Tensor) -> None:
        """One-off setup on the first batch; constraints; gradient hooks on current parameters."""
        if bool(self.input_scale_pending):
            self._initialise_from_batch(x)
        # Also run after every optimizer step (GradientGuard); here for loops without one.
        self.project_constraints()
        if self._guard is None:
            self._guard = GradientGuard(self.cfg.max_grad_norm, self.project_constraints)
        self._guard.reduce_grad = self.cross_replica_mean
        self._guard.attach(self.parameters(), self.W_dec if self.cfg.decoder_unit_norm else None)

    @torch.no_grad()
    def project_constraints(self) -> None:
        """theta <= its ceiling, theta >= 0 and, with ``decoder_unit_norm``, unit-norm decoder
        rows."""
        if self.cfg.threshold_ceiling_decay is not None:
            # Without it, thresholds step past every input (a step of lr * threshold_lr_scale is
            # 3x the bandwidth, and Adam's momentum carries on with no gradient left): 86% of
            # latents died at target 32, 3.0% with it (Gemma 3 270M layer 6, batch 256,
            # 2026-12-02, docs/results.md).
            ceiling = self._raw_from_threshold(self.threshold_ceiling.clamp(min=0.0))
            self.threshold_raw.copy_(torch.minimum(self.threshold_raw, ceiling))
        if self.cfg.threshold_parametrization == "linear":
            # A projection rather than a clamp in the graph: a clamp would zero the gradient and
            # pin any latent that reaches theta = 0 there for good.
            self.threshold_raw.clamp_(min=0.0)
        if self.cfg.decoder_unit_norm:
            self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp(min=1e-8))

    def set_mean_squared_norm(self, mean_squared_norm: float) -> None:
        """Normalise by a dataset-wide E||x||^2 (e.g. an activation cache's) instead of the
        first batch's estimate; with ``normalized_variance`` the scale is set on the first batch,
        which supplies the mean."""
        if not self.cfg.normalize_to_unit_mean_square:
            raise ValueError("this SAE's config has normalize_to_unit_mean_square=False")
        if not mean_squared_norm > 0:
            raise ValueError(f"E||x||^2 must be positive, got {mean_squared_norm}")
        self._dataset_mean_square = mean_squared_norm
        if self.cfg.normalized_variance is None:
            self._fit_input_scale(mean_squared_norm)

    def _fit_input_scale(self, statistic: float) -> None:
        """input_scale that brings ``statistic`` (raw E||x||^2, or E||x - E[x]||^2 with
        ``normalized_variance``) to its configured value."""
        if not statistic > 0:
            name = "variance" if self.cfg.normalized_variance else "E||x||^2"
            raise ValueError(
                f"the training activations' {name} is {statistic:.3g}: they are constant (or"
                " zero), so there is nothing to normalise or learn; check the hook point"
            )
        target = self.cfg.normalized_variance or self.cfg.normalized_mean_squared_norm
        self.input_scale.fill_((target / statistic) ** 0.5)

    def _initialise_from_batch(self, x: Tensor) -> None:
        flat = x.reshape(-1, self.cfg.d_in).float()
        raw_mean = self._global_mean(flat.mean(dim=0))
        if self.cfg.normalize_to_unit_mean_square:
            mean_square = self._dataset_mean_square
            if mean_square is None:
                mean_square = self._global_mean(flat.pow(2).sum(dim=-1).mean()).item()
            if self.cfg.normalized_variance is not None:
                mean_square -= raw_mean.pow(2).sum().item()
            self._fit_input_scale(mean_square)
        if self.cfg.init_b_dec_to_mean:
            mean = (raw_mean * self.input_scale).to(self.dtype)
            self.b_dec.copy_(mean)
            if not self.cfg.apply_b_dec_to_input:
                # Centre the pre-activations as subtracting b_dec would.
                self.b_enc.sub_(mean @ self.W_enc)
        if self.cfg.init_threshold_at_target:
            self._init_threshold_at_target(x)
        self.input_scale_pending.fill_(False)

    def _init_threshold_at_target(self, x: Tensor) -> None:
        """theta_i halfway between latent i's k-th and (k+1)-th largest pre-activations in the
        batch, k = the target's share of its tokens: exactly k tokens fire each latent (ties
        aside), with a margin that rounding in the parametrization cannot cross."""
        hidden_pre = self.encode_with_hidden_pre(x)[1].reshape(-1, self.cfg.d_sae).float()
        n_tokens = hidden_pre.shape[0]
        k = round(n_tokens * self.cfg.target_l0 / self.cfg.d_sae)  # type: ignore[operator]
        k = min(max(k, 1), n_tokens - 1)
        largest = hidden_pre.topk(k + 1, dim=0).values
        threshold = ((largest[k - 1] + largest[k]) / 2).clamp(min=0.0)
        self.set_threshold(self._global_mean(threshold))

    # ---- folding, saving, loading -----------------------------------------------------------

    def set_threshold(self, threshold: Float[Tensor, " d_sae"]) -> None:
        """Set theta (normalised units); stored in whichever parametrization the config uses."""
        with torch.no_grad():
            self.threshold_raw.copy_(self._raw_from_threshold(threshold))

    @override
    @torch.no_grad()
    def fold_W_dec_norm(self) -> None:
        """Unit-norm decoder rows; W_enc columns, b_enc and theta scale by the same norms, so
        every pre-activation and its comparison with theta scale alike: the active set is kept."""
        threshold = self.threshold.clone()
        norms = self.fold_and_get_W_dec_norm()
        self.set_threshold(threshold * norms.float())

    @override
    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        """Raw input units and unit-norm decoder rows (``saved_weights.fold_for_inference``)."""
        state_dict.update(
            saved_weights.fold_for_inference(
                self.W_enc, self.b_enc, self.W_dec, self.b_dec, self.threshold, self.input_scale
            )
        )
        for name in _TRAINING_ONLY_STATE:
            state_dict.pop(name, None)

    @override
    def process_state_dict_for_loading(self, state_dict: dict[str, Any]) -> None:
        """Accept this class's checkpoints, SAELens "jumprelu" weights and legacy log_threshold."""
        saved_weights.upgrade_for_loading(
            state_dict, self._raw_from_threshold, _initial_l0_coefficient(self.cfg), self.cfg.d_sae
        )


def _initial_l0_coefficient(cfg: JumpReLUSTETrainingSAEConfig) -> float:
    """The lambda a run starts from. In target mode ``l0_coefficient`` is scaled by the
    E||x||^2 the inputs are normalised to, which scales the MSE term: the two loss terms start in
    the same balance at any ``normalized_mean_squared_norm`` (unscaled, target mode missed targets
    16 and 32 at 10 on the embedded model in 195 steps, docs/results.md)."""
    scale = 1.0
    if cfg.target_mode and cfg.normalize_to_unit_mean_square:
        scale = cfg.normalized_mean_squared_norm
    return cfg.l0_coefficient * scale
