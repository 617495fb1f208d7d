"""Recipes: the paper's settings as published, and every recipe builds a valid config."""

import pytest
from sae_lens import LanguageModelSAERunnerConfig

from sae_lens_jumprelu import JumpReLUSTETrainingSAE
from sae_lens_jumprelu.recipes import PAPER, RECIPES, get_recipe


def test_paper_recipe_is_the_published_one() -> None:
    cfg = PAPER.sae_config(d_in=16, d_sae=32)
    assert (cfg.jumprelu_init_threshold, cfg.jumprelu_bandwidth) == (0.001, 0.001)
    assert cfg.jumprelu_kernel == "rectangle" and cfg.jumprelu_sparsity_loss_mode == "step"
    assert cfg.threshold_parametrization == "log" and cfg.decoder_unit_norm
    assert cfg.normalize_to_unit_mean_square and not cfg.apply_b_dec_to_input
    assert cfg.l0_warm_up_steps == 10_000 and cfg.max_grad_norm is None
    assert (PAPER.lr, PAPER.lr_warm_up_steps, PAPER.batch_size) == (7e-5, 1_000, 4096)
    assert (PAPER.adam_beta1, PAPER.adam_beta2) == (0.0, 0.999)
    assert cfg.threshold_ceiling_decay is None
    assert PAPER.warm_up_steps(4096 * 100_000) == 1_000 and PAPER.decay_steps(4096 * 100) == 0


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_builds_runner_config_and_sae(name: str) -> None:
    recipe = get_recipe(name)
    sae_cfg = recipe.sae_config(d_in=8, d_sae=16, target_l0=4)
    tokens = recipe.batch_size * 200
    runner = LanguageModelSAERunnerConfig(sae=sae_cfg, **recipe.runner_kwargs(tokens))
    assert runner.lr == recipe.lr and runner.adam_beta1 == recipe.adam_beta1
    assert runner.training_tokens == tokens
    assert runner.lr_warm_up_steps == recipe.warm_up_steps(tokens)
    assert runner.lr_decay_steps == recipe.decay_steps(tokens)
    sae = JumpReLUSTETrainingSAE(sae_cfg)
    assert sae.threshold.shape == (16,)


def test_unknown_recipe_names_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown recipe 'fast'.*paper"):
        get_recipe("fast")


def test_short_budget_schedule_is_a_fraction_of_the_run() -> None:
    # 1000 steps: 5% warm-up, the last 20% decayed to zero.
    recipe = get_recipe("short_budget")
    samples = recipe.batch_size * 1000
    assert (recipe.warm_up_steps(samples), recipe.decay_steps(samples)) == (50, 200)
    settings = recipe.trainer_settings(samples)
    assert (settings.lr_warm_up_steps, settings.lr_decay_steps) == (50, 200)


def test_fractional_schedule_needs_the_run_length() -> None:
    with pytest.raises(ValueError, match="pass training_tokens"):
        get_recipe("short_budget").runner_kwargs()
