"""The Chebyshev-KAN layer as Triton feature kernels around cuBLAS GEMMs ("split GEMM" path).

The same layer as :mod:`labkit.kan.triton_chebyshev`, ``y[m, o] = sum_{i, d} T_d(tanh x[m, i])
coeffs[i, o, d]``, with the same bias trick (``T_0 = 1``: degree 0 is the bias ``sum_i
coeffs[i, o, 0]``, its gradient the column sums of ``dy``), computed block of inputs by block:

1. a Triton kernel writes ``T_1 .. T_D`` of ``tanh x`` for the block into a buffer laid out
   ``(rows, D, inputs)`` (in fp32 split in parts; see :mod:`labkit.kan.split_gemm`);
2. cuBLAS multiplies it by the block's coefficients, arranged ``(D, inputs, out)``.

Backward: ``dfeatures = dy @ W_block.T`` and ``dW_block = features.T @ dy`` by cuBLAS (the
features recomputed, not saved), and a Triton kernel mixes ``dfeatures`` into ``dx`` with
``T_d'(t) = d U_{d-1}(t)`` and ``1 - tanh^2``, both bounded: finite for every finite x.

fp32 products are split as in :mod:`labkit.kan.split_gemm` here too (TF32 main term, bf16 cross
terms). Tested on the CPU (``tests/test_kan_gemm_chebyshev.py``) and on an H100, where at
4096 x 768 -> 3072, degree 3 (forward + backward; the ``kan`` suite, bench/results/.../kan.json
of 2026-12-06) its kernels take 1.83 ms in fp32 and 0.48 ms in bf16 (Linear+GELU's: 1.36 /
0.20 ms), but one call takes 3.88 / 1.51 ms (Linear+GELU 1.52 / 0.58 ms; 2.6x in both dtypes,
over the chapter's 2x): the host issues the step's launches more slowly than the GPU runs them.
It uses half of :data:`split_gemm.FEATURE_BUFFER_BYTES` (memory 1.25x / 0.83x Linear+GELU's).
:data:`labkit.kan.ops.DEFAULT_CHEBYSHEV_PATH` is still ``"fused"``: chapters 1 and 2 were run
with it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from labkit.kan import split_gemm
from labkit.kan.split_gemm import FEATURE_BLOCK_I, FEATURE_BLOCK_M, Product, launch, store_feature, transposed
from labkit.kan.triton_chebyshev import (
    _check_inputs, _chebyshev_features, _device_guard, _tanh_and_slope, resolve_input_precision,
)


@triton.jit
def _features_kernel(x_ptr, hi_ptr, lo_ptr, M, IN_BLOCK, stride_xm, LO_PLANE, D: tl.constexpr, SPLIT: tl.constexpr,
                     MIXED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_I: tl.constexpr):
    """``features[m, d - 1, i] = T_d(tanh x[m, i])``, d = 1..D, for one (rows, inputs) tile of the block."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ins = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    ok = (rows[:, None] < M) & (ins[None, :] < IN_BLOCK)
    x = tl.load(x_ptr + rows[:, None] * stride_xm + ins[None, :], mask=ok, other=0.0)
    t, _ = _tanh_and_slope(x)
    features = _chebyshev_features(t, D, tl.float32)
    out = rows[:, None] * (D * IN_BLOCK) + ins[None, :]
    for d in tl.static_range(D):
        store_feature(hi_ptr, lo_ptr, out + d * IN_BLOCK, features[d], ok, SPLIT, LO_PLANE, MIXED)


