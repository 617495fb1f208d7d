"""``JumpReLUSTETrainingSAE``: equivalence with SAELens's classes, saving and loading,
normalisation, input checks and training behaviour inside SAELens's ``SAETrainer``."""

import json
import math
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sae_lens
import torch
from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig, JumpReLUTrainingSAE
from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAEConfig as SAELensTrainingConfig
from sae_lens.saes.sae import TrainingSAE, TrainStepInput
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer

from sae_lens_jumprelu import (
    JumpReLUSTETrainingSAE,
    JumpReLUSTETrainingSAEConfig,
    NonFiniteActivationsError,
)
from sae_lens_jumprelu.data.synthetic import (
    SyntheticTask,
    TrainerSettings,
    score_on_synthetic,
    train_on_synthetic,
)

MakeSAE = Callable[..., JumpReLUSTETrainingSAE]
MakeStepInput = Callable[..., TrainStepInput]
MakeBatches = Callable[[list[torch.Tensor]], Iterator[torch.Tensor]]

PARAMETRIZATIONS = [
    pytest.param({"threshold_parametrization": "linear"}, id="linear"),
    pytest.param(
        {"threshold_parametrization": "linear", "threshold_lr_scale": 10.0}, id="linear-scale10"
    ),
    pytest.param({"threshold_parametrization": "log", "threshold_lr_scale": 3.0}, id="log"),
]


@torch.no_grad()
def randomise(sae: JumpReLUSTETrainingSAE, input_scale: float = 0.37) -> None:
    """Random weights, decoder rows of unequal norms, thresholds, and a non-trivial input scale."""
    d_in, d_sae = sae.cfg.d_in, sae.cfg.d_sae
    sae.W_enc.copy_(torch.randn(d_in, d_sae))
    sae.W_dec.copy_(torch.randn(d_sae, d_in) * torch.rand(d_sae, 1) * 3)
    sae.b_enc.copy_(torch.randn(d_sae) * 0.5)
    sae.b_dec.copy_(torch.randn(d_in))
    sae.set_threshold(torch.rand(d_sae) + 0.05)
    sae.input_scale.fill_(input_scale)
    sae.input_scale_pending.fill_(False)


def assert_some_active_some_not(acts: torch.Tensor) -> None:
    active = acts != 0
    assert active.any() and not active.all(), "the test needs both sides of the jump"


def trainer_for(
    sae: JumpReLUSTETrainingSAE,
    data: Iterator[torch.Tensor],
    n_steps: int,
    batch: int,
    lr: float = 1e-3,
) -> SAETrainer[Any, Any]:
    settings = TrainerSettings(total_samples=n_steps * batch, batch_size=batch, lr=lr)
    return SAETrainer(cfg=settings.to_trainer_config(), sae=sae, data_provider=data)


def state(sae: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in sae.state_dict().items()}


# ---- inference equivalence ----------------------------------------------------------------------


