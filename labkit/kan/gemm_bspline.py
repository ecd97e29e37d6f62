"""The B-spline KAN layer as Triton feature kernels around cuBLAS GEMMs ("split GEMM" path).

The fused kernels of :mod:`labkit.kan.triton_bspline` compute every basis tile inside the
GEMM loop. On an H100 they reached 14-19% of the tensor cores' peak (fp32 22.8 ms, bf16
2.74 ms at 4096 x 768 -> 3072, G = 5, k = 3): the tensor cores wait for the basis
arithmetic. This path separates the two. For a block of inputs at a time:

1. a Triton kernel writes the features ``[silu(x_i), B_0(x_i), .., B_{G+k-1}(x_i)]`` of
   those inputs for all rows into a buffer, laid out ``(rows, F, inputs)`` with
   ``F = G + k + 1`` (each feature's columns contiguous, so every store is coalesced);
2. cuBLAS multiplies that buffer by the matching rows of the packed weight ``W``
   (:func:`labkit.kan.triton_bspline._pack_weight_kernel`, here for a block of inputs).

Backward recomputes the block's features (nothing of size rows x in x F is kept between
forward and backward), lets cuBLAS form ``dfeatures = dy @ W_block.T`` and ``dW_block =
features.T @ dy``, and a second Triton kernel turns ``dfeatures`` into ``dx`` with the basis
slopes. The block of inputs is sized so that the feature buffer stays under
:data:`labkit.kan.split_gemm.FEATURE_BUFFER_BYTES`: the layer's extra memory stays bounded
at any width.

fp32 keeps fp32 accuracy by splitting every product (see :mod:`labkit.kan.split_gemm`): the
operands' TF32 parts are multiplied in TF32 and the two cross terms in bf16 (or all three in
TF32, ``split_gemm.FP32_CROSS_TERMS = "tf32"``); the feature kernel writes every part of each
feature. With TF32 allowed in PyTorch one TF32 GEMM is used instead, and with
``LABKIT_KAN_FP32_DOT=ieee`` one exact fp32 GEMM. 16-bit operands take one GEMM each.

Everything is tested against the PyTorch reference in ``tests/test_kan_gemm_bspline.py``
(on the CPU the GEMMs are exact fp32 matmuls and the kernels run in Triton's interpreter).

On an H100 at 4096 x 768 -> 3072 (forward + backward, one call; the ``kan`` suite's
``kan.json`` of 2026-12-06) this path took 4.51 ms in fp32 (6.54 ms with 3xTF32) and 1.38 ms
in bf16, against 22.2 / 2.5 ms for the fused kernels, 11.7 / 2.2 ms for the seed's formulation
under ``torch.compile`` and 10.8 / 1.5 ms for inkan (Linear+GELU: 1.39 / 0.39 ms; 3.2x and
3.6x, at 1.82x and 0.82x its peak memory). In fp32 the GEMMs are almost all of it
(bench/diagnostics/gemm_profile.py). Below about 2e9 multiply-adds the fused kernels are
faster (:data:`labkit.kan.ops.GEMM_MIN_MACS`), and ``path="auto"`` takes them there.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from labkit.kan import split_gemm
from labkit.kan.split_gemm import (
    FEATURE_BLOCK_I, FEATURE_BLOCK_M, Product, ceil_div, launch, next_power_of_2, store_feature, transposed,
)
from labkit.kan.triton_bspline import (
    _UNPACK_BLOCK, _bases, _dot_precision, _pack_weight_kernel, _silu, _silu_slope, _slopes, _unpack_grads_kernel,
    _validate, knots_for,
)

_BASES_PER_STEP = 4  # bases computed (and stored) per step of the feature kernels' loop
#: fp32 forward as one GEMM over the stacked operands [F_hi | F_hi | F_lo] @ [W_hi; W_lo; W_hi]
#: (K three times longer) instead of three GEMMs that each read and write y: the same products,
#: a third of the output traffic, 1.5x the feature buffer. Off: on an H100 it saved 0.25-0.66
#: ms of ~7 (bench/diagnostics/host_and_buffers.py), but at the 128 MiB buffer its 1.5x buffer
#: takes the layer's peak memory to 2.2x Linear+GELU's, over the issue's 2x.
STACKED_FORWARD = False


@triton.jit
def _features_kernel(
    x_ptr, table_ptr, hi_ptr, lo_ptr, M, IN_BLOCK, stride_xm, LO_PLANE,
    TABLE_ROW: tl.constexpr, TABLE_PLANE: tl.constexpr, GRID_SIZE: tl.constexpr, ORDER: tl.constexpr,
    UNIFORM: tl.constexpr, SPLIT: tl.constexpr, MIXED: tl.constexpr, CHUNK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_I: tl.constexpr, STACK: tl.constexpr = False,
):
    """``features[m, f, i]`` of one (BLOCK_M rows, BLOCK_I inputs) tile; ``x_ptr`` and
    ``table_ptr`` point at the block's first input. Feature 0 is silu(x), feature 1 + j is
    B_j(x). ``SPLIT``: store the TF32 part in ``hi`` and the rest in ``lo`` (both fp32; with
    ``MIXED``, ``lo`` as two bf16 planes ``LO_PLANE`` apart: see ``split_gemm.store_feature``).
    ``STACK`` (with SPLIT): one buffer whose rows are [hi | hi | lo] (see STACKED_FORWARD)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ins = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    ok = (rows[:, None] < M) & (ins[None, :] < IN_BLOCK)
    x = tl.load(x_ptr + rows[:, None] * stride_xm + ins[None, :], mask=ok, other=0.0).to(tl.float32)
    K = (GRID_SIZE + ORDER + 1) * IN_BLOCK  # one row of one buffer
    out = rows[:, None] * (3 * K if STACK else K) + ins[None, :]
    _store(hi_ptr, lo_ptr, out, _silu(x), ok, K, SPLIT, STACK, LO_PLANE, MIXED)
    N_BASES: tl.constexpr = GRID_SIZE + ORDER
    for b0 in range(0, N_BASES, CHUNK):
        bases = _bases(x, table_ptr + ins[None, :], TABLE_ROW, TABLE_PLANE, b0, CHUNK, ORDER, UNIFORM)
        for c in tl.static_range(CHUNK):
            _store(hi_ptr, lo_ptr, out + (1 + b0 + c) * IN_BLOCK, bases[c], ok & (b0 + c < N_BASES), K, SPLIT, STACK,
                   LO_PLANE, MIXED)


