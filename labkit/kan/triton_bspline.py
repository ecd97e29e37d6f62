"""Fused Triton kernels for the B-spline KAN layer (efficient-kan semantics), forward and backward.

The layer (see :func:`labkit.kan.reference.bspline_kan_reference`) is

    y = silu(x) @ base_weight.T + sum_j B_j(x) @ (spline_weight[:, :, j] * spline_scaler).T

with ``B_j`` the order-``k`` B-spline bases on the knot vector ``grid[i]`` of input ``i``.

One GEMM in disguise
--------------------
Give every input ``i`` the ``F = G + k + 1`` *features*
``[silu(x_i), B_0(x_i), ..., B_{G+k-1}(x_i)]`` and stack the weights into one tensor
``W`` of shape ``(F, in, out)`` (``W[0] = base_weight.T``, ``W[1 + j] = (spline_weight[..., j]
* spline_scaler).T``). Then ``y = sum_f feature_f(x) @ W[f]``: a GEMM with ``K = in * F``.
efficient-kan materialises the (M, in, G+k) feature tensor and keeps it for backward; here
the features are recomputed in registers, tile by tile, and fed straight to ``tl.dot``.
``W`` is weight-sized, so building it in PyTorch once per call is cheap.

Kernels (rows ``M``, inputs ``K``, outputs ``N`` in all block names)
-------------------------------------------------------------------
* forward: one ``(BLOCK_M, BLOCK_N)`` tile of y per program. First the base branch, an
  ordinary GEMM over ``silu(x)``; then the spline bases ``CHUNK`` at a time: for each chunk,
  loop over the inputs, compute those ``CHUNK`` bases of the x tile (Cox-de Boor, unrolled)
  and do ``CHUNK`` dots into the one fp32 accumulator.
* grad input: one ``(BLOCK_M, BLOCK_K)`` tile of dx per program. For a chunk of features,
  ``CHUNK`` accumulators ``P_f = dy @ W[f].T`` are built over the outputs, then multiplied
  by the feature slopes ``feature_f'(x)`` (the B-spline derivative formula) and summed.
* grad weight: one ``(BLOCK_K, BLOCK_N)`` tile of dW per program: ``dW[f] = feature_f(x).T @ dy``
  summed over the rows, ``CHUNK`` accumulators at a time, stored straight into the layouts of
  base_weight and spline_weight. PyTorch then applies the chain rule through the scaler
  (weight-sized work): ``d spline_weight = dW * scaler``, ``d scaler = sum_j dW_j *
  spline_weight_j``. When there are few tiles (small in*out, large M) the rows are split
  over programs ("split-K") and the fp32 partial sums are added in PyTorch.

Why chunks of features? ``F`` fp32 accumulators (or ``F`` live basis tiles) per program cost
``F`` times the registers of a plain GEMM. A chunk keeps ``CHUNK`` of them alive, the chunk
loop is an ordinary (not unrolled) loop so the code size does not grow with ``G``, and the
only price is recomputing ``k (k + 1) / 2`` lower-order bases at each chunk's left edge.

Nothing of size ``M * in * (G + k)`` is ever stored: backward sees only x, the grid and the
weights. No atomics anywhere.

Numerics: bases, slopes and accumulators are fp32; features are cast to the operand dtype
(fp32, fp16 or bf16) right before ``tl.dot``. Knot spans of zero width contribute 0 (the
PyTorch reference divides 0 by 0 there and returns NaN).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from labkit.backend import interpret_mode

#: Spline orders the kernels are built for; the unrolled Cox-de Boor grows as order**2.
MAX_SPLINE_ORDER = 8
_OPERAND_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INT32_LIMIT = 2**31 - 1


def kernel_supports(grid_size: int, spline_order: int) -> bool:
    """Whether :func:`bspline_kan_triton` handles this grid size ``G`` and spline order ``k``.

    Any ``G >= 1`` works: the features are processed in chunks whose loop is not unrolled,
    so compile time and registers do not depend on ``G`` (the work grows like ``G + k + 1``).
    """
    return grid_size >= 1 and 0 <= spline_order <= MAX_SPLINE_ORDER


# --------------------------------------------------------------------------------------
# Building blocks shared by the three kernels (all math in fp32 registers)
# --------------------------------------------------------------------------------------
@triton.jit
def _knot(knot_ptr, knot_mask, index, N_KNOTS: tl.constexpr):
    """Knot ``t_index`` of every input in the tile; knots past ``N_KNOTS`` read as 0."""
    return tl.load(knot_ptr + index, mask=knot_mask & (index < N_KNOTS), other=0.0)


@triton.jit
def _inverse_span(t_lo, t_hi):
    """``1 / (t_hi - t_lo)``, and 0 for an empty span.

    A basis divided by an empty span is 0 there itself, so 0 is the right contribution (the
    reference divides and gets ``0 * inf = NaN``). Past the grid's end, where knots read
    as 0, a span can be negative: 0 as well. Knots are per-input vectors: this is cheap
    next to the per-element work.
    """
    span = t_hi - t_lo
    return tl.where(span > 0, 1.0 / tl.where(span > 0, span, 1.0), 0.0)


@triton.jit
def _bspline_bases(x, knot_ptr, knot_mask, first, N_KNOTS: tl.constexpr, COUNT: tl.constexpr,
                   ORDER: tl.constexpr):
    """``B_{j,ORDER}(x)`` for ``j = first .. first + COUNT - 1``, returned as a tuple of tiles.

    ``x`` is a tile of inputs and ``knot_ptr`` points at the knot vector of each input,
    broadcastable against ``x`` (shape ``(1, BLOCK)`` when inputs run along columns,
    ``(BLOCK, 1)`` when they run along rows). Knots past ``N_KNOTS`` read as 0, which keeps
    the bases of a chunk that runs past the last basis finite (their weights are masked).

    Cox-de Boor with half-open order-0 intervals ``[t_j, t_{j+1})``, written with
    ``u_{j,p} = B_{j,p-1} / (t_{j+p} - t_j)``:

        B_{j,p} = (x - t_j) * u_{j,p} - (x - t_{j+p+1}) * u_{j+1,p}

    The triangle is swept along its diagonal (below, indices are relative to ``first``):
    step ``s`` adds the order-0 basis ``s`` and then, order by order, ``B_{s-p,p}``. The
    ``u`` that step ``s`` makes for ``B_{s-p+1,p-1}`` is reused by step ``s + 1``, so each
    basis costs one multiply and one fused multiply-add, and only a few tiles per order
    stay alive from one step to the next (registers, not the whole triangle).
    """
    knots = (_knot(knot_ptr, knot_mask, first, N_KNOTS),)
    distance = (x - knots[0],)  # distance[j] = x - t_j
    previous = ()  # the bases B_{s-1-p,p} made by the previous step
    carried_u = ()  # carried_u[p - 1] = u_{s-p,p}, made by the previous step
    bases = ()
    for s in tl.static_range(COUNT + ORDER):
        knots = knots + (_knot(knot_ptr, knot_mask, first + s + 1, N_KNOTS),)
        distance = distance + (x - knots[s + 1],)
        current = (((x >= knots[s]) & (x < knots[s + 1])).to(tl.float32),)  # B_{s,0}
        next_u = ()
        for p in tl.static_range(1, ORDER + 1):
            if p <= s:  # B_{s-p,p} needs order-0 bases s-p .. s, all inside this chunk
                if p == s:  # the first basis of order p: no u carried over yet
                    u_low = previous[p - 1] * _inverse_span(knots[0], knots[p])
                else:
                    u_low = carried_u[p - 1]
                u_high = current[p - 1] * _inverse_span(knots[s - p + 1], knots[s + 1])
                current = current + (distance[s - p] * u_low - distance[s + 1] * u_high,)
                next_u = next_u + (u_high,)
        previous = current
        carried_u = next_u
        if s >= ORDER:
            bases = bases + (current[ORDER],)
    return bases


@triton.jit
def _bspline_slopes(x, knot_ptr, knot_mask, first, N_KNOTS: tl.constexpr, COUNT: tl.constexpr,
                    ORDER: tl.constexpr):
    """``d B_{j,ORDER} / dx`` for ``j = first .. first + COUNT - 1`` (tuple of tiles).

    ``B'_{j,k} = k * (B_{j,k-1} / (t_{j+k} - t_j) - B_{j+1,k-1} / (t_{j+k+1} - t_{j+1}))``,
    evaluated with the same half-open intervals as the bases, so at a knot it is the slope
    of the piece on the right, exactly what autograd gives for the reference.
    """
    slopes = ()
    if ORDER == 0:  # piecewise constant: zero slope almost everywhere
        for c in tl.static_range(COUNT):
            slopes = slopes + (tl.zeros_like(x),)
    else:
        lower = _bspline_bases(x, knot_ptr, knot_mask, first, N_KNOTS, COUNT + 1, ORDER - 1)
        u_low = lower[0] * _inverse_span(_knot(knot_ptr, knot_mask, first, N_KNOTS),
                                         _knot(knot_ptr, knot_mask, first + ORDER, N_KNOTS))
        for c in tl.static_range(COUNT):
            u_high = lower[c + 1] * _inverse_span(_knot(knot_ptr, knot_mask, first + c + 1, N_KNOTS),
                                                  _knot(knot_ptr, knot_mask, first + c + 1 + ORDER, N_KNOTS))
            slopes = slopes + (ORDER * (u_low - u_high),)
            u_low = u_high
    return slopes


@triton.jit
def _silu(x):
    return x * tl.sigmoid(x)


@triton.jit
def _silu_slope(x):
    sig = tl.sigmoid(x)
    return sig * (1.0 + x * (1.0 - sig))


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr):
    """``acc + a @ b``. ``PRECISION`` is ``"ieee"`` or ``"tf32"`` (used for fp32 operands only).

    ``"interpreter"``: the CPU interpreter runs ``tl.dot`` as a NumPy matmul and NumPy has no
    bfloat16 (it would multiply the raw 16-bit patterns), so the operands, already rounded to
    their dtype, are widened to fp32 first. A GPU multiplies them exactly as well.
    """
    if PRECISION == "interpreter":
        result = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        result = tl.dot(a, b, acc, input_precision=PRECISION)
    return result


@triton.jit
def _swizzled_tile(pid, n_rows, n_cols, GROUP: tl.constexpr):
    """Map a program id to a (row block, column block) pair, ``GROUP`` row blocks at a time.

    Programs that run at the same time then share their column operand tiles in L2.
    """
    per_group = GROUP * n_cols
    first_row = (pid // per_group) * GROUP
    rows_in_group = tl.minimum(n_rows - first_row, GROUP)
    row = first_row + (pid % per_group) % rows_in_group
    col = (pid % per_group) // rows_in_group
    return row, col


# --------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------
@triton.jit
def _forward_kernel(
    x_ptr, grid_ptr, w_ptr, y_ptr,
    M, IN, OUT, M_BUCKET,
    stride_xm, stride_gi, stride_wf, stride_wi, stride_ym,
    GRID_SIZE: tl.constexpr, ORDER: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, CHUNK: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """``y[m, o] = sum_{f, i} feature_f(x[m, i]) * W[f, i, o]`` for one (BLOCK_M, BLOCK_N) tile."""
    N_BASES: tl.constexpr = GRID_SIZE + ORDER
    N_KNOTS: tl.constexpr = GRID_SIZE + 2 * ORDER + 1
    pid_m, pid_n = _swizzled_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(OUT, BLOCK_N), GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < OUT
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)

    # Base branch: an ordinary GEMM over silu(x).
    for i0 in range(0, IN, BLOCK_K):
        ins = i0 + tl.arange(0, BLOCK_K)
        in_ok = ins < IN
        x = tl.load(x_ptr + rows[:, None] * stride_xm + ins[None, :],
                    mask=row_ok[:, None] & in_ok[None, :], other=0.0).to(tl.float32)
        w = tl.load(w_ptr + ins[:, None] * stride_wi + cols[None, :],
                    mask=in_ok[:, None] & col_ok[None, :], other=0.0)
        acc = _dot(_silu(x).to(w.dtype), w, acc, PRECISION)

    # Spline branch, CHUNK bases at a time; bases past N_BASES meet zero (masked) weights.
    for b0 in range(0, N_BASES, CHUNK):
        for i0 in range(0, IN, BLOCK_K):
            ins = i0 + tl.arange(0, BLOCK_K)
            in_ok = ins < IN
            x = tl.load(x_ptr + rows[:, None] * stride_xm + ins[None, :],
                        mask=row_ok[:, None] & in_ok[None, :], other=0.0).to(tl.float32)
            bases = _bspline_bases(x, grid_ptr + ins[None, :] * stride_gi, in_ok[None, :], b0,
                                   N_KNOTS, CHUNK, ORDER)
            for c in tl.static_range(CHUNK):
                w = tl.load(w_ptr + (1 + b0 + c) * stride_wf + ins[:, None] * stride_wi + cols[None, :],
                            mask=(b0 + c < N_BASES) & in_ok[:, None] & col_ok[None, :], other=0.0)
                acc = _dot(bases[c].to(w.dtype), w, acc, PRECISION)

    tl.store(y_ptr + rows[:, None] * stride_ym + cols[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _grad_input_kernel(
    dy_ptr, w_ptr, x_ptr, grid_ptr, dx_ptr,
    M, IN, OUT, M_BUCKET,
    stride_dym, stride_wf, stride_wi, stride_xm, stride_gi, stride_dxm,
    GRID_SIZE: tl.constexpr, ORDER: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, CHUNK: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """``dx[m, i] = sum_f feature_f'(x[m, i]) * (dy @ W[f].T)[m, i]`` for one (BLOCK_M, BLOCK_K) tile.

    The slopes depend on (m, i) only, so each ``dy @ W[f].T`` is accumulated over all outputs
    first and multiplied by its slope once, in the epilogue of its chunk.
    """
    N_BASES: tl.constexpr = GRID_SIZE + ORDER
    N_KNOTS: tl.constexpr = GRID_SIZE + 2 * ORDER + 1
    pid_m, pid_k = _swizzled_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(IN, BLOCK_K), GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ins = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    row_ok = rows < M
    in_ok = ins < IN
    knot_ptr = grid_ptr + ins[None, :] * stride_gi
    # W[f].T tile (BLOCK_N outputs, BLOCK_K inputs) = W[f, ins, outs] read transposed.
    wt_ptr = w_ptr + ins[None, :] * stride_wi

    # Base branch.
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for o0 in range(0, OUT, BLOCK_N):
        outs = o0 + tl.arange(0, BLOCK_N)
        out_ok = outs < OUT
        dy = tl.load(dy_ptr + rows[:, None] * stride_dym + outs[None, :],
                     mask=row_ok[:, None] & out_ok[None, :], other=0.0)
        wt = tl.load(wt_ptr + outs[:, None], mask=out_ok[:, None] & in_ok[None, :], other=0.0)
        acc = _dot(dy, wt, acc, PRECISION)
    x = tl.load(x_ptr + rows[:, None] * stride_xm + ins[None, :], mask=row_ok[:, None] & in_ok[None, :],
                other=0.0).to(tl.float32)
    dx = _silu_slope(x) * acc

    # Spline branch, CHUNK features at a time.
    for b0 in range(0, N_BASES, CHUNK):
        accs = ()
        for c in tl.static_range(CHUNK):
            accs = accs + (tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32),)
        for o0 in range(0, OUT, BLOCK_N):
            outs = o0 + tl.arange(0, BLOCK_N)
            out_ok = outs < OUT
            dy = tl.load(dy_ptr + rows[:, None] * stride_dym + outs[None, :],
                         mask=row_ok[:, None] & out_ok[None, :], other=0.0)
            updated = ()
            for c in tl.static_range(CHUNK):
                wt = tl.load(wt_ptr + (1 + b0 + c) * stride_wf + outs[:, None],
                             mask=(b0 + c < N_BASES) & out_ok[:, None] & in_ok[None, :], other=0.0)
                updated = updated + (_dot(dy, wt, accs[c], PRECISION),)
            accs = updated
        # One slope at a time: the accumulators already fill most registers, and a slope
        # needs only its own small Cox-de Boor triangle (this runs once per chunk).
        # (b0 - b0 keeps the x pointers from being hoisted out of the chunk loop and kept in
        # registers through the whole GEMM loop; the compiler cannot prove it is 0.)
        x = tl.load(x_ptr + rows[:, None] * stride_xm + (ins + tl.minimum(b0, 0))[None, :],
                    mask=row_ok[:, None] & in_ok[None, :], other=0.0).to(tl.float32)
        for c in tl.static_range(CHUNK):
            slope = _bspline_slopes(x, knot_ptr, in_ok[None, :], b0 + c, N_KNOTS, 1, ORDER)
            dx += slope[0] * accs[c]

    tl.store(dx_ptr + rows[:, None] * stride_dxm + ins[None, :], dx.to(dx_ptr.dtype.element_ty),
             mask=row_ok[:, None] & in_ok[None, :])


@triton.jit
def _grad_weight_kernel(
    x_ptr, grid_ptr, dy_ptr, d_base_ptr, d_spline_ptr,
    M, IN, OUT, M_BUCKET, ROWS_PER_SPLIT,
    stride_xm, stride_gi, stride_dym, split_stride_base, split_stride_spline,
    GRID_SIZE: tl.constexpr, ORDER: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, CHUNK: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """``dW[f, i, o] = sum_m feature_f(x[m, i]) * dy[m, o]`` for a (BLOCK_K, BLOCK_N) tile of (i, o).

    Written straight into the parameters' layouts: ``d_base[o, i] = dW[0, i, o]`` and
    ``d_spline[o, i, j] = dW[1 + j, i, o]`` (before the scaler, which PyTorch applies).
    Program axis 1 picks a slice of ``ROWS_PER_SPLIT`` rows (split-K, partial sums).
    """
    N_BASES: tl.constexpr = GRID_SIZE + ORDER
    N_KNOTS: tl.constexpr = GRID_SIZE + 2 * ORDER + 1
    pid_k, pid_n = _swizzled_tile(tl.program_id(0), tl.cdiv(IN, BLOCK_K), tl.cdiv(OUT, BLOCK_N), GROUP_M)
    split = tl.program_id(1)
    row_begin = split * ROWS_PER_SPLIT
    row_end = tl.minimum(M, row_begin + ROWS_PER_SPLIT)
    ins = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    outs = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    in_ok = ins < IN
    out_ok = outs < OUT
    # Inputs run along the rows of every tile here, so knots are (BLOCK_K, 1) columns.
    knot_ptr = grid_ptr + ins[:, None] * stride_gi
    d_base_ptr += split * split_stride_base
    d_spline_ptr += split * split_stride_spline

    # Base branch: d_base = silu(x).T @ dy.
    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    for m0 in range(row_begin, row_end, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        row_ok = rows < row_end
        xt = tl.load(x_ptr + rows[None, :] * stride_xm + ins[:, None],
                     mask=in_ok[:, None] & row_ok[None, :], other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + rows[:, None] * stride_dym + outs[None, :],
                     mask=row_ok[:, None] & out_ok[None, :], other=0.0)
        acc = _dot(_silu(xt).to(dy.dtype), dy, acc, PRECISION)
    tl.store(d_base_ptr + outs[None, :] * IN + ins[:, None], acc.to(d_base_ptr.dtype.element_ty),
             mask=in_ok[:, None] & out_ok[None, :])

    # Spline branch, CHUNK bases at a time.
    for b0 in range(0, N_BASES, CHUNK):
        accs = ()
        for c in tl.static_range(CHUNK):
            accs = accs + (tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32),)
        for m0 in range(row_begin, row_end, BLOCK_M):
            rows = m0 + tl.arange(0, BLOCK_M)
            row_ok = rows < row_end
            xt = tl.load(x_ptr + rows[None, :] * stride_xm + ins[:, None],
                         mask=in_ok[:, None] & row_ok[None, :], other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + rows[:, None] * stride_dym + outs[None, :],
                         mask=row_ok[:, None] & out_ok[None, :], other=0.0)
            bases = _bspline_bases(xt, knot_ptr, in_ok[:, None], b0, N_KNOTS, CHUNK, ORDER)
            updated = ()
            for c in tl.static_range(CHUNK):
                updated = updated + (_dot(bases[c].to(dy.dtype), dy, accs[c], PRECISION),)
            accs = updated
        for c in tl.static_range(CHUNK):
            # d_spline[o, i, b0 + c]: the chunk index enters the row vector before the
            # broadcast, so no full-tile index is loop-invariant (and kept in registers).
            coeff = outs[None, :] * (IN * N_BASES) + (ins * N_BASES + b0 + c)[:, None]
            tl.store(d_spline_ptr + coeff, accs[c].to(d_spline_ptr.dtype.element_ty),
                     mask=in_ok[:, None] & out_ok[None, :] & (b0 + c < N_BASES))


# --------------------------------------------------------------------------------------
# Launch configurations
# --------------------------------------------------------------------------------------
def _config(block_m, block_n, block_k, chunk, warps, stages, group=8):
    meta = dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, CHUNK=chunk, GROUP_M=group)
    return triton.Config(meta, num_warps=warps, num_stages=stages)


# Block names mean the same in every kernel: M rows, N outputs, K inputs. The tile of the
# forward is (M, N), of grad input (M, K), of grad weight (K, N); the third block is the
# reduction step.
_FORWARD_CONFIGS = [
    _config(128, 128, 32, 4, 8, 3),
    _config(128, 256, 32, 4, 8, 3),
    _config(128, 128, 64, 2, 8, 3),
    _config(64, 128, 32, 4, 4, 4),
    _config(128, 64, 32, 4, 4, 4),
    _config(64, 64, 32, 4, 4, 3),
]
_GRAD_INPUT_CONFIGS = [
    _config(128, 64, 64, 4, 8, 3),
    _config(128, 64, 128, 2, 8, 3),
    _config(64, 64, 64, 4, 4, 4),
    _config(128, 32, 64, 8, 8, 3),
    _config(64, 64, 32, 4, 4, 3),
]
_GRAD_WEIGHT_CONFIGS = [
    _config(32, 128, 64, 4, 8, 3),
    _config(64, 128, 64, 2, 8, 3),
    _config(32, 128, 128, 2, 8, 3),
    _config(32, 256, 64, 2, 8, 3),
    _config(64, 64, 64, 4, 4, 3),
]
# One fixed small configuration: CPU interpreter runs (fast tests that still cross block,
# chunk and masking boundaries) and tiny problems on GPU (no autotuning compile storm for
# layers like [2, 1, 1] whose grid size changes during grid extension).
_INTERPRETER_CONFIG = _config(64, 32, 32, 4, 1, 1)
_SMALL_CONFIG = _config(32, 32, 32, 4, 4, 2)
_SMALL_PROBLEM_MACS = 2**26  # M * in * out * (G + k + 1) below this: no autotuning

_SMEM_BUDGET = 200 * 1024  # bytes; H100 allows 227 KiB per block


def _prune(loads_per_stage):
    """An ``early_config_prune`` that drops configs whose pipelined tiles overflow shared memory
    or whose tile is far larger than the problem."""

    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        elem = args["x_ptr"].element_size()
        fitting = []
        for config in configs:
            meta = config.kwargs
            too_big = meta["BLOCK_N"] > 2 * max(16, triton.next_power_of_2(args["OUT"])) or meta[
                "BLOCK_K"] > 2 * max(16, triton.next_power_of_2(args["IN"]))
            smem = config.num_stages * elem * loads_per_stage(meta)
            if smem <= _SMEM_BUDGET and not too_big:
                fitting.append(config)
        return fitting or [min(configs, key=lambda c: c.num_stages * loads_per_stage(c.kwargs))]

    return prune


def _autotuned(kernel, configs, loads_per_stage):
    return triton.autotune(
        configs=configs,
        key=["M_BUCKET", "IN", "OUT", "GRID_SIZE", "ORDER", "PRECISION"],
        prune_configs_by={"early_config_prune": _prune(loads_per_stage)},
    )(kernel)


_forward_tuned = _autotuned(
    _forward_kernel, _FORWARD_CONFIGS,
    lambda m: m["BLOCK_M"] * m["BLOCK_K"] + m["CHUNK"] * m["BLOCK_K"] * m["BLOCK_N"])
_grad_input_tuned = _autotuned(
    _grad_input_kernel, _GRAD_INPUT_CONFIGS,
    lambda m: m["BLOCK_M"] * m["BLOCK_N"] + m["CHUNK"] * m["BLOCK_N"] * m["BLOCK_K"])
_grad_weight_tuned = _autotuned(
    _grad_weight_kernel, _GRAD_WEIGHT_CONFIGS,
    lambda m: m["BLOCK_M"] * m["BLOCK_K"] + m["BLOCK_M"] * m["BLOCK_N"])


def _make_interpreter_scalars_indexable() -> None:
    """Let ``range(0, n, BLOCK)`` run in Triton 3.6's interpreter under NumPy >= 2.4.

    The interpreter holds every scalar as a NumPy array of shape (1,) and converts it to a
    Python int with ``int(array)``, which NumPy 2.4 rejects ("only 0-dimensional arrays can
    be converted", triton-lang/triton#9171). Re-register ``__index__`` through ``.item()``.
    """
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "scalar_index_via_item", False):
        return

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    patch_lang_tensor.scalar_index_via_item = True
    interpreter._patch_lang_tensor = patch_lang_tensor


def _launch(tuned, args, macs, grid):
    """Run ``tuned`` (an autotuner) or its kernel with a fixed config on small or CPU problems."""
    if interpret_mode():
        _make_interpreter_scalars_indexable()
    if interpret_mode() or macs < _SMALL_PROBLEM_MACS:
        config = _INTERPRETER_CONFIG if interpret_mode() else _SMALL_CONFIG
        meta = {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}
        tuned.fn[lambda _: grid(config.kwargs)](**args, **meta)
    else:
        tuned[lambda meta: grid(meta)](**args)


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 operands: exact fp32 products unless PyTorch allows TF32 for matmuls."""
    if interpret_mode():
        return "interpreter"
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _launch_forward(x, grid, w, grid_size, order, precision):
    m, n_in = x.shape
    n_out = w.shape[2]
    y = torch.empty((m, n_out), device=x.device, dtype=x.dtype)
    if m == 0:
        return y
    args = dict(
        x_ptr=x, grid_ptr=grid, w_ptr=w, y_ptr=y, M=m, IN=n_in, OUT=n_out, M_BUCKET=triton.next_power_of_2(m),
        stride_xm=x.stride(0), stride_gi=grid.stride(0), stride_wf=w.stride(0), stride_wi=w.stride(1),
        stride_ym=y.stride(0), GRID_SIZE=grid_size, ORDER=order, PRECISION=precision,
    )
    _launch(_forward_tuned, args, m * n_in * n_out * w.shape[0],
            lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n_out, meta["BLOCK_N"]),))
    return y