@pytest.mark.parametrize("params", PARAMETRIZATIONS)
@pytest.mark.parametrize("apply_b_dec_to_input", [True, False])
def test_saved_inference_model_matches_sae_lens_jumprelu(
    make_sae: MakeSAE, tmp_path: Path, apply_b_dec_to_input: bool, params: dict[str, Any]
) -> None:
    sae = make_sae(d_in=8, d_sae=16, apply_b_dec_to_input=apply_b_dec_to_input, **params)
    randomise(sae)
    x = torch.randn(64, 8) * 2.5 + 1.0

    sae.save_inference_model(tmp_path)
    assert json.loads((tmp_path / "cfg.json").read_text())["architecture"] == "jumprelu"
    loaded = sae_lens.SAE.load_from_disk(tmp_path)
    assert type(loaded) is JumpReLUSAE
    torch.testing.assert_close(loaded.W_dec.norm(dim=-1), torch.ones(16))

    with torch.no_grad():
        acts, ref_acts = sae.encode(x), loaded.encode(x)
        assert_some_active_some_not(ref_acts)
        assert torch.equal(acts != 0, ref_acts != 0)
        # each saved latent is scaled by its raw decoder norm, its row divided by it
        norms = (sae.W_dec / sae.input_scale).norm(dim=-1)
        torch.testing.assert_close(acts * norms, ref_acts, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(sae(x), loaded(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae.decode(acts), loaded.decode(ref_acts), rtol=1e-5, atol=1e-5)


def test_saved_inference_weights_are_hand_scaled(make_sae: MakeSAE, tmp_path: Path) -> None:
    # The weights live in normalised units (x * s); the saved "jumprelu" takes raw x with unit
    # decoder rows: with n_i = ||d_i|| / s, W_enc[:, i] * s * n_i, b_enc_i * n_i, theta_i * n_i,
    # d_i / (s * n_i) and b_dec / s.
    sae = make_sae(d_in=4, d_sae=3)
    randomise(sae, input_scale=0.5)
    with torch.no_grad():
        sae.W_dec.copy_(torch.tensor([[3.0, 0, 0, 4], [0, 0.5, 0, 0], [0, 0, 0, 0]]))
    n = torch.tensor([10.0, 1.0, 1.0])  # ||d_i|| / 0.5; a zero row is left alone
    sae.save_inference_model(tmp_path)
    loaded = sae_lens.SAE.load_from_disk(tmp_path)
    torch.testing.assert_close(
        loaded.W_dec, torch.tensor([[0.6, 0, 0, 0.8], [0, 1.0, 0, 0], [0] * 4])
    )
    torch.testing.assert_close(loaded.W_enc, sae.W_enc.detach() * 0.5 * n)
    torch.testing.assert_close(loaded.b_enc, sae.b_enc.detach() * n)
    torch.testing.assert_close(loaded.threshold, sae.threshold.detach() * n)
    torch.testing.assert_close(loaded.b_dec, sae.b_dec.detach() * 2.0)
    assert set(loaded.state_dict()) == {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"}


_FRESH_PROCESS = """
import sys, torch
import sae_lens
sae = sae_lens.SAE.load_from_disk(sys.argv[1])
x = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save({"acts": sae.encode(x), "out": sae(x)}, sys.argv[3])
print(type(sae).__name__, any(m.startswith("sae_lens_jumprelu") for m in sys.modules))
"""


def test_trained_sae_loads_in_fresh_process_without_plugin(tmp_path: Path) -> None:
    task = SyntheticTask(num_features=32, hidden_dim=8)
    model = task.build()
    sae = JumpReLUSTETrainingSAE(
        JumpReLUSTETrainingSAEConfig(
            d_in=8, d_sae=16, jumprelu_bandwidth=0.05, init_b_dec_to_mean=True
        )
    )
    train_on_synthetic(sae, model, TrainerSettings(total_samples=5 * 256, batch_size=256, lr=1e-2))
    assert not bool(sae.input_scale_pending) and float(sae.input_scale) != 1.0

    sae.save_inference_model(tmp_path / "sae")
    x = model.sample(128)
    torch.save(x, tmp_path / "x.pt")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _FRESH_PROCESS,
            str(tmp_path / "sae"),
            str(tmp_path / "x.pt"),
            str(tmp_path / "out.pt"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,  # importing torch + SAELens takes minutes on a loaded machine
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["JumpReLUSAE", "False"]

    fresh = torch.load(tmp_path / "out.pt")
    here = sae_lens.SAE.load_from_disk(tmp_path / "sae")
    with torch.no_grad():
        assert torch.equal(fresh["acts"], here.encode(x))
        assert torch.equal(fresh["out"], here(x))
        assert_some_active_some_not(fresh["acts"])
        # and the plugin's own forward agrees with what the fresh process computed
        torch.testing.assert_close(sae(x), fresh["out"], rtol=1e-5, atol=1e-5)


def test_target_mode_starts_lambda_in_the_units_of_the_normalisation(make_sae: MakeSAE) -> None:
    # MSE grows with the E||x||^2 inputs are normalised to; target mode's starting lambda with it.
    fields = {"d_in": 8, "d_sae": 16, "l0_coefficient": 2e-3}
    target = make_sae(**fields, target_l0=4, normalized_mean_squared_norm=5.0)
    assert target._controller is not None
    assert target._controller.initial == pytest.approx(1e-2)
    paper_scale = make_sae(**fields, target_l0=4, normalized_mean_squared_norm=1.0)
    assert paper_scale._controller is not None
    assert paper_scale._controller.initial == pytest.approx(2e-3)
    # Without normalisation the scale does not apply.
    raw = make_sae(
        **fields, target_l0=4, normalized_mean_squared_norm=5.0, normalize_to_unit_mean_square=False
    )
    assert raw._controller is not None
    assert raw._controller.initial == pytest.approx(2e-3)
    # A fixed lambda is the user's: no controller.
    assert make_sae(**fields, normalized_mean_squared_norm=5.0)._controller is None


# ---- checkpoints and legacy weights -------------------------------------------------------------


@pytest.mark.parametrize("params", PARAMETRIZATIONS)
def test_checkpoint_round_trip(
    make_sae: MakeSAE, make_step_input: MakeStepInput, tmp_path: Path, params: dict[str, Any]
) -> None:
    sae = make_sae(d_in=8, d_sae=16, target_l0=4, **params)
    randomise(sae)
    sae.l0_coefficient_integral.fill_(-3.25)
    sae.threshold_ceiling.copy_(torch.linspace(0.5, 2.0, 16))
    sae.save_model(tmp_path)

    loaded = TrainingSAE.load_from_disk(tmp_path)
    assert type(loaded) is JumpReLUSTETrainingSAE
    assert loaded.cfg == sae.cfg
    assert torch.equal(loaded.threshold, sae.threshold)
    assert loaded.threshold_raw.dtype == torch.float32
    assert torch.equal(loaded.input_scale, sae.input_scale)
    assert not bool(loaded.input_scale_pending)
    assert loaded.l0_coefficient_integral.item() == -3.25
    assert torch.equal(loaded.threshold_ceiling, sae.threshold_ceiling)
    x = torch.randn(32, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), sae(x))

    # training resumes identically: one step of each with fresh Adam
    for model in (sae, loaded):
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        model.training_forward_pass(make_step_input(x)).loss.backward()
        opt.step()
    for name, value in state(sae).items():
        assert torch.equal(state(loaded)[name], value), name


def test_checkpoint_of_untrained_sae_still_estimates_scale(
    make_sae: MakeSAE, tmp_path: Path
) -> None:
    make_sae().save_model(tmp_path)
    loaded = TrainingSAE.load_from_disk(tmp_path)
    assert bool(loaded.input_scale_pending)


@pytest.mark.parametrize("params", PARAMETRIZATIONS)
def test_legacy_log_threshold_state_dict_loads(make_sae: MakeSAE, params: dict[str, Any]) -> None:
    source = make_sae(**params)
    legacy = {k: v for k, v in state(source).items() if k in ("W_enc", "W_dec", "b_enc", "b_dec")}
    legacy["log_threshold"] = torch.tensor([-2.0, 0.0, 0.5])

    sae = make_sae(**params)
    sae.process_state_dict_for_loading(legacy)
    sae.load_state_dict(legacy)
    torch.testing.assert_close(sae.threshold.detach(), torch.tensor([-2.0, 0.0, 0.5]).exp())
    assert sae.input_scale.item() == 1.0 and not bool(sae.input_scale_pending)


@pytest.mark.parametrize("params", PARAMETRIZATIONS)
def test_sae_lens_jumprelu_state_dict_loads_with_same_outputs(
    make_sae: MakeSAE, params: dict[str, Any]
) -> None:
    ref = JumpReLUSAE(JumpReLUSAEConfig(d_in=8, d_sae=16))
    with torch.no_grad():
        for p in (ref.W_enc, ref.W_dec, ref.b_enc, ref.b_dec):
            p.copy_(torch.randn_like(p))
        ref.threshold.copy_(torch.rand(16) + 0.1)
    weights = state(ref)
    assert "threshold" in weights

    sae = make_sae(d_in=8, d_sae=16, **params)
    sae.process_state_dict_for_loading(weights)
    sae.load_state_dict(weights)
    torch.testing.assert_close(sae.threshold.detach(), ref.threshold.detach())
    x = torch.randn(64, 8)
    with torch.no_grad():
        assert_some_active_some_not(ref.encode(x))
        torch.testing.assert_close(sae.encode(x), ref.encode(x))
        torch.testing.assert_close(sae(x), ref(x), rtol=1e-5, atol=1e-5)


def test_float32_state_survives_dtype_cast(make_sae: MakeSAE) -> None:
    sae = make_sae().to(torch.bfloat16)
    assert sae.W_enc.dtype == torch.bfloat16
    for name in ("threshold_raw", "input_scale", "l0_coefficient_integral", "threshold_ceiling"):
        assert getattr(sae, name).dtype == torch.float32, name


def test_bf16_sae_trains_with_fp32_threshold(
    make_sae: MakeSAE, make_step_input: MakeStepInput
) -> None:
    sae = make_sae(d_in=8, d_sae=16, dtype="bfloat16", jumprelu_init_threshold=0.01)
    out = sae.training_forward_pass(make_step_input(torch.randn(64, 8)))
    assert out.feature_acts.dtype == torch.bfloat16
    out.loss.backward()
    assert sae.threshold_raw.grad is not None and sae.threshold_raw.grad.dtype == torch.float32
    assert sae.threshold_raw.grad.abs().max() > 0


# ---- folding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("params", PARAMETRIZATIONS)
def test_fold_W_dec_norm_keeps_active_set_and_output(
    make_sae: MakeSAE, params: dict[str, Any]
) -> None:
    sae = make_sae(d_in=8, d_sae=16, **params)
    randomise(sae)
    x = torch.randn(128, 8) * 2
    with torch.no_grad():
        acts_before, out_before = sae.encode(x), sae(x)
        sae.fold_W_dec_norm()
        acts_after, out_after = sae.encode(x), sae(x)
    assert_some_active_some_not(acts_before)
    assert torch.equal(acts_before != 0, acts_after != 0)
    torch.testing.assert_close(out_after, out_before, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(16))


# ---- normalisation ------------------------------------------------------------------------------


def test_first_step_sets_input_scale_to_unit_mean_square(
    make_sae: MakeSAE, make_step_input: MakeStepInput
) -> None:
    sae = make_sae()
    assert bool(sae.input_scale_pending)
    x = torch.tensor([[3.0, 4.0], [1.0, 0.0]])  # E||x||^2 = (25 + 1) / 2 = 13
    sae.training_forward_pass(make_step_input(x))
    assert sae.input_scale.item() == pytest.approx(1 / math.sqrt(13), rel=1e-6)
    assert not bool(sae.input_scale_pending)
    # estimated once: a second batch does not move it
    sae.training_forward_pass(make_step_input(10 * x, step=1))
    assert sae.input_scale.item() == pytest.approx(1 / math.sqrt(13), rel=1e-6)


def test_input_scale_reaches_the_requested_mean_square(
    make_sae: MakeSAE, make_step_input: MakeStepInput
) -> None:
    sae = make_sae(normalized_mean_squared_norm=3.25)
    x = torch.tensor([[3.0, 4.0], [1.0, 0.0]])  # E||x||^2 = 13: scale sqrt(3.25 / 13) = 0.5
    sae.training_forward_pass(make_step_input(x))
    assert sae.input_scale.item() == pytest.approx(0.5, rel=1e-6)
    sae.set_mean_squared_norm(52.0)  # a dataset-wide estimate instead: sqrt(3.25 / 52) = 0.25
    assert sae.input_scale.item() == pytest.approx(0.25, rel=1e-6)


def test_normalized_variance_scales_the_centred_inputs(
    make_sae: MakeSAE, make_step_input: MakeStepInput
) -> None:
    # mean (2, 2): E||x||^2 = 13, ||mean||^2 = 8, variance 5: scale sqrt(1.25 / 5) = 0.5
    x = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    sae = make_sae(normalized_variance=1.25, init_b_dec_to_mean=True)
    sae.training_forward_pass(make_step_input(x))
    assert sae.input_scale.item() == pytest.approx(0.5, rel=1e-6)
    centred = x * sae.input_scale - sae.b_dec.detach()
    assert centred.pow(2).sum(dim=-1).mean().item() == pytest.approx(1.25, rel=1e-6)
    # A dataset-wide E||x||^2 of 28 waits for the first batch's mean: sqrt(1.25 / 20) = 0.25.
    sae = make_sae(normalized_variance=1.25)
    sae.set_mean_squared_norm(28.0)
    assert bool(sae.input_scale_pending) and sae.input_scale.item() == 1.0
    sae.training_forward_pass(make_step_input(x))
    assert sae.input_scale.item() == pytest.approx(0.25, rel=1e-6)


def test_constant_inputs_cannot_be_normalised(
    make_sae: MakeSAE, make_step_input: MakeStepInput
) -> None:
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0]])
    with pytest.raises(ValueError, match="variance is 0: they are constant"):
        make_sae(normalized_variance=1.0).training_forward_pass(make_step_input(x))
    with pytest.raises(ValueError, match=r"E\|\|x\|\|\^2 is 0: they are constant"):
        make_sae().training_forward_pass(make_step_input(torch.zeros(2, 2)))


