"""Gradient surgery between backward and the optimizer step, inside SAELens's own trainer.

SAELens's ``SAETrainer`` calls ``clip_grad_norm_(sae.parameters(), 1.0)`` between ``backward`` and
``optimizer.step()``, with no setting to change it. The threshold's STE gradient scales with
lambda/eps, so once the sparsity term dominates, that clip shrinks every other gradient by a factor
that changes from step to step; this is one cause of SAELens's coefficient saturating (#719).

``GradientGuard`` fixes that without forking the trainer:

1. a post-accumulate-grad hook on each parameter runs when its gradient is final: in
   data-parallel training it first averages the gradient over ranks (``reduce_grad``), so
   everything below sees the global batch's gradient; for ``W_dec`` it then removes the
   component parallel to each row (paper: unit-norm decoder rows); then it records the
   gradient's norm;
2. a global optimizer step pre-hook (``torch.optim.optimizer.register_optimizer_step_pre_hook``)
   runs inside ``optimizer.step()``, after the trainer's clip: it rescales the gradients back to
   the recorded norms (a no-op when nothing clipped them) and applies ``max_grad_norm`` instead;
3. a global optimizer step post-hook calls the SAE's projection (theta >= 0, unit-norm decoder
   rows) straight after the step, so no step, the last included, leaves them violated.
"""

import weakref
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)
from torch.utils.hooks import RemovableHandle

_GUARDS: "weakref.WeakSet[GradientGuard]" = weakref.WeakSet()
_HOOKS: list[RemovableHandle] = []


def remove_parallel_component(grad: Tensor, rows: Tensor) -> None:
    """In place: ``grad_i -= (grad_i . d_i) d_i`` with ``d_i`` the unit-normalised rows."""
    unit = rows / rows.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    grad.sub_((grad * unit).sum(dim=-1, keepdim=True) * unit)


class GradientGuard:
    """Per-SAE gradient bookkeeping; see the module docstring."""

    def __init__(self, max_grad_norm: float | None, after_step: Callable[[], None]):
        self.max_grad_norm = max_grad_norm
        self.after_step = after_step
        self.unit_norm_decoder: nn.Parameter | None = None
        self.reduce_grad: Callable[[Tensor], object] | None = None
        """In place, e.g. the average over data-parallel ranks; None: single process."""
        self._handles: dict[int, tuple[nn.Parameter, RemovableHandle]] = {}
        self._norms: dict[int, tuple[nn.Parameter, Tensor]] = {}
        _GUARDS.add(self)
        _ensure_hooks()

    def attach(
        self, params: Iterable[nn.Parameter], unit_norm_decoder: nn.Parameter | None
    ) -> None:
        """Hook every parameter not hooked yet (loading with ``assign=True`` replaces them)."""
        self.unit_norm_decoder = unit_norm_decoder
        for param in params:
            if id(param) in self._handles and self._handles[id(param)][0] is param:
                continue
            self._handles[id(param)] = (
                param,
                param.register_post_accumulate_grad_hook(self._on_grad),
            )
        self._norms.clear()

    def owns(self, optimizer: torch.optim.Optimizer) -> bool:
        return any(
            id(p) in self._handles and self._handles[id(p)][0] is p
            for group in optimizer.param_groups
            for p in group["params"]
        )

    def _on_grad(self, param: Tensor) -> None:
        assert param.grad is not None
        if self.reduce_grad is not None:
            self.reduce_grad(param.grad)
        if param is self.unit_norm_decoder:
            remove_parallel_component(param.grad, param.detach())
        self._norms[id(param)] = (param, torch.linalg.vector_norm(param.grad.float()))  # type: ignore[assignment]

    @torch.no_grad()
    def restore(self, optimizer: torch.optim.Optimizer) -> None:
        """Undo any uniform rescaling since backward, then apply ``max_grad_norm``."""
        owned = [
            (p, norm)
            for group in optimizer.param_groups
            for p in group["params"]
            if id(p) in self._norms and self._norms[id(p)][0] is p and p.grad is not None
            for norm in [self._norms[id(p)][1]]
        ]
        if not owned:
            return
        recorded = torch.linalg.vector_norm(torch.stack([norm for _, norm in owned]))
        current = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.grad.float()) for p, _ in owned])  # type: ignore[union-attr]
        )
        # Identical computations give a ratio of 1 up to rounding: leave such gradients alone.
        ratio = recorded / current.clamp(min=1e-30)
        factor = torch.where((ratio - 1).abs() < 1e-4, torch.ones_like(ratio), ratio)
        if self.max_grad_norm is not None:
            factor = factor * (self.max_grad_norm / (recorded + 1e-6)).clamp(max=1.0)
        for p, _ in owned:
            p.grad.mul_(factor.to(p.grad.dtype))  # type: ignore[union-attr]
        self._norms.clear()


def _optimizer_pre_hook(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
    for guard in list(_GUARDS):
        guard.restore(optimizer)


def _optimizer_post_hook(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
    for guard in list(_GUARDS):
        if guard.owns(optimizer):
            guard.after_step()


def _ensure_hooks() -> None:
    if not _HOOKS:
        _HOOKS.append(register_optimizer_step_pre_hook(_optimizer_pre_hook))
        _HOOKS.append(register_optimizer_step_post_hook(_optimizer_post_hook))