@triton.jit
def _feature_grads_kernel(x_ptr, dfeat_ptr, dx_ptr, M, IN_BLOCK, stride_xm, stride_dxm, D: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_I: tl.constexpr):
    """``dx[m, i] = (1 - t^2) sum_d dfeatures[m, d - 1, i] d U_{d-1}(t)`` with ``t = tanh x[m, i]``."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ins = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    ok = (rows[:, None] < M) & (ins[None, :] < IN_BLOCK)
    t, tanh_slope = _tanh_and_slope(tl.load(x_ptr + rows[:, None] * stride_xm + ins[None, :], mask=ok, other=0.0))
    at = dfeat_ptr + rows[:, None] * (D * IN_BLOCK) + ins[None, :]
    u_prev = tl.zeros(t.shape, tl.float32)  # U_{-1}
    u_cur = tl.full(t.shape, 1.0, tl.float32)  # U_0
    total = tl.zeros(t.shape, tl.float32)
    for d in tl.static_range(1, D + 1):  # T_d' = d U_{d-1}; u_cur holds U_{d-1} here
        total += (d * u_cur) * tl.load(at + (d - 1) * IN_BLOCK, mask=ok, other=0.0).to(tl.float32)
        u_next = 2.0 * t * u_cur - u_prev
        u_prev = u_cur
        u_cur = u_next
    tl.store(dx_ptr + rows[:, None] * stride_dxm + ins[None, :], (tanh_slope * total).to(dx_ptr.dtype.element_ty),
             mask=ok)


def _features(x_block, degree, dtype, split, mixed=False):
    m, width = x_block.shape
    hi, lo = split_gemm.feature_buffers((m, degree * width), x_block.device, dtype, split, mixed)
    if m:
        grid = (triton.cdiv(m, FEATURE_BLOCK_M), triton.cdiv(width, FEATURE_BLOCK_I))
        launch(_features_kernel, grid, x_block, hi, hi if lo is None else lo, m, width, x_block.stride(0),
               hi.numel(), D=degree, SPLIT=split, MIXED=mixed, BLOCK_M=FEATURE_BLOCK_M, BLOCK_I=FEATURE_BLOCK_I)
    return hi, lo


def _block_weight(coeffs, i0, i1, dtype):
    """``coeffs[i0:i1, :, 1:]`` as a (D * width, out) matrix ordered (degree, input)."""
    w = coeffs[i0:i1, :, 1:].permute(2, 0, 1).to(dtype, memory_format=torch.contiguous_format)
    return w.reshape(-1, coeffs.shape[1])


class _ChebyKANGemm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, coeffs, dtype, precision):
        x = x.contiguous()
        m, n_in = x.shape
        n_out, degree = coeffs.shape[1], coeffs.shape[2] - 1
        product = Product(precision, dtype)
        # Half the B-spline path's buffer: the issue allows this layer 1.5x Linear+GELU's memory
        # (not 2x), and the split dy (two fp32 copies) already takes most of that.
        blocks = split_gemm.input_blocks(m, n_in, degree, product.element_bytes(dtype), share=0.5) if degree else []
        bias = coeffs[:, :, 0].sum(dim=0, dtype=torch.float32)  # T_0 = 1
        ctx.save_for_backward(x, coeffs)
        ctx.product, ctx.blocks, ctx.dtype = product, blocks, dtype
        with _device_guard(x):
            if len(blocks) == 1 and not product.split:
                # One GEMM with the bias in its epilogue, rounded once to dtype: two kernels
                # (an fp32 y filled with the bias, its cast at the end) fewer, which shows
                # where the host's launches set the pace (bf16 at the benchmark's size).
                features, _ = _features(x, degree, dtype, False)
                return product.one(features, _block_weight(coeffs, 0, n_in, dtype), bias=bias.to(dtype))
            y = bias.expand(m, n_out).contiguous()
            for i0, i1 in blocks:
                features = _features(x[:, i0:i1], degree, dtype, product.split, product.mixed)
                y = product(features, product.parts(_block_weight(coeffs, i0, i1, dtype)), out=y)
                del features
        return y.to(dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, coeffs = ctx.saved_tensors
        product, dtype = ctx.product, ctx.dtype
        m, _ = x.shape
        degree = coeffs.shape[2] - 1
        dy_parts = product.parts(dy.to(dtype).contiguous())
        # Every block writes its columns of dx; only a layer without blocks (degree 0) has none.
        dx = (torch.empty_like(x) if ctx.blocks else torch.zeros_like(x)) if ctx.needs_input_grad[0] else None
        dcoeffs = None
        if ctx.needs_input_grad[1]:
            dcoeffs = torch.empty_like(coeffs)
            dcoeffs[:, :, 0] = dy.sum(dim=0, dtype=torch.float32)  # T_0 = 1: the same for every input
        with _device_guard(x):
            for i0, i1 in ctx.blocks:
                width = i1 - i0
                if dx is not None and m:
                    dfeat = product(dy_parts, transposed(product.parts(_block_weight(coeffs, i0, i1, dtype))))
                    grid = (triton.cdiv(m, FEATURE_BLOCK_M), triton.cdiv(width, FEATURE_BLOCK_I))
                    launch(_feature_grads_kernel, grid, x[:, i0:], dfeat, dx[:, i0:], m, width, x.stride(0),
                           dx.stride(0), D=degree, BLOCK_M=FEATURE_BLOCK_M, BLOCK_I=FEATURE_BLOCK_I)
                    del dfeat
                if dcoeffs is not None:
                    features = _features(x[:, i0:i1], degree, dtype, product.split, product.mixed)
                    dw = product(transposed(features), dy_parts)  # (D * width, out)
                    del features
                    dcoeffs[i0:i1, :, 1:] = dw.view(degree, width, -1).permute(1, 2, 0)
        return dx, dcoeffs, None, None


def chebykan_gemm(x: torch.Tensor, coeffs: torch.Tensor, *, input_precision: str | None = None,
                  compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Chebyshev-KAN layer through feature kernels and cuBLAS; same arguments, result and
    gradients as :func:`labkit.kan.triton_chebyshev.chebykan_triton`."""
    _check_inputs(x, coeffs, compute_dtype)
    dtype = compute_dtype or x.dtype
    return _ChebyKANGemm.apply(x, coeffs, dtype, resolve_input_precision(dtype, input_precision))