def test_input_scale_stays_one_when_normalisation_is_off(
    make_sae: MakeSAE, make_step_input: MakeStepInput
) -> None:
    sae = make_sae(normalize_to_unit_mean_square=False)
    sae.training_forward_pass(make_step_input(torch.tensor([[3.0, 4.0], [1.0, 0.0]])))
    assert sae.input_scale.item() == 1.0


def test_mse_loss_is_in_normalised_units(make_sae: MakeSAE, make_step_input: MakeStepInput) -> None:
    sae = make_sae()
    x = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    out = sae.training_forward_pass(make_step_input(x))
    expected = ((out.sae_out.detach() - x) / math.sqrt(13)).pow(2).sum(-1).mean()
    torch.testing.assert_close(out.losses["mse_loss"].detach(), expected)


@pytest.mark.parametrize("apply_b_dec_to_input", [True, False])
def test_init_b_dec_to_mean(
    make_sae: MakeSAE, make_step_input: MakeStepInput, apply_b_dec_to_input: bool
) -> None:
    sae = make_sae(init_b_dec_to_mean=True, apply_b_dec_to_input=apply_b_dec_to_input)
    W_enc, b_enc = sae.W_enc.detach().clone(), sae.b_enc.detach().clone()
    x = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    out = sae.training_forward_pass(make_step_input(x))
    mean = torch.tensor([2.0, 2.0]) / math.sqrt(13)  # batch mean in normalised units
    torch.testing.assert_close(sae.b_dec.detach(), mean)
    # either way the pre-activations are centred on the mean
    x_n = x / math.sqrt(13)
    torch.testing.assert_close(out.hidden_pre.detach(), (x_n - mean) @ W_enc + b_enc)


