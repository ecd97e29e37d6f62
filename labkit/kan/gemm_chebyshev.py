"""The Chebyshev-KAN layer as Triton feature kernels around cuBLAS GEMMs ("split GEMM" path).

The same layer as :mod:`labkit.kan.triton_chebyshev`, ``y[m, o] = sum_{i, d} T_d(tanh x[m, i])
coeffs[i, o, d]``, with the same bias trick (``T_0 = 1``: degree 0 is the bias ``sum_i
coeffs[i, o, 0]``, its gradient the column sums of ``dy``), computed block of inputs by block
(one block at the chapter's sizes, see :data:`BUFFER_SHARE`):

1. a Triton kernel packs the block's coefficients into a (D * inputs, out) matrix ordered
   (degree, input); for the first block it appends the bias, summed in the same launch;
2. a Triton kernel writes ``T_1 .. T_D`` of ``tanh x`` for the block into a buffer laid out
   ``(rows, D, inputs)`` (in fp32 split in parts; see :mod:`labkit.kan.split_gemm`), for the
   first block followed by a column of ones (``T_0``; :data:`BIAS_COLUMNS`);
3. cuBLAS multiplies the two: the ones meet the bias, so the GEMM adds it.

Backward: ``dfeatures = dy @ W.T`` by cuBLAS; one Triton kernel mixes ``dfeatures`` into ``dx``
with ``T_d'(t) = d U_{d-1}(t)`` and ``1 - tanh^2`` (both bounded: finite for every finite x)
and writes the features again (recomputed, not saved); ``dW = features.T @ dy`` by cuBLAS, whose
row for the column of ones is ``dy`` summed over the rows, the bias's gradient; a last kernel
scatters ``dW`` into the coefficients' layout. A bf16 step is seven launches (thirteen with
PyTorch copies, splits and reductions around the GEMMs, as this path had been), an fp32 one
sixteen (about forty before, in two blocks).

fp32 products are split as in :mod:`labkit.kan.split_gemm` here too (TF32 main term, bf16 cross
terms). Tested against the reference on the CPU under the interpreter and on an H100
(``tests/test_kan_gemm_chebyshev.py``; ``pytest-kan-gemm-chebyshev.log``). Timed there at
4096 x 768 -> 3072, degree 3 (forward + backward; the ``kan`` suite, bench/results/.../kan.json
of 2026-12-06): one call took 1.89 ms in fp32 (1.36x Linear+GELU's, peak memory 1.27x) and
0.73 ms in bf16 (1.90x, memory 0.51x), its kernels 1.54 / 0.35 ms (Linear+GELU's 1.34 /
0.20 ms). In bf16 the host is the limit: back to back a call takes 0.87 ms. Below about 2e9
multiply-adds the fused kernels are faster (:data:`labkit.kan.ops.GEMM_MIN_MACS`).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from labkit.kan import split_gemm
from labkit.kan.split_gemm import (
    FEATURE_BLOCK_I, FEATURE_BLOCK_M, Product, ceil_div, launch, next_power_of_2, store_feature, transposed,
)
from labkit.kan.triton_chebyshev import (
    _check_inputs, _chebyshev_features, _device_guard, _tanh_and_slope, resolve_input_precision,
)


#: Share of :data:`split_gemm.FEATURE_BUFFER_BYTES` this layer's feature buffer may take. All of it:
#: in fp32 at 4096 x 768, degree 3, the features then fit one block (72 MiB), so every kernel and
#: GEMM runs once per step instead of twice (this layer's step was bound by how fast the host
#: issued its launches), and peak memory stays within the 1.5x of Linear+GELU's that the
#: chapter allows.
BUFFER_SHARE = 1.0
PACK_BLOCK_O = 32  # outputs per tile of the weight (un)packing kernels (see _pack_tile)
#: Columns appended to the first block's features: one of ones (T_0, the bias) and zeros, so that
#: the GEMMs' inner dimension stays a multiple of 16 (aligned operands in every dtype).
BIAS_COLUMNS = 16


@triton.jit
def _features_kernel(x_ptr, hi_ptr, lo_ptr, dfeat_ptr, dx_ptr, M, IN_BLOCK, stride_xm, stride_dxm, LO_PLANE, ROW,
                     D: tl.constexpr, EXTRA: tl.constexpr, SPLIT: tl.constexpr, MIXED: tl.constexpr,
                     FEATURES: tl.constexpr, DX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_I: tl.constexpr):
    """One (rows, inputs) tile of the block, from ``t = tanh x[m, i]``:

    * ``FEATURES``: ``features[m, d - 1, i] = T_d(t)``, d = 1..D (forward, and the weight gradient);
    * ``DX``: ``dx[m, i] = (1 - t^2) sum_d dfeatures[m, d - 1, i] d U_{d-1}(t)`` (``T_d' = d U_{d-1}``).

    Rows of ``features`` and ``dfeatures`` are ``ROW`` apart; with ``EXTRA`` (the first block) the
    features end in ``EXTRA`` more columns, ``T_0 = 1`` and zeros, which the programs of the first
    input tile write. Backward asks for both in one launch where memory allows: x is read and
    tanh taken once."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ins = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    ok = (rows[:, None] < M) & (ins[None, :] < IN_BLOCK)
    t, tanh_slope = _tanh_and_slope(tl.load(x_ptr + rows[:, None] * stride_xm + ins[None, :], mask=ok, other=0.0))
    at = rows[:, None] * ROW + ins[None, :]
    if FEATURES:
        features = _chebyshev_features(t, D, tl.float32)
        for d in tl.static_range(D):
            store_feature(hi_ptr, lo_ptr, at + d * IN_BLOCK, features[d], ok, SPLIT, LO_PLANE, MIXED)
        if EXTRA > 0:
            if tl.program_id(1) == 0:
                cols = tl.arange(0, EXTRA)
                ones = tl.where(cols[None, :] == 0, 1.0, 0.0) + tl.zeros((BLOCK_M, EXTRA), tl.float32)
                store_feature(hi_ptr, lo_ptr, rows[:, None] * ROW + D * IN_BLOCK + cols[None, :], ones,
                              (rows[:, None] < M) & (cols[None, :] < EXTRA), SPLIT, LO_PLANE, MIXED)
    if DX:
        u_prev = tl.zeros(t.shape, tl.float32)  # U_{-1}
        u_cur = tl.full(t.shape, 1.0, tl.float32)  # U_0
        total = tl.zeros(t.shape, tl.float32)
        for d in tl.static_range(1, D + 1):  # u_cur holds U_{d-1} here
            total += (d * u_cur) * tl.load(dfeat_ptr + at + (d - 1) * IN_BLOCK, mask=ok, other=0.0).to(tl.float32)
            u_next = 2.0 * t * u_cur - u_prev
            u_prev = u_cur
            u_cur = u_next
        tl.store(dx_ptr + rows[:, None] * stride_dxm + ins[None, :],
                 (tanh_slope * total).to(dx_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _pack_weight_kernel(c_ptr, hi_ptr, lo_ptr, N_IN, N_OUT, I0, WIDTH, stride_ci, stride_co, stride_cd, LO_PLANE,
                        WITH_BIAS, D: tl.constexpr, DP: tl.constexpr, EXTRA: tl.constexpr, SPLIT: tl.constexpr,
                        MIXED: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr, BIAS_BLOCK_I: tl.constexpr):
    """``w[(d - 1) * WIDTH + i, o] = coeffs[I0 + i, o, d]`` (d = 1..D) for one (inputs, outputs)
    tile, split like the features when ``SPLIT``: ``coeffs[i, o, 0..D]`` is read as one contiguous
    (inputs, outputs, DP) tile and written out degree by degree. With ``WITH_BIAS`` (1 or 0) the
    grid's first row of programs instead sums ``coeffs[i, o, 0]`` over all inputs for its outputs
    (in fp32, without atomics) and writes the ``EXTRA`` rows after the block's: the bias
    (``T_0 = 1``: it meets the features' column of ones), then zeros. One launch for what was a
    permuted copy, a split and a reduction. The first row, not the last: programs start in grid
    order, and these walk all inputs, so they should not be the last to start."""
    outs = tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)
    if tl.program_id(1) < WITH_BIAS:
        total = tl.zeros((BLOCK_O,), tl.float32)
        for i0 in range(0, N_IN, BIAS_BLOCK_I):
            ins = i0 + tl.arange(0, BIAS_BLOCK_I)
            ok = (ins[:, None] < N_IN) & (outs[None, :] < N_OUT)
            at = c_ptr + ins[:, None] * stride_ci + outs[None, :] * stride_co
            total += tl.sum(tl.load(at, mask=ok, other=0.0).to(tl.float32), axis=0)
        extra = tl.arange(0, EXTRA)
        rows = tl.where(extra[:, None] == 0, total[None, :], 0.0)
        store_feature(hi_ptr, lo_ptr, (D * WIDTH + extra[:, None]) * N_OUT + outs[None, :], rows,
                      (extra[:, None] < EXTRA) & (outs[None, :] < N_OUT), SPLIT, LO_PLANE, MIXED)
    else:
        ins = (tl.program_id(1) - WITH_BIAS) * BLOCK_I + tl.arange(0, BLOCK_I)  # the input's row in the block
        i3 = ins[:, None, None]
        o3 = outs[None, :, None]
        d3 = tl.arange(0, DP)[None, None, :]
        at = c_ptr + (I0 + i3) * stride_ci + o3 * stride_co + d3 * stride_cd
        tile = tl.load(at, mask=(i3 < WIDTH) & (o3 < N_OUT) & (d3 >= 1) & (d3 <= D), other=0.0).to(tl.float32)
        ok = (ins[:, None] < WIDTH) & (outs[None, :] < N_OUT)
        for d in tl.static_range(1, D + 1):
            value = tl.sum(tl.where(d3 == d, tile, 0.0), axis=2)
            store_feature(hi_ptr, lo_ptr, ((d - 1) * WIDTH + ins[:, None]) * N_OUT + outs[None, :], value, ok,
                          SPLIT, LO_PLANE, MIXED)


@triton.jit
def _unpack_grad_kernel(dw_ptr, colsum_ptr, dc_ptr, N_OUT, I0, WIDTH, stride_dw, stride_ci, stride_co, stride_cd,
                        D: tl.constexpr, DP: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr):
    """``dcoeffs[I0 + i, o, d] = dw[(d - 1) * WIDTH + i, o]`` (d = 1..D) and ``dcoeffs[I0 + i, o, 0] =
    colsum[o]`` (``T_0 = 1``: the bias's gradient, ``dy`` summed over rows) for one tile, written
    as whole contiguous ``(o, 0..D)`` runs."""
    outs = tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)
    ins = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    i3 = ins[:, None, None]
    o3 = outs[None, :, None]
    d3 = tl.arange(0, DP)[None, None, :]
    ok = (i3 < WIDTH) & (o3 < N_OUT)
    grad = tl.load(dw_ptr + ((d3 - 1) * WIDTH + i3) * stride_dw + o3, mask=ok & (d3 >= 1) & (d3 <= D), other=0.0)
    grad = grad.to(tl.float32) + tl.load(colsum_ptr + o3 + 0 * d3, mask=ok & (d3 == 0), other=0.0)
    tl.store(dc_ptr + (I0 + i3) * stride_ci + o3 * stride_co + d3 * stride_cd, grad.to(dc_ptr.dtype.element_ty),
             mask=ok & (d3 <= D))


def _pack_tile(degree):
    """(BLOCK_I, BLOCK_O, DP) of the packing kernels: 4,096 elements a tile whatever the degree."""
    dp = next_power_of_2(degree + 1)
    return max(4, 128 // dp), PACK_BLOCK_O, dp


def _features(x_block, degree, dtype, split, mixed=False, extra=0, dfeat=None, dx=None, features=True):
    """The features of ``x_block``, (rows, D * width + ``extra``), as (hi, lo) parts (see
    :func:`split_gemm.feature_buffers`) when ``features``; with ``dfeat`` (laid out the same)
    also ``dx`` (the same columns as ``x_block``) in the same launch."""
    m, width = x_block.shape
    row = degree * width + extra
    # Without features the kernel writes none: x stands in for the buffers it does not touch.
    hi, lo = split_gemm.feature_buffers((m, row), x_block.device, dtype, split, mixed) if features else (x_block, None)
    if m and width:
        grid = (ceil_div(m, FEATURE_BLOCK_M), ceil_div(width, FEATURE_BLOCK_I))
        launch(_features_kernel, grid, x_block, hi, hi if lo is None else lo, x_block if dfeat is None else dfeat,
               x_block if dx is None else dx, m, width, x_block.stride(0), x_block.stride(0) if dx is None else
               dx.stride(0), hi.numel(), row, D=degree, EXTRA=extra, SPLIT=split, MIXED=mixed, FEATURES=features,
               DX=dfeat is not None, BLOCK_M=FEATURE_BLOCK_M, BLOCK_I=FEATURE_BLOCK_I)
    return (hi, lo) if features else None


def _block_weight(coeffs, i0, i1, dtype, split, mixed, extra=0):
    """``coeffs[i0:i1, :, 1:]`` as a (D * width, out) matrix ordered (degree, input), as (hi, lo)
    parts (see :func:`split_gemm.feature_buffers`); with ``extra`` rows more (the first block),
    the bias ``sum_i coeffs[i, :, 0]`` over all inputs and zeros."""
    n_in, n_out, width = coeffs.shape[0], coeffs.shape[1], i1 - i0
    degree = coeffs.shape[2] - 1
    hi, lo = split_gemm.feature_buffers((degree * width + extra, n_out), coeffs.device, dtype, split, mixed)
    if n_out and width:
        block_i, block_o, dp = _pack_tile(degree)
        grid = (ceil_div(n_out, block_o), ceil_div(width, block_i) + (extra > 0))
        launch(_pack_weight_kernel, grid, coeffs, hi, hi if lo is None else lo, n_in, n_out, i0, width,
               *coeffs.stride(), hi.numel(), int(extra > 0), D=degree, DP=dp, EXTRA=max(extra, 1),
               SPLIT=split, MIXED=mixed, BLOCK_I=block_i, BLOCK_O=block_o, BIAS_BLOCK_I=128)
    return hi, lo


def _scatter_grads(dw, colsum, dcoeffs, i0, i1):
    """Write ``dw`` (D * width, out) into ``dcoeffs[i0:i1, :, 1:]`` and ``colsum`` into ``dcoeffs[i0:i1, :, 0]``."""
    n_out, width, degree = dcoeffs.shape[1], i1 - i0, dcoeffs.shape[2] - 1
    if n_out and width:
        block_i, block_o, dp = _pack_tile(degree)
        grid = (ceil_div(n_out, block_o), ceil_div(width, block_i))
        launch(_unpack_grad_kernel, grid, dw, colsum, dcoeffs, n_out, i0, width, dw.stride(0), *dcoeffs.stride(),
               D=degree, DP=dp, BLOCK_I=block_i, BLOCK_O=block_o)


class _ChebyKANGemm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, coeffs, dtype, precision):
        x = x.contiguous()
        m, n_in = x.shape
        n_out, degree = coeffs.shape[1], coeffs.shape[2] - 1
        product = Product(precision, dtype)
        split, mixed = product.split, product.mixed
        blocks = split_gemm.input_blocks(m, n_in, degree, product.element_bytes(dtype), BUFFER_SHARE) if degree else []
        ctx.product, ctx.blocks, ctx.dtype, ctx.weight = product, blocks, dtype, None
        ctx.save_for_backward(x, coeffs)
        if not blocks:  # degree 0: the bias alone
            return coeffs[:, :, 0].sum(dim=0, dtype=torch.float32).to(dtype).expand(m, n_out).contiguous()
        with _device_guard(x):
            # The first block's features end in a column of ones and its weight in the bias, so
            # that the GEMM adds the bias and, in backward, sums dy over the rows (T_0 = 1).
            # Several blocks (large batches) add up in fp32, then round once.
            y = None if len(blocks) == 1 else torch.zeros(m, n_out, device=x.device, dtype=torch.float32)
            for i0, i1 in blocks:
                extra = BIAS_COLUMNS if i0 == 0 else 0
                weight = _block_weight(coeffs, i0, i1, dtype, split, mixed, extra)
                if len(blocks) == 1 and not split:
                    ctx.weight = weight[0]  # 16-bit: small enough to keep for backward (one launch fewer)
                features = _features(x[:, i0:i1], degree, dtype, split, mixed, extra)
                y = product(features, weight, out=y)
                del features, weight
        return y.to(dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, coeffs = ctx.saved_tensors
        product, dtype = ctx.product, ctx.dtype
        split, mixed = product.split, product.mixed
        m, n_in = x.shape
        degree = coeffs.shape[2] - 1
        dy = dy.to(dtype).contiguous()
        if not ctx.blocks:  # degree 0: y does not depend on x; every input's bias gets dy's column sums
            dx = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
            dcoeffs = None
            if ctx.needs_input_grad[1]:
                dcoeffs = dy.sum(dim=0, dtype=torch.float32).to(coeffs.dtype).expand(n_in, -1)[:, :, None].contiguous()
            return dx, dcoeffs, None, None
        dy_parts = product.parts(dy)
        dx = torch.empty_like(x) if ctx.needs_input_grad[0] else None  # every block writes its columns
        dcoeffs = torch.empty_like(coeffs) if ctx.needs_input_grad[1] else None
        colsum = None
        with _device_guard(x):
            for i0, i1 in ctx.blocks:
                width, extra = i1 - i0, BIAS_COLUMNS if i0 == 0 else 0
                dfeat = None
                if dx is not None and m:
                    weight = (ctx.weight, None) if ctx.weight is not None else \
                        _block_weight(coeffs, i0, i1, dtype, split, mixed, extra)
                    dfeat = product(dy_parts, transposed(weight))  # (rows, D * width + extra)
                    del weight
                # dx and the features for dW in one launch; in fp32 the split features (8 bytes
                # each) are made after dfeat is freed, so that the two never take memory together.
                if dfeat is not None and (split or dcoeffs is None):
                    _features(x[:, i0:i1], degree, dtype, split, mixed, extra, dfeat, dx[:, i0:i1], features=False)
                    dfeat = None
                if dcoeffs is not None:
                    features = _features(x[:, i0:i1], degree, dtype, split, mixed, extra, dfeat,
                                         None if dfeat is None else dx[:, i0:i1])
                    del dfeat
                    dw = product(transposed(features), dy_parts)  # (D * width + extra, out)
                    del features
                    if extra:  # the column of ones: dW's bias row holds dy summed over the rows
                        # (a copy when more blocks follow: a view would keep this block's dW alive)
                        colsum = dw[degree * width] if len(ctx.blocks) == 1 else dw[degree * width].clone()
                    _scatter_grads(dw, colsum, dcoeffs, i0, i1)
                    del dw
        ctx.weight = None
        return dx, dcoeffs, None, None


def chebykan_gemm(x: torch.Tensor, coeffs: torch.Tensor, *, input_precision: str | None = None,
                  compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Chebyshev-KAN layer through feature kernels and cuBLAS; same arguments, result and
    gradients as :func:`labkit.kan.triton_chebyshev.chebykan_triton`."""
    _check_inputs(x, coeffs, compute_dtype)
    dtype = compute_dtype or x.dtype
    return _ChebyKANGemm.apply(x, coeffs, dtype, resolve_input_precision(dtype, input_precision))
