"""The sparse training step: same losses and gradients as the dense step for every option,
the products it is built from, when ``auto`` takes it, and training inside SAELens's trainer."""

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput
from sae_lens.training.sae_trainer import SAETrainer

from sae_lens_jumprelu import JumpReLUSTETrainingSAE, JumpReLUSTETrainingSAEConfig
from sae_lens_jumprelu import sparse_step as sparse_step_module
from sae_lens_jumprelu.data.synthetic import TrainerSettings
from sae_lens_jumprelu.sparse_step import EntryPattern, sparse_jumprelu
from sae_lens_jumprelu.ste import KERNEL_HALF_WIDTHS, jumprelu
from sae_lens_jumprelu.step_forward import SPARSE_STEP_MAX_DENSITY

D_IN, D_SAE, BATCH, L0 = 16, 64, 96, 8
TOLERANCE = 1e-5  # max |sparse - dense| / max |dense|, per tensor, in float32

STRATEGIES = {
    "step": {"jumprelu_sparsity_loss_mode": "step"},
    "tanh": {"jumprelu_sparsity_loss_mode": "tanh", "pre_act_loss_coefficient": 0.3},
    "quadratic": {"jumprelu_sparsity_loss_mode": "quadratic", "target_l0": L0},
    "target": {"jumprelu_sparsity_loss_mode": "step", "target_l0": L0},
    "auxk": {"jumprelu_sparsity_loss_mode": "step", "auxk_loss_coefficient": 0.5},
}


def make_pair(**overrides: Any) -> tuple[JumpReLUSTETrainingSAE, JumpReLUSTETrainingSAE]:
    """A dense-step and a sparse-step SAE with the same weights; thresholds at each latent's
    (1 - L0/d_sae) quantile and a bandwidth wide enough that many entries sit in the window."""
    sparse_mode = overrides.pop("sparse_step", "on")
    fields = {"d_in": D_IN, "d_sae": D_SAE, "jumprelu_bandwidth": 0.2, **overrides}
    torch.manual_seed(0)
    dense = JumpReLUSTETrainingSAE(JumpReLUSTETrainingSAEConfig(**fields, sparse_step="off"))
    sparse = JumpReLUSTETrainingSAE(JumpReLUSTETrainingSAEConfig(**fields, sparse_step=sparse_mode))
    with torch.no_grad():
        dense.W_dec.mul_(torch.rand(D_SAE, 1) + 0.5)  # unequal decoder norms (tanh penalty)
        dense.b_enc.copy_(torch.randn(D_SAE) * 0.1)
        dense._prepare_step(batch())
        x_enc = dense._normalised_input(batch()) - dense.b_dec * dense.cfg.apply_b_dec_to_input
        hidden_pre = x_enc @ dense.W_enc + dense.b_enc
        dense.set_threshold(hidden_pre.float().quantile(1 - L0 / D_SAE, dim=0).clamp(min=0.01))
    sparse.load_state_dict(dense.state_dict())
    return dense, sparse


def batch() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, D_IN, generator=generator) * 2 + 1


def step_input(dead: torch.Tensor | None = None) -> TrainStepInput:
    return TrainStepInput(
        sae_in=batch(),
        coefficients={"l0": 0.5},
        dead_neuron_mask=dead,
        n_training_steps=0,
        is_logging_step=False,
    )


def loss_and_grads(
    sae: JumpReLUSTETrainingSAE, dead: torch.Tensor | None = None
) -> tuple[TrainStepOutput, dict[str, torch.Tensor]]:
    sae.zero_grad()
    out = sae.training_forward_pass(step_input(dead))
    out.loss.backward()
    return out, {name: p.grad.clone() for name, p in sae.named_parameters() if p.grad is not None}


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-30)).item()


def assert_same_step(
    dense: JumpReLUSTETrainingSAE,
    sparse: JumpReLUSTETrainingSAE,
    dead: torch.Tensor | None = None,
    tolerance: float = TOLERANCE,
) -> tuple[TrainStepOutput, TrainStepOutput]:
    dense_out, dense_grads = loss_and_grads(dense, dead)
    sparse_out, sparse_grads = loss_and_grads(sparse, dead)
    assert not dense_out.feature_acts.is_sparse and sparse_out.feature_acts.is_sparse
    assert set(sparse_grads) == set(dense_grads) == {n for n, _ in dense.named_parameters()}
    assert set(sparse_out.losses) == set(dense_out.losses)
    for name in dense_out.losses:
        diff = relative_difference(sparse_out.losses[name], dense_out.losses[name])
        assert diff <= tolerance, (name, diff)
    for name, grad in dense_grads.items():
        assert grad.abs().max() > 0, f"{name}: the test needs a nonzero gradient"
        diff = relative_difference(sparse_grads[name], grad)
        assert diff <= tolerance, (name, diff)
    return dense_out, sparse_out