@pytest.mark.parametrize("threshold_lr_scale", [1.0, 3.0])
def test_init_threshold_at_target_fires_every_latent_on_the_targets_share(
    make_sae: MakeSAE, make_step_input: MakeStepInput, threshold_lr_scale: float
) -> None:
    sae = make_sae(
        d_in=8,
        d_sae=64,
        target_l0=4,
        init_threshold_at_target=True,
        init_b_dec_to_mean=True,
        threshold_lr_scale=threshold_lr_scale,
    )
    x = torch.randn(256, 8) * 3.0 + 1.0
    out = sae.training_forward_pass(make_step_input(x))
    # 256 tokens * 4 / 64 latents: each theta halfway between its latent's 16th and 17th
    # largest pre-activations
    ranked = out.hidden_pre.detach().sort(dim=0, descending=True).values
    torch.testing.assert_close(sae.threshold.detach(), (ranked[15] + ranked[16]) / 2)
    assert (out.feature_acts != 0).sum(dim=0).tolist() == [16] * 64
    assert (out.feature_acts != 0).sum(dim=-1).float().mean().item() == 4.0


def test_init_threshold_at_target_needs_target_mode(make_cfg: Callable[..., Any]) -> None:
    with pytest.raises(ValueError, match="init_threshold_at_target needs target mode"):
        make_cfg(init_threshold_at_target=True)