def _launch_grad_input(dy, w, x, grid, grid_size, order, precision):
    m, n_in = x.shape
    n_out = w.shape[2]
    dx = torch.empty_like(x)
    if m == 0:
        return dx
    args = dict(
        dy_ptr=dy, w_ptr=w, x_ptr=x, grid_ptr=grid, dx_ptr=dx, M=m, IN=n_in, OUT=n_out,
        M_BUCKET=triton.next_power_of_2(m), stride_dym=dy.stride(0), stride_wf=w.stride(0), stride_wi=w.stride(1),
        stride_xm=x.stride(0), stride_gi=grid.stride(0), stride_dxm=dx.stride(0),
        GRID_SIZE=grid_size, ORDER=order, PRECISION=precision,
    )
    _launch(_grad_input_tuned, args, m * n_in * n_out * w.shape[0],
            lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n_in, meta["BLOCK_K"]),))
    return dx


def _grad_weight_splits(m: int, n_in: int, n_out: int, device: torch.device) -> int:
    """How many row slices the weight gradient is split into (split-K).

    One program per (64 inputs x 128 outputs) tile leaves most SMs idle when in * out is
    small and M is large (e.g. a ViT-Tiny MLP: 3 x 6 tiles, M = 25k tokens). Each slice
    writes an fp32 partial gradient that PyTorch sums, so stay at a few slices.
    """
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    tiles = triton.cdiv(n_in, 64) * triton.cdiv(n_out, 128)
    if tiles >= sms:
        return 1
    return max(1, min(8, triton.cdiv(2 * sms, tiles), m // 1024))


def _launch_grad_weight(x, grid, dy, base_weight, spline_weight, spline_scaler, grid_size, order, precision):
    """Gradients of base_weight, spline_weight and spline_scaler (None without a scaler)."""
    m, n_in = x.shape
    n_out, _, n_bases = spline_weight.shape
    splits = max(1, min(_grad_weight_splits(m, n_in, n_out, x.device), m))
    while splits > 1 and splits * n_out * n_in * n_bases > _INT32_LIMIT:  # keep int32 indexing
        splits //= 2
    rows_per_split = triton.cdiv(triton.cdiv(max(m, 1), splits), 16) * 16
    splits = max(1, triton.cdiv(m, rows_per_split))

    # One slice writes the gradients in the weights' dtype; several write fp32 partial sums.
    partial = {} if splits == 1 else {"size": (splits,), "dtype": torch.float32}
    d_base = base_weight.new_empty(partial.get("size", ()) + base_weight.shape, dtype=partial.get("dtype"))
    d_spline = spline_weight.new_empty(partial.get("size", ()) + spline_weight.shape, dtype=partial.get("dtype"))
    args = dict(
        x_ptr=x, grid_ptr=grid, dy_ptr=dy, d_base_ptr=d_base, d_spline_ptr=d_spline,
        M=m, IN=n_in, OUT=n_out, M_BUCKET=triton.next_power_of_2(max(m, 1)), ROWS_PER_SPLIT=rows_per_split,
        stride_xm=x.stride(0), stride_gi=grid.stride(0), stride_dym=dy.stride(0),
        split_stride_base=n_out * n_in, split_stride_spline=n_out * n_in * n_bases,
        GRID_SIZE=grid_size, ORDER=order, PRECISION=precision,
    )
    _launch(_grad_weight_tuned, args, m * n_in * n_out * (n_bases + 1),
            lambda meta: (triton.cdiv(n_in, meta["BLOCK_K"]) * triton.cdiv(n_out, meta["BLOCK_N"]), splits))
    if splits > 1:
        d_base = d_base.sum(0).to(base_weight.dtype)
        d_spline = d_spline.sum(0).to(spline_weight.dtype)
    if spline_scaler is None:
        return d_base, d_spline, None
    # W[1 + j] = spline_weight[..., j] * scaler: the chain rule splits dW between the two.
    # einsum contracts j as a batched matmul: no (out, in, G + k) temporary.
    d_scaler = torch.einsum("oij,oij->oi", d_spline, spline_weight)
    d_spline = d_spline.mul_(spline_scaler.unsqueeze(-1))
    return d_base, d_spline, d_scaler


# --------------------------------------------------------------------------------------
# PyTorch side: validation, the combined weight, autograd
# --------------------------------------------------------------------------------------
def _validate(x, grid, base_weight, spline_weight, spline_scaler, spline_order) -> int:
    """Check every argument; return the grid size ``G``."""
    if isinstance(spline_order, bool) or not isinstance(spline_order, int):
        raise TypeError(f"spline_order must be an int, got {type(spline_order).__name__}")
    if not 0 <= spline_order <= MAX_SPLINE_ORDER:
        raise ValueError(f"spline_order must be in 0..{MAX_SPLINE_ORDER}, got {spline_order}")
    tensors = {"x": x, "grid": grid, "base_weight": base_weight, "spline_weight": spline_weight}
    if spline_scaler is not None:
        tensors["spline_scaler"] = spline_scaler
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (M, in_features), got shape {tuple(x.shape)}; flatten the leading "
                         "dimensions first (labkit.kan.ops.bspline_kan does this)")
    if x.dtype not in _OPERAND_DTYPES:
        raise TypeError(f"x must be float32, float16 or bfloat16, got {x.dtype}")
    for name in ("base_weight", "spline_weight", "spline_scaler"):
        if name in tensors and tensors[name].dtype != x.dtype:
            raise TypeError(f"{name} has dtype {tensors[name].dtype} but x has {x.dtype}; cast the weights "
                            "to x's dtype (labkit.kan.ops.bspline_kan does this under autocast)")
    if grid.dtype != torch.float32:
        raise TypeError(f"grid must be float32 (knots rounded to 16 bits move by up to 0.4%), got {grid.dtype}; "
                        "keep the grid buffer in float32 when casting the layer")
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) != 1:
        raise ValueError(f"all tensors must be on one device, got {devices}")

    n_in = x.shape[1]
    if grid.dim() != 2 or grid.shape[0] != n_in:
        raise ValueError(f"grid must have shape (in_features={n_in}, G + 2*spline_order + 1), "
                         f"got {tuple(grid.shape)}")
    grid_size = grid.shape[1] - 2 * spline_order - 1
    if grid_size < 1:
        raise ValueError(f"grid has {grid.shape[1]} knots per input; spline_order={spline_order} needs at least "
                         f"{2 * spline_order + 2} (G + 2k + 1 with G >= 1)")
    if base_weight.dim() != 2 or base_weight.shape[1] != n_in:
        raise ValueError(f"base_weight must have shape (out_features, in_features={n_in}), "
                         f"got {tuple(base_weight.shape)}")
    n_out = base_weight.shape[0]
    n_bases = grid_size + spline_order
    if tuple(spline_weight.shape) != (n_out, n_in, n_bases):
        raise ValueError(f"spline_weight must have shape (out, in, G + k) = {(n_out, n_in, n_bases)} "
                         f"(G={grid_size} from the grid), got {tuple(spline_weight.shape)}")
    if spline_scaler is not None and tuple(spline_scaler.shape) != (n_out, n_in):
        raise ValueError(f"spline_scaler must have shape (out, in) = {(n_out, n_in)} or be None, "
                         f"got {tuple(spline_scaler.shape)}")
    if n_in == 0 or n_out == 0:
        raise ValueError(f"in_features and out_features must be positive, got {n_in} and {n_out}")
    biggest = max(x.numel(), x.shape[0] * n_out, (n_bases + 1) * n_in * n_out)
    if biggest > _INT32_LIMIT:
        raise ValueError(f"a tensor of {biggest} elements is too large for the kernels' int32 indexing; "
                         "split the batch")
    return grid_size