@pytest.mark.parametrize("parametrization", ["linear", "log"])
@pytest.mark.parametrize("ste_to_input", [False, True])
@pytest.mark.parametrize("kernel", ["rectangle", "triangle"])
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_loss_and_gradients_equal_dense_step(
    strategy: str, kernel: str, ste_to_input: bool, parametrization: str
) -> None:
    dense, sparse = make_pair(
        **STRATEGIES[strategy],
        jumprelu_kernel=kernel,
        jumprelu_ste_to_input=ste_to_input,
        threshold_parametrization=parametrization,
    )
    dead = torch.arange(D_SAE) % 5 == 0
    dense_out, sparse_out = assert_same_step(dense, sparse, dead)

    # The problem exercises every kind of entry: active, in the window below the threshold.
    hidden_pre = dense_out.hidden_pre.detach()
    gap = hidden_pre - dense.threshold.detach()
    in_window = gap.abs() < KERNEL_HALF_WIDTHS[kernel] * dense.cfg.jumprelu_bandwidth
    assert (in_window & (gap <= 0)).sum() > 20 and (gap > 0).sum() > 20
    assert torch.equal(sparse_out.feature_acts.to_dense(), dense_out.feature_acts.detach())
    assert sparse_out.metrics["l0"] == dense_out.metrics["l0"]
    for aux in ("pre_act_loss", "auxk_loss"):
        if aux in dense_out.losses:
            assert dense_out.losses[aux] > 0


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"apply_b_dec_to_input": True}, id="b_dec-to-input"),
        pytest.param({"decoder_unit_norm": True}, id="unit-norm-decoder"),
        pytest.param({"normalize_to_unit_mean_square": False}, id="no-normalisation"),
        pytest.param({"jumprelu_sparsity_loss_mode": "tanh"}, id="tanh-no-dead-latents"),
    ],
)
def test_other_options_equal_dense_step(overrides: dict[str, Any]) -> None:
    dense, sparse = make_pair(**overrides)
    assert_same_step(dense, sparse)


def test_blocks_of_the_encoder_matmul_give_the_same_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Chunks of 40 tokens x slices of 7 latents: partial chunks and slices at both ends, so
    # entries come out of order and must be sorted back; transposes in partial slices too.
    monkeypatch.setattr(sparse_step_module, "CPU_ROW_CHUNK", 40)
    monkeypatch.setattr(sparse_step_module, "CPU_BLOCK_ELEMENTS", 7 * 40)
    monkeypatch.setattr(sparse_step_module, "CPU_TRANSPOSE_SLICE", 5)
    dense, sparse = make_pair()
    assert_same_step(dense, sparse)


def test_no_entries_at_all() -> None:
    dense, sparse = make_pair()
    for sae in (dense, sparse):
        sae.set_threshold(torch.full((D_SAE,), 1e3))
    dense_out, sparse_out = loss_and_grads(dense)[0], loss_and_grads(sparse)[0]
    assert sparse_out.feature_acts._nnz() == 0 and sparse_out.hidden_pre._nnz() == 0
    torch.testing.assert_close(sparse_out.loss, dense_out.loss)
    assert sparse.W_dec.grad is not None and not sparse.W_dec.grad.any()


def test_sparse_outputs_hold_the_dense_values_at_their_entries() -> None:
    dense, sparse = make_pair()
    dense_out, sparse_out = loss_and_grads(dense)[0], loss_and_grads(sparse)[0]
    pre = sparse_out.hidden_pre.coalesce()
    rows, cols = pre.indices()
    torch.testing.assert_close(pre.values(), dense_out.hidden_pre.detach()[rows, cols])
    # Every active entry and every entry in a threshold window is kept; few others are.
    kept = torch.zeros(BATCH, D_SAE, dtype=torch.bool)
    kept[rows, cols] = True
    threshold = dense.threshold.detach()
    needed = dense_out.hidden_pre.detach() > threshold - 0.5 * dense.cfg.jumprelu_bandwidth
    assert torch.equal(kept & needed, needed)
    assert kept.sum() < 1.1 * needed.sum()


def saved_for_backward(loss: torch.Tensor) -> Iterator[torch.Tensor]:
    """Every tensor the autograd graph of ``loss`` keeps for its backward pass."""
    seen, stack = set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        saved = [getattr(node, name) for name in dir(node) if name.startswith("_saved_")]
        saved += list(getattr(node, "saved_tensors", ()))  # custom autograd Functions
        for value in saved:
            values = value if isinstance(value, tuple | list) else (value,)
            yield from (v for v in values if isinstance(v, torch.Tensor))
        stack.extend(next_node for next_node, _ in node.next_functions)