def test_trained_sae_saves_weights_for_raw_activations(
    make_sae: MakeSAE, make_batches: MakeBatches, tmp_path: Path
) -> None:
    sae = make_sae(
        d_in=8,
        d_sae=16,
        jumprelu_init_threshold=0.01,
        jumprelu_bandwidth=0.05,
        init_b_dec_to_mean=True,
    )
    xs = [torch.randn(256, 8) * 4.0 + 2.0 for _ in range(3)]
    trainer_for(sae, make_batches(xs), n_steps=3, batch=256).fit()
    c = xs[0].pow(2).sum(-1).mean().item()
    assert sae.input_scale.item() == pytest.approx(1 / math.sqrt(c), rel=1e-5)

    sae.save_inference_model(tmp_path)
    loaded = sae_lens.SAE.load_from_disk(tmp_path)
    x = torch.randn(64, 8) * 4.0 + 2.0
    with torch.no_grad():
        assert_some_active_some_not(loaded.encode(x))
        norms = (sae.W_dec / sae.input_scale).norm(dim=-1)  # folded into the saved latents
        torch.testing.assert_close(loaded.encode(x), sae.encode(x) * norms, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loaded(x), sae(x), rtol=1e-5, atol=1e-5)


def test_thresholds_saved_after_last_step_are_projected(tmp_path: Path) -> None:
    # Quadratic penalty with the target above the current L0 pushes thresholds down; the last
    # optimizer step leaves them below zero, where the next training step would project them.
    # Saving right after training must not carry theta < 0: the training SAE then passes
    # pre-activations in (theta, 0) through, the saved "jumprelu" (ReLU * gate) does not.
    model = SyntheticTask(num_features=32, hidden_dim=8).build()
    sae = JumpReLUSTETrainingSAE(
        JumpReLUSTETrainingSAEConfig(
            d_in=8,
            d_sae=16,
            jumprelu_init_threshold=0.01,
            jumprelu_bandwidth=0.05,
            jumprelu_sparsity_loss_mode="quadratic",
            target_l0=12,
            l0_coefficient=1e-2,
            threshold_lr_scale=10.0,
            init_b_dec_to_mean=True,
        )
    )
    train_on_synthetic(sae, model, TrainerSettings(total_samples=3 * 256, batch_size=256, lr=1e-2))
    sae.save_inference_model(tmp_path)
    loaded = sae_lens.SAE.load_from_disk(tmp_path)
    assert (loaded.threshold >= 0).all(), loaded.threshold
    x = model.sample(256)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), sae(x), rtol=1e-5, atol=1e-5)


# ---- input checks -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_batch_stops_trainer_with_last_good_weights(
    make_sae: MakeSAE, bad: float
) -> None:
    sae = make_sae(d_in=8, d_sae=16)
    snapshots: list[dict[str, torch.Tensor]] = []

    def data() -> Iterator[torch.Tensor]:
        for _ in range(3):  # steps 0, 1, 2 are good
            yield torch.randn(32, 8)
        snapshots.append(state(sae))  # after step 2's optimizer step
        x = torch.randn(32, 8)
        x[5, 3] = bad
        yield x  # step 3
        raise AssertionError("training went on past the bad batch")

    trainer = trainer_for(sae, data(), n_steps=10, batch=32)
    with pytest.raises(NonFiniteActivationsError, match=r"step 3\b"):
        trainer.fit()
    assert len(snapshots) == 1
    for name, value in state(sae).items():
        assert torch.equal(value, snapshots[0][name]), name
    assert all(torch.isfinite(v.float()).all() for v in state(sae).values())


def test_non_finite_error_is_a_value_error() -> None:
    assert issubclass(NonFiniteActivationsError, ValueError)


def test_check_finite_off_does_not_raise(make_sae: MakeSAE, make_step_input: MakeStepInput) -> None:
    sae = make_sae(check_finite=False, normalize_to_unit_mean_square=False)
    x = torch.tensor([[float("nan"), 1.0]])
    out = sae.training_forward_pass(make_step_input(x))
    assert torch.isnan(out.losses["mse_loss"])  # the batch went through unchecked