def combined_weight(base_weight, spline_weight, spline_scaler) -> torch.Tensor:
    """The weight of the one-GEMM view, ``W`` of shape ``(G + k + 1, in, out)``.

    ``W[0] = base_weight.T`` and ``W[1 + j] = (spline_weight[:, :, j] * spline_scaler).T``,
    in the weights' dtype (the scaled product is rounded once, as in the reference).
    """
    n_out, n_in, n_bases = spline_weight.shape
    w = base_weight.new_empty((n_bases + 1, n_in, n_out))
    w[0].copy_(base_weight.t())
    spline = spline_weight.permute(2, 1, 0)
    if spline_scaler is None:
        w[1:].copy_(spline)
    else:
        torch.mul(spline, spline_scaler.t(), out=w[1:])
    return w


class _BSplineKAN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, grid, base_weight, spline_weight, spline_scaler, spline_order):
        grid_size = _validate(x, grid, base_weight, spline_weight, spline_scaler, spline_order)
        x, grid = x.contiguous(), grid.contiguous()
        precision = _dot_precision(x.dtype)
        w = combined_weight(base_weight, spline_weight, spline_scaler)
        y = _launch_forward(x, grid, w, grid_size, spline_order, precision)
        # Only x, the knots and the parameters themselves: W is rebuilt in backward (cheap)
        # instead of being kept alive between forward and backward.
        ctx.save_for_backward(x, grid, base_weight, spline_weight, spline_scaler)
        ctx.grid_size, ctx.spline_order, ctx.precision = grid_size, spline_order, precision
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, grid, base_weight, spline_weight, spline_scaler = ctx.saved_tensors
        need_x, _, need_base, need_spline, need_scaler, _ = ctx.needs_input_grad
        dy = dy.to(x.dtype).contiguous()
        g, k, precision = ctx.grid_size, ctx.spline_order, ctx.precision
        dx = d_base = d_spline = d_scaler = None
        if need_x:
            w = combined_weight(base_weight, spline_weight, spline_scaler)
            dx = _launch_grad_input(dy, w, x, grid, g, k, precision)
            del w
        if need_base or need_spline or need_scaler:
            d_base, d_spline, d_scaler = _launch_grad_weight(
                x, grid, dy, base_weight, spline_weight, spline_scaler, g, k, precision)
        return (dx, None, d_base if need_base else None, d_spline if need_spline else None,
                d_scaler if need_scaler else None, None)


