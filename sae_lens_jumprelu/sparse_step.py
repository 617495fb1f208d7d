"""A sparse-aware JumpReLU training step: the encoder matmul is the only dense work.

A JumpReLU step needs the dense pre-activations ``pi = x @ W_enc + b_enc`` only to find which
latents fire. After that, gradients live on two kinds of (token, latent) entries: active ones
(``pi > theta``: decoding, the decoder gradient, the gradient into ``pi`` and so into ``W_enc``)
and those inside the kernel window of their threshold (``|pi - theta| < w * eps``: theta's
pseudo-derivatives, and ``pi``'s too with ``ste_to_input``). ``sparse_jumprelu`` is one
autograd op for encode + JumpReLU + decode that keeps those entries and works on them alone:

- the encoder matmul runs a block of tokens at a time and only the entries above a bound are
  kept, so no batch x d_sae tensor is held, and none is kept for the backward pass;
- decoding ``f @ W_dec`` is a weighted gather of decoder rows per token (``embedding_bag``);
- its gradient into ``f`` is a dot product per entry (``sampled_addmm``, an SDDMM);
- the gradients into ``W_dec`` and ``W_enc`` are weighted sums per latent of the tokens' output
  gradients and inputs: ``embedding_bag`` again, over the entries in latent-major order.

Losses and gradients equal the dense step's up to float rounding (tests/test_sparse_step.py).
Only torch ops, so the same code runs on CUDA (tested on CPU only).
"""

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from sae_lens_jumprelu.ste import KERNEL_HALF_WIDTHS, jumprelu_pseudo_grads

# Elements of one block of pre-activations on CPU (64 MB in float32): memory stays bounded
# (a 4096 x 65536 batch would be 1 GB) while each GEMM stays large. Measured at d_sae 16384 on
# the 2-core CPU: blocks of 1 << 22 made the step 15% slower, 1 << 26 (no blocking) no faster.
CPU_BLOCK_ELEMENTS = 1 << 24

_threads = threading.local()


@contextmanager
def serial_bookkeeping(device: torch.device) -> Iterator[None]:
    """Run the block's CPU ops on one thread, except inside ``heavy()``.

    The bookkeeping on entries (compares, nonzero, sorts, index ops on 1e5-1e6 elements) is
    ~1 ms of work per op; on two threads each op also waits until the second thread is
    scheduled, which with another job on this 2-core machine cost 4-8 ms per op (argsort of
    5e5 entries: 6 ms on one thread, 180 ms on two).
    """
    if device.type != "cpu" or getattr(_threads, "caller", None) is not None:
        yield
        return
    _threads.caller = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(_threads.caller)
        _threads.caller = None


@contextmanager
def heavy() -> Iterator[None]:
    """Within ``serial_bookkeeping``: the caller's thread count, for matmuls and gathers."""
    caller = getattr(_threads, "caller", None)
    if caller is None:
        yield
        return
    torch.set_num_threads(caller)
    try:
        yield
    finally:
        torch.set_num_threads(1)