def test_wrong_d_in_names_both_sizes(make_sae: MakeSAE, make_step_input: MakeStepInput) -> None:
    sae = make_sae()
    with pytest.raises(ValueError, match=r"d_in=5.*d_in=2"):
        sae.training_forward_pass(make_step_input(torch.randn(4, 5)))


# ---- threshold positivity and gradients ---------------------------------------------------------


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_negative_linear_threshold_is_projected_to_zero(
    make_sae: MakeSAE, make_step_input: MakeStepInput, scale: float
) -> None:
    sae = make_sae(threshold_lr_scale=scale, normalize_to_unit_mean_square=False)
    with torch.no_grad():
        sae.threshold_raw.copy_(torch.tensor([-0.5, 0.2, -0.01]))
    out = sae.training_forward_pass(make_step_input(torch.randn(64, 2)))
    torch.testing.assert_close(sae.threshold.detach(), torch.tensor([0.0, 0.2 * scale, 0.0]))
    # the forward pass used the projected thresholds: nothing at or below zero passes
    acts, pre = out.feature_acts.detach(), out.hidden_pre.detach()
    assert torch.equal(acts, pre * (pre > sae.threshold.detach()))
    assert (acts >= 0).all()


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_threshold_at_zero_still_gets_l0_gradient(
    make_sae: MakeSAE, make_step_input: MakeStepInput, scale: float
) -> None:
    eps, lam = 0.2, 0.5
    sae = make_sae(
        jumprelu_bandwidth=eps,
        jumprelu_init_threshold=0.0,
        threshold_lr_scale=scale,
        normalize_to_unit_mean_square=False,
    )
    x = torch.randn(64, 2) * 0.1
    out = sae.training_forward_pass(make_step_input(x, l0=lam))
    out.loss.backward()
    pre = out.hidden_pre.detach()
    in_window = ((pre - 0.0).abs() < eps / 2).sum(0).float()
    assert (in_window > 0).all()
    # MSE's STE term is theta * K = 0 at theta = 0; the L0 term is -(lam / eps) * mean K,
    # times the chain-rule factor threshold_lr_scale of the linear parametrization.
    expected = -lam / eps * in_window / 64 * scale
    torch.testing.assert_close(sae.threshold_raw.grad, expected)

    # and an optimizer step moves theta up from zero: the latent is not frozen there
    torch.optim.Adam(sae.parameters(), lr=1e-3).step()
    assert (sae.threshold > 0).all()


# ---- agreement with SAELens's own JumpReLU trainer ----------------------------------------------


@pytest.mark.parametrize(
    "mode",
    [
        {"jumprelu_sparsity_loss_mode": "step"},
        {"jumprelu_sparsity_loss_mode": "tanh", "jumprelu_tanh_scale": 3.0},
        {"jumprelu_sparsity_loss_mode": "quadratic", "target_l0": 4.0},
        {"jumprelu_sparsity_loss_mode": "step", "jumprelu_ste_to_input": True},
        {"jumprelu_sparsity_loss_mode": "step", "pre_act_loss_coefficient": 0.3},
    ],
    ids=["step", "tanh", "quadratic", "ste_to_input", "pre_act_loss"],
)
def test_losses_and_grads_match_sae_lens_jumprelu_trainer(
    make_sae: MakeSAE, mode: dict[str, Any]
) -> None:
    # With input_scale 1, the rectangle kernel and a linear threshold, our SAE is SAELens's.
    common = {"d_in": 8, "d_sae": 16, "jumprelu_bandwidth": 0.3, "l0_coefficient": 0.7, **mode}
    sae = make_sae(normalize_to_unit_mean_square=False, **common)
    ref = JumpReLUTrainingSAE(SAELensTrainingConfig(**common))
    randomise(sae, input_scale=1.0)
    with torch.no_grad():
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            getattr(ref, name).copy_(getattr(sae, name))
        ref.threshold.copy_(sae.threshold)

    x = torch.randn(128, 8)
    dead = torch.tensor([True, False] * 8)
    step = TrainStepInput(
        sae_in=x,
        coefficients={"l0": 0.7},
        dead_neuron_mask=dead,
        n_training_steps=0,
        is_logging_step=False,
    )
    ours, theirs = sae.training_forward_pass(step), ref.training_forward_pass(step)
    assert set(ours.losses) == set(theirs.losses)
    for name in theirs.losses:
        torch.testing.assert_close(ours.losses[name], theirs.losses[name], rtol=1e-5, atol=1e-6)
    assert ours.losses["l0_loss"].item() != 0
    ours.loss.backward()
    theirs.loss.backward()
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        torch.testing.assert_close(
            getattr(sae, name).grad, getattr(ref, name).grad, rtol=1e-4, atol=1e-6, msg=name
        )
    assert ref.threshold.grad is not None and ref.threshold.grad.abs().max() > 0
    torch.testing.assert_close(sae.threshold_raw.grad, ref.threshold.grad, rtol=1e-4, atol=1e-6)


