"""``JumpReLUSTETrainingSAEConfig``: SAELens integration and validation."""

from collections.abc import Callable
from typing import Any

import pytest
from sae_lens import JumpReLUTrainingSAEConfig
from sae_lens.saes.jumprelu_sae import JumpReLUSAEConfig
from sae_lens.saes.sae import TrainingSAEConfig

from sae_lens_jumprelu import JumpReLUSTETrainingSAEConfig

MakeCfg = Callable[..., JumpReLUSTETrainingSAEConfig]


def test_subclasses_sae_lens_jumprelu_training_config() -> None:
    assert issubclass(JumpReLUSTETrainingSAEConfig, JumpReLUTrainingSAEConfig)


def test_architecture_and_inference_config(make_cfg: MakeCfg) -> None:
    cfg = make_cfg()
    assert JumpReLUSTETrainingSAEConfig.architecture() == "jumprelu_ste"
    assert cfg.architecture() == "jumprelu_ste"
    assert cfg.get_inference_config_class() is JumpReLUSAEConfig
    assert cfg.get_inference_sae_cfg_dict()["architecture"] == "jumprelu"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"target_l0": 0}, "target_l0"),
        ({"target_l0": -1.0}, "target_l0"),
        ({"target_l0": 3.5}, "target_l0"),  # > d_sae = 3
        ({"jumprelu_bandwidth": 0.0}, "jumprelu_bandwidth"),
        ({"jumprelu_bandwidth": -0.1}, "jumprelu_bandwidth"),
        ({"jumprelu_sparsity_loss_mode": "l1"}, "jumprelu_sparsity_loss_mode"),
        ({"jumprelu_kernel": "gaussian"}, "jumprelu_kernel"),
        ({"jumprelu_sparsity_loss_mode": "quadratic"}, "target_l0"),
        ({"threshold_lr_scale": 0.0}, "threshold_lr_scale"),
        ({"threshold_lr_scale": -2.0}, "threshold_lr_scale"),
        ({"threshold_parametrization": "exp"}, "threshold_parametrization"),
        ({"jumprelu_init_threshold": -0.1}, "jumprelu_init_threshold"),
        (
            {"jumprelu_init_threshold": 0.0, "threshold_parametrization": "log"},
            "jumprelu_init_threshold",
        ),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"target_l0_rate": 0.0}, "target_l0_rate"),
        ({"threshold_ceiling_decay": 1.0}, "threshold_ceiling_decay"),
        ({"threshold_ceiling_decay": -0.1}, "threshold_ceiling_decay"),
        ({"l0_coefficient": -1.0}, "l0_coefficient"),
        ({"l0_coefficient": 0.0, "target_l0": 2}, "l0_coefficient"),  # target mode needs lambda > 0
        ({"d_sae": 0}, "d_sae"),
        ({"normalized_mean_squared_norm": 0.0}, "normalized_mean_squared_norm"),
        ({"normalized_variance": -1.0}, "normalized_variance"),
    ],
)
def test_invalid_values_raise_naming_the_field(
    make_cfg: MakeCfg, overrides: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        make_cfg(**overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        {"target_l0": 3},  # == d_sae is allowed
        {"target_l0": 0.5},
        {"jumprelu_sparsity_loss_mode": "quadratic", "target_l0": 2},
        {"jumprelu_sparsity_loss_mode": "tanh", "jumprelu_kernel": "triangle"},
        {"jumprelu_init_threshold": 0.0},  # linear parametrization allows theta = 0
        {"l0_coefficient": 0.0},
        {"max_grad_norm": 0.5, "threshold_parametrization": "log", "threshold_lr_scale": 10.0},
    ],
)
def test_valid_values_are_accepted(make_cfg: MakeCfg, overrides: dict[str, Any]) -> None:
    cfg = make_cfg(**overrides)
    for name, value in overrides.items():
        assert getattr(cfg, name) == value


@pytest.mark.parametrize(
    ("overrides", "target_mode"),
    [
        ({}, False),
        ({"target_l0": 2}, True),
        ({"target_l0": 2, "jumprelu_sparsity_loss_mode": "tanh"}, True),
        # quadratic: target_l0 is the centre of the penalty, lambda stays the user's
        ({"target_l0": 2, "jumprelu_sparsity_loss_mode": "quadratic"}, False),
    ],
)
def test_target_mode(make_cfg: MakeCfg, overrides: dict[str, Any], target_mode: bool) -> None:
    assert make_cfg(**overrides).target_mode is target_mode


def test_from_dict_with_architecture_returns_our_class() -> None:
    cfg = TrainingSAEConfig.from_dict({"architecture": "jumprelu_ste", "d_in": 2, "d_sae": 3})
    assert type(cfg) is JumpReLUSTETrainingSAEConfig
    assert (cfg.d_in, cfg.d_sae) == (2, 3)


def test_from_dict_validates() -> None:
    with pytest.raises(ValueError, match="jumprelu_bandwidth"):
        TrainingSAEConfig.from_dict(
            {"architecture": "jumprelu_ste", "d_in": 2, "d_sae": 3, "jumprelu_bandwidth": -1.0}
        )


def test_to_dict_from_dict_round_trip(make_cfg: MakeCfg) -> None:
    cfg = make_cfg(
        target_l0=2.5,
        jumprelu_kernel="triangle",
        threshold_parametrization="log",
        threshold_lr_scale=7.0,
        normalize_to_unit_mean_square=False,
        init_b_dec_to_mean=True,
        decoder_unit_norm=True,
        max_grad_norm=0.25,
        target_l0_rate=0.03,
        threshold_ceiling_decay=0.5,
        check_finite=False,
        apply_b_dec_to_input=False,
    )
    as_dict = cfg.to_dict()
    assert as_dict["architecture"] == "jumprelu_ste"
    back = TrainingSAEConfig.from_dict(as_dict)
    assert type(back) is JumpReLUSTETrainingSAEConfig
    assert back == cfg
    assert back.to_dict() == as_dict