def test_no_batch_by_d_sae_tensor_is_kept_for_backward() -> None:
    dense, sparse = make_pair(jumprelu_sparsity_loss_mode="tanh", jumprelu_bandwidth=0.01)
    dense_loss = dense.training_forward_pass(step_input()).loss
    sparse_loss = sparse.training_forward_pass(step_input()).loss
    assert max(t.numel() for t in saved_for_backward(dense_loss)) >= BATCH * D_SAE
    assert max(t.numel() for t in saved_for_backward(sparse_loss)) < BATCH * D_SAE / 2


def test_bfloat16_sae_is_close_to_dense_step() -> None:
    dense, sparse = make_pair(dtype="bfloat16")
    dense_out, dense_grads = loss_and_grads(dense)
    sparse_out, sparse_grads = loss_and_grads(sparse)
    assert sparse.threshold_raw.grad.dtype == torch.float32
    assert relative_difference(sparse_out.loss, dense_out.loss) < 1e-2
    for name, grad in dense_grads.items():
        assert sparse_grads[name].dtype == grad.dtype
        assert relative_difference(sparse_grads[name], grad) < 5e-2, name


def test_autocast_runs_the_encoder_matmul_in_bfloat16_like_the_dense_step() -> None:
    dense, sparse = make_pair()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dense_out = dense.training_forward_pass(step_input())
        sparse_out = sparse.training_forward_pass(step_input())
    dense_out.loss.backward()
    sparse_out.loss.backward()
    # The same bfloat16 pre-activations: the kept entries hold exactly the dense values.
    pre = sparse_out.hidden_pre.coalesce()
    rows, cols = pre.indices()
    assert torch.equal(pre.values(), dense_out.hidden_pre.detach()[rows, cols])
    assert relative_difference(sparse_out.loss, dense_out.loss) < 1e-2
    assert relative_difference(sparse.W_enc.grad, dense.W_enc.grad) < 5e-2


# ---- the products on entries --------------------------------------------------------------------


def test_entry_products_hand_computed() -> None:
    # Two tokens, three latents: entries (0, 1), (1, 0), (1, 2).
    pattern = EntryPattern.from_entries(torch.tensor([0, 1, 1]), torch.tensor([1, 0, 2]), 2, 3)
    weights = torch.tensor([2.0, 3.0, -1.0])
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # one row per latent
    # token 0: 2 * row 1; token 1: 3 * row 0 - row 2
    expected = torch.tensor([[0.0, 2.0], [2.0, -1.0]])
    assert torch.equal(pattern.token_sums(table, weights), expected)
    tokens = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # one row per token
    # latent 0: 3 * token 1; latent 1: 2 * token 0; latent 2: -token 1
    expected = torch.tensor([[9.0, 12.0], [2.0, 4.0], [-3.0, -4.0]])
    assert torch.equal(pattern.latent_sums(tokens, weights), expected)
    # (0, 1): [1, 2] . [0, 1]; (1, 0): [3, 4] . [1, 0]; (1, 2): [3, 4] . [1, 1]
    assert torch.equal(pattern.entry_dots(tokens, table), torch.tensor([2.0, 3.0, 7.0]))


def test_sparse_jumprelu_gradients_match_dense_autograd() -> None:
    torch.manual_seed(0)
    x = torch.randn(32, 8)
    params = {
        "W_enc": torch.randn(8, 40),
        "b_enc": torch.randn(40) * 0.1,
        "b_dec": torch.randn(8) * 0.1,
        "threshold": torch.rand(40) + 1.0,
        "W_dec": torch.randn(40, 8),
    }
    sparse = {k: v.clone().requires_grad_() for k, v in params.items()}
    dense = {k: v.clone().requires_grad_() for k, v in params.items()}
    out = sparse_jumprelu(x, *sparse.values(), bandwidth=0.5, kernel="triangle", ste_to_input=True)
    (out.recon.pow(2).sum() + out.hidden_pre.sum()).backward()

    pre = (x - dense["b_dec"]) @ dense["W_enc"] + dense["b_enc"]
    acts = jumprelu(pre, dense["threshold"], 0.5, "triangle", True)
    kept = torch.zeros_like(pre, dtype=torch.bool)
    kept[out.pattern.rows, out.pattern.cols] = True
    ((acts @ dense["W_dec"]).pow(2).sum() + (pre * kept).sum()).backward()
    for name in params:
        assert relative_difference(sparse[name].grad, dense[name].grad) <= TOLERANCE, name
    # every latent's batch maximum, also of latents with no entry kept
    assert not out.latent_max.requires_grad
    assert relative_difference(out.latent_max, pre.detach().amax(dim=0)) <= TOLERANCE