@triton.jit
def _store(hi_ptr, lo_ptr, offsets, value, mask, K, SPLIT: tl.constexpr, STACK: tl.constexpr, LO_PLANE,
           MIXED: tl.constexpr):
    if STACK:  # [hi | hi | lo] in one buffer
        store_feature(hi_ptr, hi_ptr + 2 * K, offsets, value, mask, True, 0, False)
        store_feature(hi_ptr + K, hi_ptr + 2 * K, offsets, value, mask, True, 0, False)
    else:
        store_feature(hi_ptr, lo_ptr, offsets, value, mask, SPLIT, LO_PLANE, MIXED)


@triton.jit
def _feature_grads_kernel(
    x_ptr, table_ptr, dfeat_ptr, dx_ptr, M, IN_BLOCK, stride_xm, stride_dxm,
    TABLE_ROW: tl.constexpr, TABLE_PLANE: tl.constexpr, GRID_SIZE: tl.constexpr, ORDER: tl.constexpr,
    UNIFORM: tl.constexpr, CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_I: tl.constexpr,
):
    """``dx[m, i] = sum_f dfeatures[m, f, i] * feature_f'(x[m, i])`` for one tile (block-relative pointers)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ins = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    ok = (rows[:, None] < M) & (ins[None, :] < IN_BLOCK)
    x = tl.load(x_ptr + rows[:, None] * stride_xm + ins[None, :], mask=ok, other=0.0).to(tl.float32)
    N_BASES: tl.constexpr = GRID_SIZE + ORDER
    at = dfeat_ptr + rows[:, None] * ((N_BASES + 1) * IN_BLOCK) + ins[None, :]
    dx = _silu_slope(x) * tl.load(at, mask=ok, other=0.0).to(tl.float32)
    for b0 in range(0, N_BASES, CHUNK):
        slopes = _slopes(x, table_ptr + ins[None, :], TABLE_ROW, TABLE_PLANE, b0, CHUNK, ORDER, UNIFORM)
        for c in tl.static_range(CHUNK):
            g = tl.load(at + (1 + b0 + c) * IN_BLOCK, mask=ok & (b0 + c < N_BASES), other=0.0).to(tl.float32)
            dx += slopes[c] * g
    tl.store(dx_ptr + rows[:, None] * stride_dxm + ins[None, :], dx.to(dx_ptr.dtype.element_ty), mask=ok)


def _features(x_block, knots, i0, compute_dtype, split, stack=False, mixed=False):
    """(hi, lo) feature buffers of a block (see ``split_gemm.feature_buffers``), or with
    ``stack`` one (rows, 3K) buffer [hi | hi | lo] and None."""
    m, width = x_block.shape
    n_features = knots.grid_size + knots.order + 1
    if stack:
        hi, lo = torch.empty((m, 3 * n_features * width), device=x_block.device, dtype=torch.float32), None
    else:
        hi, lo = split_gemm.feature_buffers((m, n_features * width), x_block.device, compute_dtype, split, mixed)
    if m:
        grid = (ceil_div(m, FEATURE_BLOCK_M), ceil_div(width, FEATURE_BLOCK_I))
        launch(
            _features_kernel, grid, x_block, knots.table[:, :, i0:], hi, hi if lo is None else lo, m, width,
            x_block.stride(0), hi.numel(), TABLE_ROW=knots.table.stride(1), TABLE_PLANE=knots.table.stride(0),
            GRID_SIZE=knots.grid_size, ORDER=knots.order, UNIFORM=knots.uniform, SPLIT=split, MIXED=mixed,
            CHUNK=_BASES_PER_STEP, BLOCK_M=FEATURE_BLOCK_M, BLOCK_I=FEATURE_BLOCK_I, STACK=stack)
    return hi, lo


def _block_weight(base_weight, spline_weight, spline_scaler, i0, i1, dtype):
    """``W`` rows of inputs i0..i1, as a (F * width, out) matrix ordered (feature, input)."""
    n_out, n_in, n_bases = spline_weight.shape
    width = i1 - i0
    w = torch.empty((n_bases + 1, width, n_out), device=spline_weight.device, dtype=dtype)
    grid = (ceil_div(n_out, _UNPACK_BLOCK), ceil_div(width, _UNPACK_BLOCK))
    scaler = spline_weight if spline_scaler is None else spline_scaler[:, i0:]
    launch(
        _pack_weight_kernel, grid, base_weight[:, i0:], spline_weight[:, i0:], scaler, w, width, n_out,
        N_BASES=n_bases, BASES_POW2=next_power_of_2(n_bases), HAS_SCALER=spline_scaler is not None,
        BLOCK_O=_UNPACK_BLOCK, BLOCK_I=_UNPACK_BLOCK, PARAM_IN=n_in)
    return w.view((n_bases + 1) * width, n_out)


class _BSplineKANGemm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, grid, base_weight, spline_weight, spline_scaler, spline_order, compute_dtype):
        _validate(x, grid, base_weight, spline_weight, spline_scaler, spline_order, compute_dtype)
        compute_dtype = compute_dtype or x.dtype
        x = x.contiguous()
        base_weight, spline_weight = base_weight.contiguous(), spline_weight.contiguous()
        spline_scaler = None if spline_scaler is None else spline_scaler.contiguous()
        knots = knots_for(grid, spline_order)
        product = Product(_dot_precision(compute_dtype), compute_dtype)
        m, n_in = x.shape
        n_out, _, n_bases = spline_weight.shape
        blocks = split_gemm.input_blocks(m, n_in, n_bases + 1, product.element_bytes(compute_dtype))
        # The blocks' products are summed in fp32 (on the CPU 16-bit ones are rounded once each
        # first) and y is rounded to the compute dtype at the end.
        y = torch.zeros((m, n_out), device=x.device, dtype=torch.float32) if len(blocks) > 1 else None
        stack = STACKED_FORWARD and product.split and not product.mixed
        for i0, i1 in blocks:
            features = _features(x[:, i0:i1], knots, i0, compute_dtype, product.split, stack, product.mixed)
            w = _block_weight(base_weight, spline_weight, spline_scaler, i0, i1, compute_dtype)
            if stack:  # one GEMM: [F_hi | F_hi | F_lo] @ [W_hi; W_lo; W_hi]
                w_hi, w_lo = product.parts(w)
                y = product.one(features[0], torch.cat([w_hi, w_lo, w_hi]), out=y)
                del w_hi, w_lo
            else:
                y = product(features, product.parts(w), out=y)
            del features, w
        ctx.save_for_backward(x, base_weight, spline_weight, spline_scaler)
        ctx.knots, ctx.product, ctx.blocks, ctx.compute_dtype = knots, product, blocks, compute_dtype
        return y.to(compute_dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, base_weight, spline_weight, spline_scaler = ctx.saved_tensors
        need_x, _, need_base, need_spline, need_scaler, _, _ = ctx.needs_input_grad
        product, knots, dtype = ctx.product, ctx.knots, ctx.compute_dtype
        dy_parts = product.parts(dy.to(dtype).contiguous())
        m, n_in = x.shape
        n_out, _, n_bases = spline_weight.shape
        dx = torch.empty_like(x) if need_x else None
        need_weights = need_base or need_spline or need_scaler
        d_base = spline_weight.new_empty((n_out, n_in)) if need_weights else None
        d_spline = torch.empty_like(spline_weight) if need_weights else None
        d_scaler = None if spline_scaler is None or not need_weights else torch.empty_like(spline_scaler)
        for i0, i1 in ctx.blocks:
            width = i1 - i0
            if need_x:
                w = _block_weight(base_weight, spline_weight, spline_scaler, i0, i1, dtype)
                w_t = transposed(product.parts(w))
                dfeat = product(dy_parts, w_t)
                del w, w_t
                if m:
                    grid = (ceil_div(m, FEATURE_BLOCK_M), ceil_div(width, FEATURE_BLOCK_I))
                    launch(
                        _feature_grads_kernel, grid, x[:, i0:], knots.table[:, :, i0:], dfeat, dx[:, i0:], m, width,
                        x.stride(0), dx.stride(0), TABLE_ROW=knots.table.stride(1),
                        TABLE_PLANE=knots.table.stride(0), GRID_SIZE=knots.grid_size, ORDER=knots.order,
                        UNIFORM=knots.uniform, CHUNK=_BASES_PER_STEP, BLOCK_M=FEATURE_BLOCK_M,
                        BLOCK_I=FEATURE_BLOCK_I)
                del dfeat
            if need_weights:
                features = _features(x[:, i0:i1], knots, i0, dtype, product.split, mixed=product.mixed)
                features_t = transposed(features)
                dw = product(features_t, dy_parts)  # the unpack kernel sums it in fp32
                del features, features_t
                grid = (ceil_div(n_out, _UNPACK_BLOCK), ceil_div(width, _UNPACK_BLOCK))
                launch(
                    _unpack_grads_kernel, grid, dw, spline_weight[:, i0:],
                    spline_weight if spline_scaler is None else spline_scaler[:, i0:], d_base[:, i0:],
                    d_spline[:, i0:], d_spline if d_scaler is None else d_scaler[:, i0:], width, n_out, 1, 0,
                    N_BASES=n_bases, BASES_POW2=next_power_of_2(n_bases),
                    HAS_SCALER=spline_scaler is not None, BLOCK_O=_UNPACK_BLOCK, BLOCK_I=_UNPACK_BLOCK,
                    PARAM_IN=n_in)
        return (dx, None, d_base if need_base else None, d_spline if need_spline else None,
                d_scaler if need_scaler else None, None, None)


def bspline_kan_gemm(
    x: torch.Tensor,
    grid: torch.Tensor,
    base_weight: torch.Tensor,
    spline_weight: torch.Tensor,
    spline_scaler: torch.Tensor | None,
    spline_order: int,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """B-spline KAN layer through feature kernels and cuBLAS; same arguments, result and
    gradients as :func:`labkit.kan.triton_bspline.bspline_kan_triton`."""
    return _BSplineKANGemm.apply(x, grid, base_weight, spline_weight, spline_scaler, spline_order, compute_dtype)
