"""Gradient control inside SAELens's ``SAETrainer``: its hard-coded ``clip_grad_norm_(.., 1.0)``
is undone and ``max_grad_norm`` applied instead; decoder rows kept at unit norm."""

import copy
from collections.abc import Callable, Iterator

import pytest
import torch
from sae_lens.saes.sae import TrainStepInput
from sae_lens.training.sae_trainer import SAETrainer

from sae_lens_jumprelu import JumpReLUSTETrainingSAE
from sae_lens_jumprelu.grad_control import remove_parallel_component
from sae_lens_jumprelu.training.settings import TrainerSettings

MakeSAE = Callable[..., JumpReLUSTETrainingSAE]
MakeStepInput = Callable[..., TrainStepInput]
MakeBatches = Callable[[list[torch.Tensor]], Iterator[torch.Tensor]]

LR = 1e-2
BATCH = 64
L0_COEFFICIENT = 3.0  # with bandwidth 0.05 the threshold gradient alone has norm >> 1


def test_remove_parallel_component_hand_computed() -> None:
    # unit row (0.6, 0.8); g . d = 2.2; g - 2.2 d = (1 - 1.32, 2 - 1.76)
    grad = torch.tensor([[1.0, 2.0], [0.0, 5.0]])
    rows = torch.tensor([[3.0, 4.0], [2.0, 0.0]])
    remove_parallel_component(grad, rows)
    torch.testing.assert_close(grad, torch.tensor([[-0.32, 0.24], [0.0, 5.0]]))


def make_batches_with_varying_scale() -> list[torch.Tensor]:
    # Different scales per step so that gradient norms (and SAELens's clip factors) differ from
    # step to step: Adam is nearly invariant to a constant rescaling, not to a varying one.
    return [torch.randn(BATCH, 8) * s + 1.0 for s in (1.0, 3.0, 0.5, 2.0)]


def reference_adam(
    sae: JumpReLUSTETrainingSAE,
    xs: list[torch.Tensor],
    make_step_input: MakeStepInput,
    clip: float | None,
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Plain torch Adam (same lr and betas as the trainer) on copies of the parameters that no
    gradient guard knows about, fed the SAE's own gradients, optionally clipped to ``clip``,
    with the SAE's constraints projected after each step as the trainer does."""
    names = [name for name, _ in sae.named_parameters()]
    shadows = [p.detach().clone().requires_grad_(True) for p in sae.parameters()]
    opt = torch.optim.Adam(shadows, lr=LR, betas=(0.9, 0.999))
    norms = []
    for step, x in enumerate(xs):
        sae.zero_grad()
        sae.training_forward_pass(make_step_input(x, step=step, l0=L0_COEFFICIENT)).loss.backward()
        for shadow, p in zip(shadows, sae.parameters(), strict=True):
            shadow.grad = p.grad.detach().clone()
        norms.append(float(torch.nn.utils.get_total_norm([s.grad for s in shadows])))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(shadows, clip)
        opt.step()
        with torch.no_grad():
            for shadow, p in zip(shadows, sae.parameters(), strict=True):
                p.copy_(shadow)
            # The trainer projects after each step (theta under its ceiling, theta >= 0), in
            # place, leaving Adam's state alone.
            sae.project_constraints()
            for shadow, p in zip(shadows, sae.parameters(), strict=True):
                shadow.copy_(p)
    return {name: s.detach() for name, s in zip(names, shadows, strict=True)}, norms


def train_with_sae_lens(
    sae: JumpReLUSTETrainingSAE, xs: list[torch.Tensor], batches: MakeBatches
) -> None:
    settings = TrainerSettings(total_samples=len(xs) * BATCH, batch_size=BATCH, lr=LR)
    SAETrainer(cfg=settings.to_trainer_config(), sae=sae, data_provider=batches(xs)).fit()


def assert_params_equal(sae: JumpReLUSTETrainingSAE, expected: dict[str, torch.Tensor]) -> None:
    for name, p in sae.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], rtol=1e-5, atol=1e-6, msg=name)


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[name] - b[name]).abs().max().item() for name in a)