def test_sparse_and_dense_steps_follow_the_same_threshold_ceiling() -> None:
    dense, sparse = make_pair()
    for sae in (dense, sparse):
        sae.training_forward_pass(step_input())
    assert torch.isfinite(dense.threshold_ceiling).all()
    assert relative_difference(sparse.threshold_ceiling, dense.threshold_ceiling) <= TOLERANCE


# ---- when the sparse step runs ------------------------------------------------------------------


def test_auto_starts_dense_then_follows_the_measured_density() -> None:
    _, sae = make_pair(sparse_step="auto", jumprelu_bandwidth=1e-3)
    with torch.no_grad():
        hidden_pre = sae._normalised_input(batch()) @ sae.W_enc + sae.b_enc
        sae.set_threshold(hidden_pre.quantile(1 - SPARSE_STEP_MAX_DENSITY / 4, dim=0))
    first = sae.training_forward_pass(step_input())
    second = sae.training_forward_pass(step_input())
    assert not first.feature_acts.is_sparse  # no density measured yet
    assert second.feature_acts.is_sparse
    sae.set_threshold(torch.zeros(D_SAE))  # about half the latents fire
    assert sae.training_forward_pass(step_input()).feature_acts.is_sparse
    assert not sae.training_forward_pass(step_input()).feature_acts.is_sparse


def test_off_never_takes_the_sparse_step() -> None:
    dense, _ = make_pair()
    for _ in range(2):
        assert not dense.training_forward_pass(step_input()).feature_acts.is_sparse


def test_hooks_on_the_activations_force_the_dense_step() -> None:
    _, sparse = make_pair()
    sparse.hook_sae_acts_post.add_hook(lambda acts, hook: acts * 2)
    with pytest.raises(ValueError, match="sparse_step='on'.*hook_sae_acts_post"):
        sparse.training_forward_pass(step_input())
    sparse.cfg.sparse_step = "auto"
    sparse.step_density = 0.0
    out = sparse.training_forward_pass(step_input())
    assert not out.feature_acts.is_sparse


def test_input_that_requires_grad_forces_the_dense_step() -> None:
    _, sparse = make_pair(sparse_step="auto")
    sparse.step_density = 0.0
    x = batch().requires_grad_()
    out = sparse.training_forward_pass(
        TrainStepInput(
            sae_in=x,
            coefficients={"l0": 0.5},
            dead_neuron_mask=None,
            n_training_steps=0,
            is_logging_step=False,
        )
    )
    assert not out.feature_acts.is_sparse


def test_bad_sparse_step_value_names_the_field() -> None:
    with pytest.raises(ValueError, match="sparse_step"):
        JumpReLUSTETrainingSAEConfig(d_in=2, d_sae=3, sparse_step="fast")  # type: ignore[arg-type]


def test_thread_count_is_restored() -> None:
    _, sparse = make_pair()
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = sparse.training_forward_pass(step_input())
        assert torch.get_num_threads() == 2
        out.loss.backward()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


# ---- inside SAELens's trainer -------------------------------------------------------------------


def train(sae: JumpReLUSTETrainingSAE, xs: list[torch.Tensor]) -> SAETrainer[Any, Any]:
    settings = TrainerSettings(total_samples=len(xs) * BATCH, batch_size=BATCH, lr=1e-2)
    data: Iterator[torch.Tensor] = iter(xs)
    trainer = SAETrainer(cfg=settings.to_trainer_config(), sae=sae, data_provider=data)
    for x in xs:
        trainer.step(x)
        trainer.n_training_steps += 1
    return trainer


@pytest.mark.parametrize("overrides", [{}, {"decoder_unit_norm": True, "target_l0": 6}])
def test_trainer_steps_match_dense_steps(overrides: dict[str, Any]) -> None:
    dense, sparse = make_pair(**overrides)
    xs = [batch() + 0.1 * i for i in range(4)]
    dense_trainer, sparse_trainer = train(dense, xs), train(sparse, xs)
    assert torch.equal(sparse_trainer.act_freq_scores, dense_trainer.act_freq_scores)
    for (name, p_dense), p_sparse in zip(
        dense.named_parameters(), sparse.parameters(), strict=True
    ):
        torch.testing.assert_close(p_sparse, p_dense, rtol=1e-4, atol=1e-6, msg=name)
    if dense.cfg.decoder_unit_norm:
        torch.testing.assert_close(sparse.W_dec.norm(dim=-1), torch.ones(D_SAE))


def test_trainer_logs_a_sparse_step() -> None:
    _, sparse = make_pair()
    trainer = train(sparse, [batch()])
    output = sparse.training_forward_pass(step_input())
    logged = trainer.build_train_step_log_dict(output, n_training_samples=BATCH)
    assert logged["metrics/l0"] == pytest.approx(output.metrics["l0"].item())