@dataclass(frozen=True)
class EntryPattern:
    """The (token, latent) entries a sparse step keeps, in token-major order, and the
    latent-major order that the transposed products need."""

    rows: Int[Tensor, " nnz"]
    """Token of each entry (sorted)."""
    cols: Int[Tensor, " nnz"]
    """Latent of each entry (sorted within a token)."""
    row_offsets: Int[Tensor, " n_rows"]
    """Index of each token's first entry."""
    by_latent: Int[Tensor, " nnz"]
    """Stable permutation of the entries into latent-major order."""
    latent_csr: Tensor
    """The pattern transposed: a d_sae x n_rows CSR tensor (zero values) whose column indices
    are the entries' tokens in latent-major order."""

    @classmethod
    def from_entries(cls, rows: Tensor, cols: Tensor, n_rows: int, d_sae: int) -> "EntryPattern":
        row_counts = torch.bincount(rows, minlength=n_rows)
        by_latent = torch.argsort(cols, stable=True)
        latent_ends = torch.bincount(cols, minlength=d_sae).cumsum(0)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
            latent_csr = torch.sparse_csr_tensor(
                torch.cat([latent_ends.new_zeros(1), latent_ends]),
                rows[by_latent],
                torch.zeros(rows.shape[0], device=rows.device),
                (d_sae, n_rows),
                check_invariants=False,
            )
        return cls(
            rows=rows,
            cols=cols,
            row_offsets=row_counts.cumsum(0) - row_counts,
            by_latent=by_latent,
            latent_csr=latent_csr,
        )

    @property
    def shape(self) -> tuple[int, int]:
        """(n_rows, d_sae)."""
        return self.latent_csr.shape[1], self.latent_csr.shape[0]

    # Zero weights are not filtered out below: on CPU, dropping them costs about as many index
    # ops as the gathers they would save unless most weights are zero.

    def token_sums(
        self, table: Float[Tensor, "d_sae d"], weights: Float[Tensor, " nnz"]
    ) -> Float[Tensor, "n_rows d"]:
        """``out[t] = sum over t's entries of weights * table[latent]`` (sparse @ dense)."""
        with heavy():
            return F.embedding_bag(
                self.cols, table, self.row_offsets, mode="sum", per_sample_weights=weights
            )

    def latent_sums(
        self, table: Float[Tensor, "n_rows d"], weights: Float[Tensor, " nnz"]
    ) -> Float[Tensor, "d_sae d"]:
        """``out[i] = sum over i's entries of weights * table[token]`` (sparse^T @ dense)."""
        tokens, offsets = self.latent_csr.col_indices(), self.latent_csr.crow_indices()[:-1]
        ordered = weights[self.by_latent]
        with heavy():
            return F.embedding_bag(tokens, table, offsets, mode="sum", per_sample_weights=ordered)

    def entry_dots(
        self, a: Float[Tensor, "n_rows d"], b: Float[Tensor, "d_sae d"]
    ) -> Float[Tensor, " nnz"]:
        """``a[token] . b[latent]`` for every entry: ``a @ b.T`` sampled at the entries."""
        if a.dtype not in (torch.float32, torch.float64):
            a, b = a.float(), b.float()  # sampled_addmm has no bfloat16/half CPU kernel
        # Latent-major: each latent's row of b is read once, and a (n_rows x d) stays in cache;
        # 2x faster than token-major on CPU (measured at 4096 x 16384, 120 entries per token).
        with heavy():
            dots = torch.sparse.sampled_addmm(self.latent_csr.to(a.dtype), b, a.T, beta=0.0)
        return (
            dots.values()
            .new_empty(dots.values().shape)
            .index_copy_(0, self.by_latent, dots.values())
        )

    def to_sparse_coo(self, values: Tensor, keep: Tensor | None = None) -> Tensor:
        """``values`` at the entries (those in ``keep`` only) as an n_rows x d_sae COO tensor."""
        rows, cols = self.rows, self.cols
        if keep is not None:
            idx = keep.nonzero().squeeze(1)
            rows, cols, values = rows[idx], cols[idx], values[idx]
        return torch.sparse_coo_tensor(
            torch.stack([rows, cols]),
            values,
            self.shape,
            is_coalesced=True,
            check_invariants=False,
        )


@torch.no_grad()
def entry_density(
    hidden_pre: Float[Tensor, "*batch d_sae"],
    threshold: Float[Tensor, " d_sae"],
    bandwidth: float,
    kernel: str,
) -> float:
    """Fraction of entries a sparse step would keep: active or inside the kernel window."""
    lowest = threshold - KERNEL_HALF_WIDTHS[kernel] * bandwidth
    return float((hidden_pre > lowest).sum()) / hidden_pre.numel()