def bspline_kan_triton(
    x: torch.Tensor,
    grid: torch.Tensor,
    base_weight: torch.Tensor,
    spline_weight: torch.Tensor,
    spline_scaler: torch.Tensor | None,
    spline_order: int,
) -> torch.Tensor:
    """B-spline KAN layer with fused Triton kernels; differentiable in x and all weights.

    Args:
        x: (M, in) activations, float32 / float16 / bfloat16.
        grid: (in, G + 2k + 1) float32 knots, one non-decreasing row per input (not differentiated).
        base_weight: (out, in), x's dtype.
        spline_weight: (out, in, G + k), x's dtype.
        spline_scaler: (out, in) in x's dtype, or None.
        spline_order: k, 0 .. MAX_SPLINE_ORDER.

    Returns:
        y: (M, out) in x's dtype, ``silu(x) @ base_weight.T + B(x) @ (spline_weight * scaler).T``.
    """
    return _BSplineKAN.apply(x, grid, base_weight, spline_weight, spline_scaler, spline_order)


# --------------------------------------------------------------------------------------
# Self-check on a GPU: python -m labkit.kan.triton_bspline [--tf32]
# --------------------------------------------------------------------------------------
def _selfcheck(rows: int = 4096, n_in: int = 768, n_out: int = 3072, grid_size: int = 5, spline_order: int = 3,
               tf32: bool = False) -> None:
    """Accuracy against the float64 reference, then time and peak memory next to Linear+GELU.

    Forward + backward (gradients of x and of every weight) at a ViT-Base MLP shape, fp32
    and bf16 (and fp32 with TF32 when ``tf32``). Baselines of the same (rows, in) -> out
    shape and dtype: ``gelu(x @ W.T)``, and efficient-kan's formulation (the reference).
    The first call of each dtype autotunes (compiles every config): allow a few minutes.
    """
    import torch.nn.functional as F
    from triton.testing import do_bench

    from labkit.kan.reference import bspline_kan_reference

    if not torch.cuda.is_available():
        raise SystemExit("the self-check needs a CUDA GPU")
    device = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    steps = torch.arange(-spline_order, grid_size + spline_order + 1, dtype=torch.float32) / grid_size
    grid = (2 * steps - 1).expand(n_in, -1).contiguous().to(device)  # efficient-kan's grid on [-1, 1]
    bound = n_in**-0.5
    params = {
        "x": 0.6 * torch.randn(rows, n_in, generator=gen),  # ~10% outside [-1, 1]
        "base_weight": bound * (2 * torch.rand(n_out, n_in, generator=gen) - 1),
        "spline_weight": 0.1 * torch.randn(n_out, n_in, grid_size + spline_order, generator=gen),
        "spline_scaler": bound * (2 * torch.rand(n_out, n_in, generator=gen) - 1),
    }
    dy32 = torch.randn(rows, n_out, generator=gen).to(device)
    linear_weight32 = (bound * (2 * torch.rand(n_out, n_in, generator=gen) - 1)).to(device)

    def leaves(dtype):
        return {name: t.to(device, dtype).requires_grad_() for name, t in params.items()}

    def step(fn, dtype):
        p, dy = leaves(dtype), dy32.to(dtype)

        def run():
            y = fn(p["x"], grid if dtype != torch.float64 else grid.double(), p["base_weight"], p["spline_weight"],
                   p["spline_scaler"], spline_order)
            return y, torch.autograd.grad(y, list(p.values()), dy)

        return run

    def linear_gelu_step(dtype):
        x = params["x"].to(device, dtype).requires_grad_()
        w, dy = linear_weight32.to(dtype).requires_grad_(), dy32.to(dtype)

        def run():
            y = F.gelu(F.linear(x, w))
            return y, torch.autograd.grad(y, [x, w], dy)

        return run

    def peak_mib(run):
        run()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20

    print(f"B-spline KAN {rows}x{n_in} -> {n_out}, G={grid_size}, k={spline_order}, "
          f"{torch.cuda.get_device_name()}, triton {triton.__version__}, torch {torch.__version__}")
    y_ref, grads_ref = step(bspline_kan_reference, torch.float64)()
    names = ["y"] + ["d_" + n for n in params]
    wanted = [y_ref, *grads_ref]
    del y_ref, grads_ref
    torch.cuda.empty_cache()
    print("relative error vs float64 reference (norm ratio / max-abs ratio):")
    cases = [("fp32", torch.float32, False), ("bf16", torch.bfloat16, False)] + ([("fp32+tf32", torch.float32, True)]
                                                                               if tf32 else [])
    for label, dtype, allow_tf32 in cases:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        y, grads = step(bspline_kan_triton, dtype)()
        errors = []
        for name, got, want in zip(names, [y, *grads], wanted):
            norm = ((got.double() - want).norm() / want.norm()).item()
            peak = ((got.double() - want).abs().max() / want.abs().max()).item()
            errors.append(f"{name} {norm:.1e}/{peak:.1e}")
        print(f"  {label:9s} " + "  ".join(errors))
    del wanted
    torch.cuda.empty_cache()

    print(f"{'':9s} {'kan ms':>8s} {'lin+gelu':>8s} {'ratio':>6s} {'eff-kan':>8s} | "
          f"{'kan MiB':>8s} {'lin MiB':>8s} {'ratio':>6s} {'eff MiB':>8s}   (forward + backward)")
    for label, dtype, allow_tf32 in cases:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        kan, lin, eff = step(bspline_kan_triton, dtype), linear_gelu_step(dtype), step(bspline_kan_reference, dtype)
        kan()  # autotune outside the timed region
        t_kan, t_lin, t_eff = (do_bench(fn, warmup=50, rep=300) for fn in (kan, lin, eff))
        m_kan, m_lin, m_eff = (peak_mib(fn) for fn in (kan, lin, eff))
        print(f"{label:9s} {t_kan:8.3f} {t_lin:8.3f} {t_kan / t_lin:6.2f} {t_eff:8.3f} | "
              f"{m_kan:8.0f} {m_lin:8.0f} {m_kan / m_lin:6.2f} {m_eff:8.0f}")
        for name, tuned in (("forward", _forward_tuned), ("grad input", _grad_input_tuned),
                            ("grad weight", _grad_weight_tuned)):
            best = getattr(tuned, "best_config", None)
            print(f"          {name}: {best}")
    torch.backends.cuda.matmul.allow_tf32 = False


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=_selfcheck.__doc__.splitlines()[0])
    parser.add_argument("--tf32", action="store_true", help="also time fp32 with TF32 tensor cores")
    parser.add_argument("--grid-size", type=int, default=5)
    parser.add_argument("--spline-order", type=int, default=3)
    cli = parser.parse_args()
    _selfcheck(grid_size=cli.grid_size, spline_order=cli.spline_order, tf32=cli.tf32)
