"""Named training recipes: complete sets of SAE-config and trainer settings, each with its reason.

``paper`` is Rajamanoharan et al. 2024 (and Gemma Scope) as published. ``short_budget`` is for
runs of at most ~50M tokens (the CPU case), where the paper's settings leave thresholds where
they started; every deviation from ``paper`` carries the measurement that motivated it, from
``benchmarks/recipe_ablation.py`` (synthetic data, 600 steps of 4096). These are synthetic-data
measurements; the Gemma collection work is where they get checked on LM activations.
"""

from dataclasses import dataclass, field
from typing import Any

from sae_lens_jumprelu.config import JumpReLUSTETrainingSAEConfig
from sae_lens_jumprelu.training.settings import TrainerSettings


@dataclass(frozen=True)
class Recipe:
    """A named bundle of settings for the SAE config and for SAELens's trainer."""

    name: str
    """Registry key, e.g. ``paper``."""
    summary: str
    """One line for ``--help`` and the README."""
    sae: dict[str, Any] = field(default_factory=dict)
    """``JumpReLUSTETrainingSAEConfig`` fields."""
    lr: float = 3e-4
    """Trainer learning rate."""
    lr_warm_up_steps: int = 0
    """Linear learning-rate warm-up, in steps."""
    lr_warm_up_fraction: float = 0.0
    """Linear learning-rate warm-up as a fraction of the run's steps (the longer of the two)."""
    lr_decay_fraction: float = 0.0
    """Linear learning-rate decay to zero over this final fraction of the run's steps
    (SAELens's constant scheduler with ``lr_decay_steps``)."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    batch_size: int = 4096
    """Activations per step."""
    dead_feature_window: int = 1000
    """Steps without firing before SAELens's trainer calls a latent dead (its
    ``dead_neuron_mask``, which the pre-activation loss acts on); 1000 is SAELens's."""

    def sae_config(self, d_in: int, d_sae: int, **overrides: Any) -> JumpReLUSTETrainingSAEConfig:
        return JumpReLUSTETrainingSAEConfig(d_in=d_in, d_sae=d_sae, **{**self.sae, **overrides})

    def warm_up_steps(self, total_samples: int) -> int:
        steps = total_samples // self.batch_size
        return max(self.lr_warm_up_steps, round(self.lr_warm_up_fraction * steps))

    def decay_steps(self, total_samples: int) -> int:
        return round(self.lr_decay_fraction * (total_samples // self.batch_size))

    def runner_kwargs(self, training_tokens: int = 0) -> dict[str, Any]:
        """Fields of SAELens's ``LanguageModelSAERunnerConfig`` for a run of
        ``training_tokens`` (which the fractional warm-up and decay need)."""
        if training_tokens <= 0 and (self.lr_warm_up_fraction or self.lr_decay_fraction):
            raise ValueError(
                f"recipe {self.name!r} schedules the learning rate over a fraction of the run: "
                "pass training_tokens to runner_kwargs"
            )
        kwargs: dict[str, Any] = {
            "lr": self.lr,
            "lr_warm_up_steps": self.warm_up_steps(training_tokens),
            "lr_decay_steps": self.decay_steps(training_tokens),
            "adam_beta1": self.adam_beta1,
            "adam_beta2": self.adam_beta2,
            "train_batch_size_tokens": self.batch_size,
            "dead_feature_window": self.dead_feature_window,
        }
        if training_tokens > 0:
            kwargs["training_tokens"] = training_tokens
        return kwargs

    def trainer_settings(self, total_samples: int, device: str = "cpu") -> TrainerSettings:
        """Settings for ``synthetic.train_on_synthetic`` / SAELens's ``SAETrainerConfig``."""
        return TrainerSettings(
            total_samples=total_samples,
            batch_size=self.batch_size,
            lr=self.lr,
            lr_warm_up_steps=self.warm_up_steps(total_samples),
            lr_decay_steps=self.decay_steps(total_samples),
            adam_beta1=self.adam_beta1,
            adam_beta2=self.adam_beta2,
            device=device,
            extra={"dead_feature_window": self.dead_feature_window},
        )


PAPER = Recipe(
    name="paper",
    summary="Rajamanoharan et al. 2024 as published (billions of tokens)",
    sae={
        "normalize_to_unit_mean_square": True,  # section 5: E||x||^2 = 1
        "normalized_mean_squared_norm": 1.0,
        "apply_b_dec_to_input": False,  # pi = W_enc x + b_enc, as in Gemma Scope's files
        "jumprelu_init_threshold": 0.001,  # appendix: theta_init = 0.001
        "jumprelu_bandwidth": 0.001,  # appendix: eps = 0.001
        "jumprelu_kernel": "rectangle",
        "threshold_parametrization": "log",  # the paper trains log(theta)
        "decoder_init_norm": 1.0,  # unit-norm decoder rows, W_enc = W_dec^T
        "decoder_unit_norm": True,  # parallel gradient removed, rows renormalised
        "jumprelu_sparsity_loss_mode": "step",  # lambda * L0
        "l0_warm_up_steps": 10_000,  # lambda warmed up linearly over 10k steps
        "max_grad_norm": None,  # no clipping
        "threshold_lr_scale": 1.0,  # one learning rate for every parameter
        "init_b_dec_to_mean": False,  # b_dec starts at zero
        "threshold_ceiling_decay": None,  # thresholds are bounded below only
    },
    lr=7e-5,
    lr_warm_up_steps=1_000,
    adam_beta1=0.0,
    adam_beta2=0.999,
    batch_size=4096,
)

# Each deviation from PAPER below was measured by benchmarks/recipe_ablation.py: synthetic data,
# target L0 5, 600 steps of 4096, the deviation reverted alone. short_budget itself: L0 5.02,
# FVU 0.151, MCC 0.812, 5.9% dead latents.
SHORT_BUDGET = Recipe(
    name="short_budget",
    summary="for <= 50M tokens: fast thresholds, b_dec at the data mean, free decoder norms",
    sae={
        **PAPER.sae,
        # log(theta) moves theta by ~theta * lr per step: reverted, nearly every latent still
        # fired (L0 503 of 512) after 600 steps.
        "threshold_parametrization": "linear",
        # Inputs scaled to E||x||^2 = 3.4 instead of 1: fewer latents die (Adam's steps are
        # absolute, so thresholds move relatively more slowly against 1.84x larger
        # pre-activations). Reverted: FVU 0.160, MCC 0.774, 10.5% dead; at 1000 steps MCC 0.806
        # / 0.761 at targets 4 / 8 against 0.868 / 0.792 (benchmarks/normalisation_scale.py);
        # Gemma 3 270M layer 9, target 32, 195 steps: FVU 0.314 at L0 31.6 against 0.280 at L0
        # 26.6 (docs/results.md, "Before 2026-12-02").
        "normalized_mean_squared_norm": 3.4,
        # The pseudo-derivatives' window, 3x the paper's: in a short run only the few entries
        # within eps of theta carry the thresholds' gradient, and a wider window gives them a
        # steadier one (0.003 is SAELens's 0.05 at E||x|| = sqrt(d_in) in these units). Gemma 3
        # 270M layer 6, batch 256, 971 steps, 2026-12-04 (docs/results.md), delta LM loss at
        # targets 16 / 32 / 64: 0.346 / 0.208 / 0.142 with 0.001 (32 and 64: the 2026-12-03
        # Pareto), 0.273 / 0.184 / 0.130 with 0.003 (0.252 at 16 with 0.01); MLP output: 0.064 /
        # 0.044 / 0.021 against 0.054 / 0.030 / 0.019 (0.062 at 16 with 0.01). Synthetic demo
        # (target 8): FVU 0.128 / 0.123 / 0.120 for 0.001 / 0.003 / 0.01, MCC ~0.76 for all.
        "jumprelu_bandwidth": 0.003,
        # theta must climb to ~0.25 within a few hundred steps. Scale 1: L0 6.58 for target 5
        # (outside +-10%), MCC 0.748; scale 10: FVU 0.236, MCC 0.549, 21% dead.
        "threshold_lr_scale": 3.0,
        # The data mean carries most of E||x||^2 (87% on Gemma 3 270M layer 6, DESIGN.md) and a
        # zero b_dec moves only ~lr per step. Reverted: FVU 0.194, MCC 0.630, 21% dead.
        "init_b_dec_to_mean": True,
        # Subtracting b_dec keeps the pre-activations centred throughout training.
        # Reverted (the paper's form): FVU 0.165, MCC 0.720.
        "apply_b_dec_to_input": True,
        # Anthropic's small decoder init with free row norms. Reverted to the paper's unit rows:
        # FVU 0.215, MCC 0.602.
        "decoder_init_norm": 0.1,
        "decoder_unit_norm": False,
        "l0_warm_up_steps": 0,  # target mode controls lambda; a fixed lambda applies at once
        # A global clip, far below the threshold's typical gradient norm (median 6.2 at
        # target 16), so the encoder's and decoder's steps shrink while the thresholds' STE
        # gradient is large: they learn the dictionary once L0 has settled. Gemma 3 270M layer
        # 6, batch 256, 971 steps, 2026-12-03 (docs/results.md): delta LM loss at targets
        # 16 / 64 with 1.0: 0.505 / 0.174; 0.3: 0.418 / 0.137; 0.1: 0.348 / 0.146; clipping each
        # parameter on its own: 0.600 / 0.304; no clip: 0.762 at 16.
        "max_grad_norm": 0.1,
        # A signed controller on lambda (sparsity.TargetL0Controller). Its log(lambda)
        # predecessor undershot on LM activations: L0 21 for target 32, lambda ~3e-4 (Gemma 3
        # 270M layer 6, d_sae 4096, batch 256, 2026-12-02).
        "target_l0_rate": 0.1,
        "target_l0_gain": 3.0,
        # Thresholds stay at or below a moving average of each latent's batch maximum. Without
        # it 86% of latents died at target 32 (same run as above; training_sae.project_constraints).
        "threshold_ceiling_decay": 0.9,
        # SAELens's pre-activation loss on dead latents: what the ceiling leaves dead has every
        # pre-activation below zero (theta 0; all of them at target 32, 2026-12-03), where
        # neither the STE nor an AuxK loss on ReLU'd pre-activations gives a gradient. Gemma 3
        # 270M layer 6, batch 256, 971 steps, 2026-12-03 (docs/results.md), dead / delta LM
        # loss at targets 32 and 64: without 14.3% / 0.201 and 19.6% / 0.138; with 1e-3 0.4% /
        # 0.208 and 0.7% / 0.142.
        "pre_act_loss_coefficient": 1e-3,
    },
    # Reverted to lr 3e-4: L0 7.13 for target 5, FVU 0.201, MCC 0.656; to the paper's
    # optimiser (7e-5, 1k warm-up, beta1 0): L0 160, FVU 0.444, the weights barely move in 600
    # steps.
    lr=1e-3,
    lr_warm_up_steps=0,
    # Warm-up and a final decay to zero, as dictionary_learning and SAELens's tutorials do.
    # Measured with the ceiling and the signed controller (Gemma 3 270M layer 6, target 32,
    # batch 256, 964 steps, 2026-12-02, benchmarks/gemma_pareto.py): L0 34.1, FVU 0.052,
    # delta LM loss 0.259, 3.0% dead.
    lr_warm_up_fraction=0.05,
    lr_decay_fraction=0.2,
    adam_beta1=0.9,
    # 100 steps of 256 (25,600 tokens) in the run above; SAELens's 1000 is longer than the whole
    # default `train` run (781 steps), which would leave the pre-activation loss off.
    dead_feature_window=100,
)

RECIPES: dict[str, Recipe] = {recipe.name: recipe for recipe in (PAPER, SHORT_BUDGET)}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    return RECIPES[name]