def _entry_bound(
    threshold: Tensor, b_enc: Tensor, bandwidth: float, kernel: str, dtype: torch.dtype
) -> Tensor:
    """A bound on ``x @ W_enc`` below every entry the step needs (``pi > theta - w * eps``),
    with margins for the rounding of ``+ b_enc`` and of the kernel's ``(pi - theta) / eps``."""
    half_width = KERNEL_HALF_WIDTHS[kernel] * bandwidth
    rounding = 4 * torch.finfo(dtype).eps * (threshold.abs() + b_enc.abs().float() + half_width)
    return threshold - b_enc.float() - 1.01 * half_width - rounding


def _select_entries(x: Tensor, W_enc: Tensor, bound: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Token-major ``(rows, cols, (x @ W_enc)[rows, cols])`` of the entries above ``bound``,
    computing the matmul one block of tokens at a time."""
    n_rows, d_sae = x.shape[0], W_enc.shape[1]
    autocast = torch.is_autocast_enabled(x.device.type)
    block = n_rows if x.is_cuda else max(1, CPU_BLOCK_ELEMENTS // d_sae)
    buffer = None if autocast else x.new_empty(min(block, n_rows), d_sae)
    rows, cols, values = [], [], []
    for start in range(0, n_rows, block):
        x_block = x[start : start + block]
        with heavy():  # the compare and nonzero scan the whole block too
            if buffer is None:
                pre = x_block @ W_enc  # autocast's dtype, as in the dense step
            else:
                pre = torch.mm(x_block, W_enc, out=buffer[: x_block.shape[0]])
            r, c = (pre > bound).nonzero().unbind(1)
        values.append(pre.take(r * d_sae + c))
        rows.append(r + start)
        cols.append(c)
    return torch.cat(rows), torch.cat(cols), torch.cat(values)


class SparseJumpReLU(torch.autograd.Function):
    """``f = JumpReLU_theta((x - b_dec) @ W_enc + b_enc)`` and ``f @ W_dec`` on the entries that
    can carry a gradient; the paper's estimator for theta (``ste.jumprelu_pseudo_grads``).

    Outputs: ``f @ W_dec`` (dense, no decoder bias), then ``pi`` and ``f`` at the entries
    (differentiable, for the penalties), then the ``EntryPattern``.
    """

    @staticmethod
    def forward(
        x: Tensor,
        W_enc: Tensor,
        b_enc: Tensor,
        b_dec: Tensor | None,
        threshold: Tensor,
        W_dec: Tensor,
        bandwidth: float,
        kernel: str,
        ste_to_input: bool,
    ) -> tuple[Tensor, Tensor, Tensor, EntryPattern]:
        with serial_bookkeeping(x.device):
            x_enc = x if b_dec is None else x - b_dec
            bound = _entry_bound(threshold, b_enc, bandwidth, kernel, x_enc.dtype)
            rows, cols, partial = _select_entries(x_enc, W_enc, bound)
            pattern = EntryPattern.from_entries(rows, cols, x.shape[0], W_enc.shape[1])
            hidden = partial + b_enc.index_select(0, cols)  # the dense step's rounding
            acts = hidden * (hidden > threshold.index_select(0, cols)).to(hidden.dtype)
            with torch.autocast(device_type=x.device.type, enabled=False):
                # A gather, memory-bound: autocast's lower precision would only round it.
                recon = pattern.token_sums(W_dec, acts.to(W_dec.dtype))
        return recon, hidden, acts, pattern

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
        x, W_enc, _, b_dec, threshold, W_dec, bandwidth, kernel, ste_to_input = inputs
        _, hidden, acts, pattern = output
        ctx.save_for_backward(x, W_enc, b_dec, threshold, W_dec, hidden, acts)
        ctx.pattern = pattern
        ctx.bandwidth, ctx.kernel, ctx.ste_to_input = bandwidth, kernel, ste_to_input
        # Unused outputs get None rather than zero-filled gradients.
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(
        ctx: Any,
        grad_recon: Tensor | None,
        grad_hidden: Tensor | None,
        grad_acts: Tensor | None,
        _grad_pattern: Any,
    ) -> tuple[Any, ...]:
        x, W_enc, b_dec, threshold, W_dec, hidden, acts = ctx.saved_tensors
        pattern: EntryPattern = ctx.pattern
        needs = ctx.needs_input_grad
        with serial_bookkeeping(x.device), torch.autocast(x.device.type, enabled=False):
            grad_f = torch.zeros_like(acts) if grad_acts is None else grad_acts
            if grad_recon is not None:
                grad_f = grad_f + pattern.entry_dots(grad_recon, W_dec).to(acts.dtype)
            grad_pi, grad_theta_entries = jumprelu_pseudo_grads(
                hidden,
                threshold.index_select(0, pattern.cols),
                grad_f,
                ctx.bandwidth,
                ctx.kernel,
                ctx.ste_to_input,
            )
            if grad_hidden is not None:
                grad_pi = grad_pi + grad_hidden

            grad_W_enc = grad_b_enc = grad_b_dec = grad_threshold = grad_W_dec = None
            if needs[1]:
                x_enc = x if b_dec is None else x - b_dec
                per_latent = pattern.latent_sums(x_enc, grad_pi.to(x_enc.dtype))
                with heavy():
                    # Laid out like W_enc: autograd would copy a transposed gradient anyway.
                    grad_W_enc = per_latent.T.to(W_enc.dtype).contiguous()
            if needs[2] or needs[3]:
                grad_b_enc = grad_pi.new_zeros(W_enc.shape[1]).index_add_(0, pattern.cols, grad_pi)
            if needs[3]:
                # d pi / d b_dec = -W_enc^T for every token.
                with heavy():
                    grad_b_dec = -(W_enc @ grad_b_enc.to(W_enc.dtype)).to(b_dec.dtype)
            if needs[4]:
                grad_threshold = torch.zeros_like(threshold, dtype=torch.float32)
                grad_threshold.index_add_(0, pattern.cols, grad_theta_entries)
                grad_threshold = grad_threshold.to(threshold.dtype)
            if needs[5] and grad_recon is not None:
                grad_W_dec = pattern.latent_sums(grad_recon, acts.to(grad_recon.dtype))
                grad_W_dec = grad_W_dec.to(W_dec.dtype)
        return (
            None,
            grad_W_enc,
            grad_b_enc,
            grad_b_dec,
            grad_threshold,
            grad_W_dec,
            None,
            None,
            None,
        )


class SparseStepOutput(NamedTuple):
    """What ``sparse_jumprelu`` returns."""

    recon: Float[Tensor, "n_rows d_in"]
    """``f @ W_dec``, without the decoder bias."""
    hidden_pre: Float[Tensor, " nnz"]
    """``pi`` at the entries."""
    feature_acts: Float[Tensor, " nnz"]
    """``f`` at the entries (zero at those below their threshold)."""
    pattern: EntryPattern


def sparse_jumprelu(
    x: Float[Tensor, "n_rows d_in"],
    W_enc: Float[Tensor, "d_in d_sae"],
    b_enc: Float[Tensor, " d_sae"],
    b_dec: Float[Tensor, " d_in"] | None,
    threshold: Float[Tensor, " d_sae"],
    W_dec: Float[Tensor, "d_sae d_in"],
    bandwidth: float,
    kernel: str,
    ste_to_input: bool,
) -> SparseStepOutput:
    """Encode (subtracting ``b_dec`` first when given), JumpReLU and decode on the entries that
    are active or inside their threshold's kernel window; gradients as the dense step's."""
    return SparseStepOutput(
        *SparseJumpReLU.apply(
            x, W_enc, b_enc, b_dec, threshold, W_dec, bandwidth, kernel, ste_to_input
        )
    )