# ---- AuxK loss on dead latents ------------------------------------------------------------------


def with_dead(x: torch.Tensor, dead: torch.Tensor | None) -> TrainStepInput:
    """The trainer's step input for batch ``x`` with ``dead`` as its dead-latent mask."""
    return TrainStepInput(
        sae_in=x,
        coefficients={"l0": 0.1},
        dead_neuron_mask=dead,
        n_training_steps=0,
        is_logging_step=False,
    )


def test_auxk_loss_matches_sae_lens_topk_aux_loss(make_sae: MakeSAE) -> None:
    # SAELens's TopK aux loss on the ReLU'd pre-activations is ours at input_scale 1.
    sae = make_sae(d_in=8, d_sae=32, normalize_to_unit_mean_square=False, auxk_loss_coefficient=0.3)
    randomise(sae, input_scale=1.0)
    ref = TopKTrainingSAE(
        TopKTrainingSAEConfig(
            d_in=8, d_sae=32, k=4, aux_loss_coefficient=0.3, rescale_acts_by_decoder_norm=False
        )
    )
    with torch.no_grad():
        ref.W_dec.copy_(sae.W_dec)
    x = torch.randn(64, 8)
    dead = torch.arange(32) % 3 == 0  # 11 dead latents, more than k_aux = d_in / 2 = 4
    step = with_dead(x, dead)
    out = sae.training_forward_pass(step)
    expected = ref.calculate_topk_aux_loss(x, out.sae_out, out.hidden_pre.relu(), dead)
    assert out.losses["auxk_loss"].item() > 0
    torch.testing.assert_close(out.losses["auxk_loss"], expected)


def test_auxk_loss_scales_down_when_few_latents_are_dead(make_sae: MakeSAE) -> None:
    sae = make_sae(d_in=8, d_sae=32, normalize_to_unit_mean_square=False, auxk_loss_coefficient=1.0)
    randomise(sae, input_scale=1.0)
    x = torch.randn(64, 8)
    dead = torch.zeros(32, dtype=torch.bool)
    dead[5] = True  # one dead latent, k_aux = 4: the loss is a quarter of its own AuxK term
    step = with_dead(x, dead)
    out = sae.training_forward_pass(step)
    with torch.no_grad():
        residual = x - out.sae_out
        recon = out.hidden_pre[:, 5:6].relu() * sae.W_dec[5]
        expected = 0.25 * (recon - residual).pow(2).sum(dim=-1).mean()
    torch.testing.assert_close(out.losses["auxk_loss"], expected)


def test_auxk_loss_trains_only_the_dead_latents(make_sae: MakeSAE) -> None:
    sae = make_sae(d_in=8, d_sae=32, auxk_loss_coefficient=1.0)
    randomise(sae)
    dead = torch.arange(32) % 4 == 0
    sae.training_forward_pass(with_dead(torch.randn(64, 8), dead)).losses["auxk_loss"].backward()
    # a dead latent learns where it is among a token's k_aux largest positive pre-activations
    assert sae.W_dec.grad[dead].abs().sum(dim=-1).gt(0).sum() >= 4
    assert sae.W_enc.grad[:, dead].abs().sum(dim=0).gt(0).sum() >= 4
    assert sae.W_dec.grad[~dead].eq(0).all() and sae.W_enc.grad[:, ~dead].eq(0).all()
    assert sae.threshold_raw.grad is None or sae.threshold_raw.grad.eq(0).all()


def test_auxk_loss_is_zero_without_dead_latents(make_sae: MakeSAE) -> None:
    sae = make_sae(d_in=8, d_sae=32, auxk_loss_coefficient=1.0)
    randomise(sae)
    for dead in (None, torch.zeros(32, dtype=torch.bool)):
        assert (
            sae.training_forward_pass(with_dead(torch.randn(64, 8), dead))
            .losses["auxk_loss"]
            .item()
            == 0
        )


# ---- threshold ceiling --------------------------------------------------------------------------


def test_threshold_ceiling_is_a_moving_average_never_below_the_batch_max(
    make_sae: MakeSAE, make_step_input: MakeStepInput
) -> None:
    sae = make_sae(d_in=4, d_sae=8, threshold_ceiling_decay=0.75)
    randomise(sae)
    assert torch.isinf(sae.threshold_ceiling).all()  # no ceiling before the first batch
    torch.manual_seed(3)
    first, second = torch.randn(16, 4), torch.randn(16, 4) * 1.5
    sae.training_forward_pass(make_step_input(first))  # sets input_scale on this batch
    with torch.no_grad():
        max_first = sae.encode_with_hidden_pre(first)[1].amax(dim=0)
        max_second = sae.encode_with_hidden_pre(second)[1].amax(dim=0)
    torch.testing.assert_close(sae.threshold_ceiling, max_first)
    sae.training_forward_pass(make_step_input(second))
    average = 0.75 * max_first + 0.25 * max_second
    # both cases occur: latents whose average stays above this batch's max, and the others
    assert (average > max_second).any() and (average < max_second).any()
    torch.testing.assert_close(sae.threshold_ceiling, average.maximum(max_second))


