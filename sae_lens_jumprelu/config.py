"""``JumpReLUSTETrainingSAEConfig``: SAELens's JumpReLU training config plus what the paper needs.

Every inherited field keeps SAELens's meaning; the additions are documented once, under each field.
Units: with ``normalize_to_unit_mean_square`` on (the default), thresholds, bandwidth and losses
are in units where the training activations have E||x||^2 = ``normalized_mean_squared_norm``
(3.4 by default; the paper's 1 in the ``paper`` recipe).
"""

from dataclasses import dataclass
from typing import Literal

from sae_lens import JumpReLUTrainingSAEConfig
from sae_lens.saes.jumprelu_sae import JumpReLUSAEConfig
from sae_lens.saes.sae import SAEConfig
from typing_extensions import override

from sae_lens_jumprelu.sparsity import PENALTIES
from sae_lens_jumprelu.ste import KERNELS, KernelName

ARCHITECTURE = "jumprelu_ste"


@dataclass
class JumpReLUSTETrainingSAEConfig(JumpReLUTrainingSAEConfig):
    """Training config of a JumpReLU SAE trained with straight-through estimators of the L0.

    Defaults: the paper's estimator (theta_init = eps = 0.001, rectangle kernel, lambda * L0) with
    the SAE-side settings of the ``short_budget`` recipe (see ``recipes.py`` for the reasons),
    except ``pre_act_loss_coefficient``, which keeps SAELens's None: that loss acts on the
    trainer's dead-latent mask, whose window has to fit the run, and the recipe sets both.

    Setting ``target_l0`` with the ``step`` or ``tanh`` penalty turns on target mode: the
    coefficient starts at ``l0_coefficient`` and is adapted every step until the L0 settles at
    ``target_l0`` (with ``quadratic``, ``target_l0`` is the centre of the penalty, as in SAELens).
    """

    jumprelu_init_threshold: float = 0.001
    jumprelu_bandwidth: float = 0.001
    l0_coefficient: float = 1e-3

    jumprelu_kernel: KernelName = "rectangle"
    """Kernel of the pseudo-derivatives: ``rectangle`` (the paper's) or ``triangle``."""

    threshold_parametrization: Literal["linear", "log"] = "linear"
    """Train theta itself (``linear``) or log(theta) (``log``, the paper's); log moves theta by
    only ~theta*lr per Adam step, which freezes short runs (SAELens #494)."""

    threshold_lr_scale: float = 3.0
    """Effective learning rate of the threshold parameter relative to the trainer's lr (exact for
    Adam: the parameter is stored divided by this factor)."""

    normalize_to_unit_mean_square: bool = True
    """Scale inputs by one scalar to a fixed E||x||^2 (paper, section 5, with 1), estimated on the
    first training batch, kept with checkpoints and folded into the saved weights."""

    normalized_mean_squared_norm: float = 3.4
    """E||x||^2 after that scaling: 1 is the paper's (recipe ``paper``); ``d_in`` gives E||x|| ~
    sqrt(d_in), unit variance per dimension (Anthropic's convention). The default 3.4 is
    ``short_budget``'s (why: ``recipes.py``). The MSE scales with it, so target mode starts lambda
    at ``l0_coefficient`` times it."""

    normalized_variance: float | None = None
    """If set, the scale makes the centred inputs' E||x - E[x]||^2 equal this instead: what the
    SAE sees once b_dec is at the mean, which is a different share of E||x||^2 at every site (13%
    on Gemma 3 270M's layer-6 residual stream, 36% on its MLP output, 2026-12-04). 0.41 puts
    that residual stream at E||x||^2 ~3.2, near the default 3.4. The dataset-wide E||x||^2 given by
    ``set_mean_squared_norm`` is centred with the first batch's mean. Lambda still starts at
    ``l0_coefficient`` times ``normalized_mean_squared_norm``. Opt-in: 0.41 helped the MLP output
    at target 16 and cost the residual stream 0.03-0.05 nats there (docs/results.md,
    2026-12-04 session 3)."""

    init_threshold_at_target: bool = False
    """In target mode, start each theta at the quantile of its latent's first-batch
    pre-activations that a fraction ``target_l0 / d_sae`` of the tokens exceed: every latent
    starts alive and the batch L0 starts at the target, instead of at ~d_sae / 3 with
    theta = ``jumprelu_init_threshold`` for all."""

    init_b_dec_to_mean: bool = True
    """Start b_dec at the first batch's mean (and shift b_enc to match); a zero b_dec moves only
    ~lr per step while the mean carries most of E||x||^2 in LM residual streams."""

    decoder_unit_norm: bool = False
    """Keep decoder rows at unit norm: the gradient component parallel to each row is removed
    before the optimizer step and the rows are renormalised after it (paper, appendix)."""

    max_grad_norm: float | None = 0.1
    """Global gradient-norm clip applied instead of SAELens's hard-coded 1.0 (None: no clipping,
    the paper's). The threshold's STE gradient dominates the global norm, so the default 0.1
    (``short_budget``'s) slows the encoder and decoder while the thresholds are moving fast
    (why: ``recipes.py``)."""

    target_l0_rate: float = 0.1
    """Integral gain of target mode, in units of the initial lambda: the integral moves by at most
    this much per step (``sparsity.TargetL0Controller``)."""

    target_l0_gain: float = 3.0
    """Proportional gain of target mode: lambda = lambda_0 * (I + gain * e), with
    e = clamp(log(L0 / target_l0), -1, 1)."""

    threshold_ceiling_decay: float | None = 0.9
    """Keep each theta at or below a ceiling that follows its latent's largest pre-activation
    per batch: an exponential moving average with this decay per step, never below the current
    batch's maximum. No threshold can then climb past every input and leave its latent dead with
    no gradient, while a latent may still fire in few batches (None: no ceiling, the paper's)."""

    auxk_loss_coefficient: float | None = None
    """Weight of an auxiliary loss in which dead latents (SAELens's trainer's
    ``dead_neuron_mask``) reconstruct the live latents' residual, Gao et al.'s (2024) AuxK
    adapted to JumpReLU (``JumpReLUSTETrainingSAE._auxk_loss``). None: off (the paper has none)."""

    check_finite: bool = True
    """Stop with an error naming the step when an activation batch holds NaN or Inf."""

    sparse_step: Literal["auto", "on", "off"] = "auto"
    """Training step that after the encoder matmul touches only active latents and threshold
    windows (``sparse_step.py``; same losses and gradients as the dense step): ``auto`` takes it
    while the last step touched few enough latents to pay (starting dense), ``on`` always (an
    error where it cannot run, e.g. hooks on ``hook_sae_acts_pre``), ``off`` never. In a sparse
    step the output's ``feature_acts`` is a sparse COO tensor without grad."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    @override
    def get_inference_config_class(self) -> type[SAEConfig]:
        # Saved SAEs are SAELens's plain "jumprelu": loadable without this package.
        return JumpReLUSAEConfig

    @property
    def target_mode(self) -> bool:
        """True when the coefficient is adapted to reach ``target_l0``."""
        return self.target_l0 is not None and self.jumprelu_sparsity_loss_mode != "quadratic"

    def __post_init__(self) -> None:
        super().__post_init__()
        _validate(self)


def _validate(cfg: JumpReLUSTETrainingSAEConfig) -> None:
    def fail(field: str, problem: str) -> None:
        raise ValueError(f"JumpReLUSTETrainingSAEConfig.{field} {problem}")

    if cfg.d_in <= 0 or cfg.d_sae <= 0:
        fail("d_in/d_sae", f"must be positive, got d_in={cfg.d_in}, d_sae={cfg.d_sae}")
    if cfg.jumprelu_sparsity_loss_mode not in PENALTIES:
        fail(
            "jumprelu_sparsity_loss_mode",
            f"must be one of {sorted(PENALTIES)}, got {cfg.jumprelu_sparsity_loss_mode!r}",
        )
    if cfg.jumprelu_kernel not in KERNELS:
        fail("jumprelu_kernel", f"must be one of {sorted(KERNELS)}, got {cfg.jumprelu_kernel!r}")
    if cfg.threshold_parametrization not in ("linear", "log"):
        fail(
            "threshold_parametrization",
            f"must be 'linear' or 'log', got {cfg.threshold_parametrization!r}",
        )
    if not cfg.jumprelu_bandwidth > 0:
        fail("jumprelu_bandwidth", f"must be > 0, got {cfg.jumprelu_bandwidth}")
    lowest = 0.0 if cfg.threshold_parametrization == "linear" else 1e-30
    if not cfg.jumprelu_init_threshold >= lowest:
        fail(
            "jumprelu_init_threshold",
            f"must be >= 0 (> 0 with log parametrization), got {cfg.jumprelu_init_threshold}",
        )
    if cfg.target_l0 is not None and not 0 < cfg.target_l0 <= cfg.d_sae:
        fail("target_l0", f"must be in (0, d_sae={cfg.d_sae}], got {cfg.target_l0}")
    if cfg.init_threshold_at_target and not cfg.target_mode:
        fail("init_threshold_at_target", "needs target mode: set target_l0 (step or tanh penalty)")
    if cfg.jumprelu_sparsity_loss_mode == "quadratic" and cfg.target_l0 is None:
        fail("target_l0", "must be set for the quadratic sparsity penalty")
    if not cfg.l0_coefficient >= 0 or (cfg.target_mode and cfg.l0_coefficient == 0):
        fail("l0_coefficient", f"must be >= 0 (> 0 in target mode), got {cfg.l0_coefficient}")
    if not cfg.normalized_mean_squared_norm > 0:
        fail(
            "normalized_mean_squared_norm",
            f"must be > 0, got {cfg.normalized_mean_squared_norm}",
        )
    if cfg.normalized_variance is not None and not cfg.normalized_variance > 0:
        fail("normalized_variance", f"must be None or > 0, got {cfg.normalized_variance}")
    if not cfg.threshold_lr_scale > 0:
        fail("threshold_lr_scale", f"must be > 0, got {cfg.threshold_lr_scale}")
    if cfg.max_grad_norm is not None and not cfg.max_grad_norm > 0:
        fail("max_grad_norm", f"must be None or > 0, got {cfg.max_grad_norm}")
    if not cfg.target_l0_rate > 0:
        fail("target_l0_rate", f"must be > 0, got {cfg.target_l0_rate}")
    if not cfg.target_l0_gain >= 0:
        fail("target_l0_gain", f"must be >= 0, got {cfg.target_l0_gain}")
    if cfg.threshold_ceiling_decay is not None and not 0 <= cfg.threshold_ceiling_decay < 1:
        fail(
            "threshold_ceiling_decay",
            f"must be None or in [0, 1), got {cfg.threshold_ceiling_decay}",
        )
    if cfg.auxk_loss_coefficient is not None and not cfg.auxk_loss_coefficient >= 0:
        fail("auxk_loss_coefficient", f"must be None or >= 0, got {cfg.auxk_loss_coefficient}")
    if cfg.sparse_step not in ("auto", "on", "off"):
        fail("sparse_step", f"must be 'auto', 'on' or 'off', got {cfg.sparse_step!r}")
    if cfg.l0_warm_up_steps < 0:
        fail("l0_warm_up_steps", f"must be >= 0, got {cfg.l0_warm_up_steps}")