@pytest.mark.parametrize("max_grad_norm", [None, 0.5])
def test_trainer_step_equals_plain_adam_with_our_clipping(
    make_sae: MakeSAE,
    make_step_input: MakeStepInput,
    make_batches: MakeBatches,
    max_grad_norm: float | None,
) -> None:
    sae = make_sae(
        d_in=8,
        d_sae=16,
        jumprelu_bandwidth=0.05,
        jumprelu_init_threshold=0.02,
        l0_coefficient=L0_COEFFICIENT,
        max_grad_norm=max_grad_norm,
    )
    xs = make_batches_with_varying_scale()
    expected, norms = reference_adam(copy.deepcopy(sae), xs, make_step_input, clip=max_grad_norm)
    sae_lens_clip, _ = reference_adam(copy.deepcopy(sae), xs, make_step_input, clip=1.0)

    assert min(norms) > 2.0, norms  # SAELens's clip at 1.0 bites on every step
    # the test can tell the two apart: SAELens's clip changes the trajectory by far more
    # than the tolerance below
    assert max_difference(expected, sae_lens_clip) > 1e-3

    train_with_sae_lens(sae, xs, make_batches)
    assert_params_equal(sae, expected)


def test_unclipped_gradients_are_left_alone(
    make_sae: MakeSAE, make_step_input: MakeStepInput, make_batches: MakeBatches
) -> None:
    # Gradient norm < 1: neither SAELens's clip nor ours changes anything.
    sae = make_sae(
        d_in=8,
        d_sae=16,
        jumprelu_bandwidth=0.05,
        l0_coefficient=1e-4,
        max_grad_norm=1.0,  # SAELens's own value
        normalize_to_unit_mean_square=False,
        # the ceiling would pull theta into the inputs' window, where its gradient is ~1/eps
        threshold_ceiling_decay=None,
    )
    xs = [torch.randn(BATCH, 8) * 0.1 for _ in range(3)]
    expected, norms = reference_adam(copy.deepcopy(sae), xs, make_step_input, clip=None)
    assert max(norms) < 1.0, norms
    train_with_sae_lens(sae, xs, make_batches)
    assert_params_equal(sae, expected)


def test_other_optimizers_are_not_touched(
    make_sae: MakeSAE, make_step_input: MakeStepInput
) -> None:
    # The optimizer pre-hook is global; a model that is not an SAE keeps its own clipping.
    sae = make_sae()
    sae.training_forward_pass(make_step_input(torch.randn(4, 2))).loss.backward()  # guard active
    weight = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    weight.grad = torch.tensor([30.0, 40.0])
    torch.nn.utils.clip_grad_norm_([weight], 1.0)  # grad -> (0.6, 0.8)
    torch.optim.SGD([weight], lr=1.0).step()
    torch.testing.assert_close(weight.detach(), torch.tensor([2.4, 3.2]))


# ---- unit-norm decoder ---------------------------------------------------------------------------


def test_unit_norm_decoder_gradient_is_projected(
    make_sae: MakeSAE, make_step_input: MakeStepInput
) -> None:
    sae = make_sae(d_in=8, d_sae=16, decoder_unit_norm=True, jumprelu_init_threshold=0.01)
    twin = copy.deepcopy(sae)
    twin.cfg = copy.deepcopy(sae.cfg)
    twin.cfg.decoder_unit_norm = False
    with torch.no_grad():  # start both from unit rows, so only the gradient treatment differs
        for model in (sae, twin):
            model.W_dec.div_(model.W_dec.norm(dim=-1, keepdim=True))

    x = torch.randn(BATCH, 8)
    for model in (sae, twin):
        model.training_forward_pass(make_step_input(x)).loss.backward()
    raw = twin.W_dec.grad
    rows = sae.W_dec.detach()
    assert (raw * rows).sum(-1).abs().max() > 1e-3  # there was a parallel component to remove
    torch.testing.assert_close((sae.W_dec.grad * rows).sum(-1), torch.zeros(16), rtol=0, atol=1e-7)
    torch.testing.assert_close(sae.W_dec.grad, raw - (raw * rows).sum(-1, keepdim=True) * rows)


def test_unit_norm_decoder_rows_after_training_step(
    make_sae: MakeSAE, make_step_input: MakeStepInput, make_batches: MakeBatches
) -> None:
    sae = make_sae(d_in=8, d_sae=16, decoder_unit_norm=True, jumprelu_init_threshold=0.01)
    xs = make_batches_with_varying_scale()[:2]
    train_with_sae_lens(sae, xs, make_batches)
    # renormalised by the optimizer post-step hook: even the last step leaves unit rows
    torch.testing.assert_close(sae.W_dec.detach().norm(dim=-1), torch.ones(16))
    # and a forward pass decodes with the renormalised rows
    out = sae.training_forward_pass(make_step_input(torch.randn(BATCH, 8), step=2))
    expected = (
        out.feature_acts.detach() @ sae.W_dec.detach() + sae.b_dec.detach()
    ) / sae.input_scale
    torch.testing.assert_close(out.sae_out.detach(), expected)