@pytest.mark.parametrize("params", PARAMETRIZATIONS)
def test_thresholds_are_pulled_under_the_ceiling(
    make_sae: MakeSAE, make_step_input: MakeStepInput, params: dict[str, Any]
) -> None:
    # A threshold above every input is the dead latent the ceiling exists for.
    sae = make_sae(d_in=4, d_sae=8, **params)
    randomise(sae)
    sae.set_threshold(torch.full((8,), 50.0))
    x = torch.randn(64, 4)
    sae.training_forward_pass(make_step_input(x))
    sae.project_constraints()
    ceiling = sae.threshold_ceiling
    assert (ceiling > 0).any()
    expected = ceiling.clamp(min=0.0 if params.get("threshold_parametrization") != "log" else 1e-30)
    torch.testing.assert_close(sae.threshold, expected, rtol=1e-6, atol=0)
    with torch.no_grad():  # latents with a positive maximum reach their threshold again
        reach = sae.encode_with_hidden_pre(x)[1].amax(dim=0) >= sae.threshold - 1e-5
    assert reach[ceiling > 0].all()


def test_no_ceiling_leaves_thresholds_alone(
    make_sae: MakeSAE, make_step_input: MakeStepInput
) -> None:
    sae = make_sae(d_in=4, d_sae=8, threshold_ceiling_decay=None)
    sae.set_threshold(torch.full((8,), 50.0))
    sae.training_forward_pass(make_step_input(torch.randn(64, 4)))
    sae.project_constraints()
    assert (sae.threshold == 50.0).all()
    assert torch.isinf(sae.threshold_ceiling).all()


def test_legacy_log_lambda_checkpoint_keeps_its_lambda(make_sae: MakeSAE, tmp_path: Path) -> None:
    # Checkpoints before the signed controller stored log(lambda); loading keeps lambda.
    sae = make_sae(d_in=4, d_sae=8, target_l0=2, l0_coefficient=0.5)
    state = {k: v for k, v in sae.state_dict().items() if k not in ("l0_coefficient_integral",)}
    state.pop("threshold_ceiling")
    state["log_l0_coefficient"] = torch.tensor(math.log(0.125))
    sae.process_state_dict_for_loading(state)
    assert state["l0_coefficient_integral"].item() == pytest.approx(0.25)  # 0.125 / 0.5
    assert torch.isinf(state["threshold_ceiling"]).all()


# ---- training behaviour (slow) ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("target_l0", [4.0, 16.0])
def test_target_mode_reaches_target_l0(target_l0: float) -> None:
    """Held-out L0 within +-10% of target_l0 after 300 steps of 1024 (~3 s each)."""
    model = SyntheticTask().build()  # defaults: 512 true features, d_in = 64
    sae = JumpReLUSTETrainingSAE(
        JumpReLUSTETrainingSAEConfig(
            d_in=64,
            d_sae=128,
            target_l0=target_l0,
            l0_coefficient=1e-3,
            threshold_lr_scale=10.0,
            init_b_dec_to_mean=True,
        )
    )
    train_on_synthetic(
        sae, model, TrainerSettings(total_samples=300 * 1024, batch_size=1024, lr=3e-4)
    )
    scores = score_on_synthetic(sae, model, n_samples=20_000)
    assert scores.l0 == pytest.approx(target_l0, rel=0.10)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "low", "high"),
    [
        ({"jumprelu_sparsity_loss_mode": "step"}, 1e-3, 3e-2),
        ({"jumprelu_sparsity_loss_mode": "tanh"}, 1e-3, 3e-2),
        ({"jumprelu_sparsity_loss_mode": "quadratic", "target_l0": 4.0}, 1e-4, 1e-2),
    ],
    ids=["step", "tanh", "quadratic"],
)
def test_larger_coefficient_gives_lower_l0(mode: dict[str, Any], low: float, high: float) -> None:
    task = SyntheticTask(num_features=128, hidden_dim=32)
    model = task.build()
    l0s = []
    for coefficient in (low, high):
        torch.manual_seed(0)
        sae = JumpReLUSTETrainingSAE(
            JumpReLUSTETrainingSAEConfig(
                d_in=32,
                d_sae=64,
                l0_coefficient=coefficient,
                threshold_lr_scale=10.0,
                jumprelu_bandwidth=0.01,
                init_b_dec_to_mean=True,
                **mode,
            )
        )
        train_on_synthetic(
            sae, model, TrainerSettings(total_samples=100 * 512, batch_size=512, lr=1e-3)
        )
        l0s.append(score_on_synthetic(sae, model, n_samples=8192).l0)
    assert l0s[1] < 0.8 * l0s[0], l0s
