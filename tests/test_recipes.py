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


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_builds_runner_config_and_sae(name: str) -> None:
    recipe = get_recipe(name)
    sae_cfg = recipe.sae_config(d_in=8, d_sae=16, target_l0=4)
    runner = LanguageModelSAERunnerConfig(sae=sae_cfg, **recipe.runner_kwargs())
    assert runner.lr == recipe.lr and runner.adam_beta1 == recipe.adam_beta1
    sae = JumpReLUSTETrainingSAE(sae_cfg)
    assert sae.threshold.shape == (16,)


def test_unknown_recipe_names_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown recipe 'fast'.*paper"):
        get_recipe("fast")
