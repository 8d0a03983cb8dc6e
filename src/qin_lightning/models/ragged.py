"""Ragged (packed) histories: the non-padding positions of a (B, S) mask as a CSR pattern, and the two
products target attention needs on it, as sparse kernels with exact autograd:

    row_dot(q (B, d), v (P, d)) -> (P,)    s_p = q_{row(p)} . v_p            (SDDMM, sampled_addmm)
    row_sum(w (P,), v (P, d))   -> (B, d)  o_b = sum_{p in row b} w_p v_p    (SpMM, CSR @ dense)

They compute exactly the dense bmm forms on (B, S, d) minus the padding terms, which are exact zeros
(padding vectors are zero), so only the summation order differs.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch import Tensor


class Ragged(NamedTuple):
    """Non-padding positions of a (B, S) mask, row-major: P entries."""

    flat: Tensor  # (P,) index into the flattened (B * S) grid
    rows: Tensor  # (P,) row of each entry (sorted)
    cols: Tensor  # (P,) 0..P-1: CSR column of each entry (entry p is column p)
    crow: Tensor  # (B + 1,) CSR row pointers
    shape: tuple[int, int]  # (B, S)

    @staticmethod
    def from_mask(mask: Tensor) -> "Ragged":
        b, s = mask.shape
        flat = mask.reshape(-1).nonzero().squeeze(1)  # (P,)
        crow = torch.zeros(b + 1, dtype=torch.long, device=mask.device)
        torch.cumsum(mask.sum(1), 0, out=crow[1:])
        cols = torch.arange(flat.shape[0], device=mask.device)
        return Ragged(flat, torch.div(flat, s, rounding_mode="floor"), cols, crow, (b, s))

    def csr(self, values: Tensor) -> Tensor:
        """(B, P) CSR matrix with `values` (P,) at (row(p), p)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
            return torch.sparse_csr_tensor(self.crow, self.cols, values, (self.shape[0], values.shape[0]))


def _row_dot(r: Ragged, q: Tensor, v: Tensor) -> Tensor:
    if v.shape[0] == 0:
        return v.new_zeros(0)
    with torch.autocast(v.device.type, enabled=False):
        return torch.sparse.sampled_addmm(r.csr(v.new_zeros(v.shape[0])), q, v.t(), beta=0.0).values()


def _row_sum(r: Ragged, w: Tensor, v: Tensor) -> Tensor:
    if v.shape[0] == 0:
        return v.new_zeros(r.shape[0], v.shape[1])
    with torch.autocast(v.device.type, enabled=False):
        return torch.sparse.mm(r.csr(w), v)


class _RowDot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, v: Tensor, flat: Tensor, rows: Tensor, cols: Tensor, crow: Tensor,
                b: int, s: int) -> Tensor:
        r = Ragged(flat, rows, cols, crow, (b, s))
        ctx.save_for_backward(q, v, flat, rows, cols, crow)
        ctx.shape = (b, s)
        return _row_dot(r, q, v)

    @staticmethod
    def backward(ctx, grad: Tensor):
        q, v, flat, rows, cols, crow = ctx.saved_tensors
        r = Ragged(flat, rows, cols, crow, ctx.shape)
        grad_q = _row_sum(r, grad, v) if ctx.needs_input_grad[0] else None  # (B, d)
        grad_v = grad.unsqueeze(1) * q.index_select(0, rows) if ctx.needs_input_grad[1] else None  # (P, d)
        return grad_q, grad_v, None, None, None, None, None, None


class _RowSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: Tensor, v: Tensor, flat: Tensor, rows: Tensor, cols: Tensor, crow: Tensor,
                b: int, s: int) -> Tensor:
        r = Ragged(flat, rows, cols, crow, (b, s))
        ctx.save_for_backward(w, v, flat, rows, cols, crow)
        ctx.shape = (b, s)
        return _row_sum(r, w, v)

    @staticmethod
    def backward(ctx, grad: Tensor):
        w, v, flat, rows, cols, crow = ctx.saved_tensors
        r = Ragged(flat, rows, cols, crow, ctx.shape)
        grad = grad.contiguous()
        grad_w = _row_dot(r, grad, v) if ctx.needs_input_grad[0] else None  # (P,)
        grad_v = w.unsqueeze(1) * grad.index_select(0, rows) if ctx.needs_input_grad[1] else None  # (P, d)
        return grad_w, grad_v, None, None, None, None, None, None


def row_dot(q: Tensor, v: Tensor, r: Ragged) -> Tensor:
    """s_p = q[row(p)] . v[p]: q (B, d), v (P, d) -> (P,) (at least float32: sparse ops skip autocast)."""
    dtype = torch.promote_types(torch.promote_types(q.dtype, v.dtype), torch.float32)
    q, v = q.to(dtype), v.to(dtype)
    if torch.is_grad_enabled() and (q.requires_grad or v.requires_grad):
        return _RowDot.apply(q, v, r.flat, r.rows, r.cols, r.crow, *r.shape)
    return _row_dot(r, q, v)


def row_sum(w: Tensor, v: Tensor, r: Ragged) -> Tensor:
    """o_b = sum over the entries p of row b of w[p] * v[p]: w (P,), v (P, d) -> (B, d) (at least float32)."""
    dtype = torch.promote_types(torch.promote_types(w.dtype, v.dtype), torch.float32)
    w, v = w.to(dtype), v.to(dtype)
    if torch.is_grad_enabled() and (w.requires_grad or v.requires_grad):
        return _RowSum.apply(w, v, r.flat, r.rows, r.cols, r.crow, *r.shape)
    return _row_sum(r, w, v)
