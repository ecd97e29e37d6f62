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
``W`` is weight-sized, so building it once per call (one small kernel, below) is cheap.

Kernels (rows ``M``, inputs ``K``, outputs ``N`` in all block names)
-------------------------------------------------------------------
* forward: one ``(BLOCK_M, BLOCK_N)`` tile of y per program, one fp32 accumulator. The
  spline bases go ``CHUNK`` at a time: for each chunk, loop over the inputs, compute those
  ``CHUNK`` bases of the x tile (Cox-de Boor, unrolled) and do ``CHUNK`` dots. Then the
  base branch: an ordinary GEMM over ``silu(x)``.
* grad input: one ``(BLOCK_M, BLOCK_K)`` tile of dx per program. For a chunk of features,
  ``CHUNK`` accumulators ``P_f = dy @ W[f].T`` are built over the outputs, then multiplied
  by the feature slopes ``feature_f'(x)`` (the B-spline derivative formula) and summed.
* grad weight: one ``(BLOCK_K, BLOCK_N)`` tile of ``dW[f] = feature_f(x).T @ dy`` per
  program and chunk of ``CHUNK`` bases (a grid axis: chunks write disjoint outputs), plus
  one program per tile for the SiLU feature, summed over the rows in fp32 and stored in W's
  (F, in, out) layout. When there are few programs (small in*out, large M) the rows are
  also split over programs ("split-K") into fp32 partial sums.
* pack / unpack: ``W`` is built from the parameters by one small kernel (cast to the
  operand dtype included), and one more turns ``dW`` (summing the split-K slices) into the
  parameters' gradients, applying the chain rule through the scaler: ``d spline_weight =
  dW * scaler``, ``d scaler = sum_j dW_j * spline_weight_j``. Both are weight-sized work.

Uniform knots. A layer's grid starts uniform (and stays so without ``update_grid``). Then
every basis is one polynomial shifted, the recursion needs no knot loads or inverse spans,
and :func:`_uniform_bases` computes the ``k + 1`` nonzero bases of an input's interval once
and places them (about a third of the instructions at k = 3, which matters: the tensor
cores wait for the basis tiles). :func:`knots_for` decides (and caches) per grid.

Why chunks of features? ``F`` fp32 accumulators (or ``F`` live basis tiles) per program cost
``F`` times the registers of a plain GEMM. A chunk keeps ``CHUNK`` of them alive, the chunk
loop is an ordinary (not unrolled) loop so the code size does not grow with ``G``, and the
only price is recomputing ``k (k + 1) / 2`` lower-order bases at each chunk's left edge.
Registers are the constraint everywhere: the Cox-de Boor sweep keeps about ``2k + 1`` tiles
alive per element, so the configs keep a feature tile at 8-16 elements per thread.

Why is the base branch last? On sm_90 with Triton 3.6, a GEMM loop *followed by* a nested
GEMM loop makes ptxas serialize the wgmma instructions (warning C7515); the reverse order
does not.

Per-input constants (the knots and the inverse knot spans ``1 / (t_{j+p} - t_j)``) are
precomputed once per grid (cached) into a small zero-padded table (:func:`knot_table`), so the
kernels multiply instead of divide and read them without masks.

Nothing of size ``M * in * (G + k)`` is ever stored: backward sees only x, the knot table,
the packed ``W`` (weight-sized, in the operand dtype, as autocast would cache it) and the
parameters the scaler's chain rule needs. No atomics anywhere.

Numerics: bases, slopes and accumulators are fp32; features are cast to the operand dtype
(fp32, fp16 or bf16) right before ``tl.dot``. fp32 products run as three TF32 products
("tf32x3", fp32 accuracy), or one when PyTorch allows TF32 (see :func:`_dot_precision`). Knot spans of zero width contribute 0 (the
PyTorch reference divides 0 by 0 there and returns NaN).
"""
from __future__ import annotations

import os
import weakref

import torch
import triton
import triton.language as tl

from labkit.backend import cublas_allows_tf32, interpret_mode, patch_triton_interpreter, tuning_bucket

#: Spline orders the kernels are built for; the unrolled Cox-de Boor grows as order**2.
MAX_SPLINE_ORDER = 8
_OPERAND_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INT32_LIMIT = 2**31 - 1
# The kernels read the knot table (see knot_table) without masks: it is zero-padded past
# the last knot (a chunk of CHUNK bases may run past the last basis) and past the last
# input (a block of BLOCK_K inputs may run past ``in``).
_TABLE_EXTRA_ROWS = 16  # > the largest CHUNK
_TABLE_INPUT_MULTIPLE = 128  # a multiple of every BLOCK_K


def kernel_supports(grid_size: int, spline_order: int, dtype: torch.dtype = torch.float32) -> bool:
    """Whether :func:`bspline_kan_triton` handles this grid size ``G``, order ``k`` and dtype.

    Any ``G >= 1`` works: the features are processed in chunks whose loop is not unrolled,
    so compile time and registers do not depend on ``G`` (the work grows like ``G + k + 1``).
    float64 is not supported (use the PyTorch reference, e.g. for grid-extension studies).
    """
    return grid_size >= 1 and 0 <= spline_order <= MAX_SPLINE_ORDER and dtype in _OPERAND_DTYPES


# --------------------------------------------------------------------------------------
# Building blocks shared by the three kernels (all math in fp32 registers)
# --------------------------------------------------------------------------------------
@triton.jit
def _bspline_bases(x, table, ROW: tl.constexpr, PLANE: tl.constexpr, first, COUNT: tl.constexpr,
                   ORDER: tl.constexpr):
    """``B_{j,ORDER}(x)`` for ``j = first .. first + COUNT - 1``, returned as a tuple of tiles.

    ``x`` is a tile of inputs; ``table`` points at the knot table column of each input
    (see :func:`knot_table`), broadcastable against ``x``: shape ``(1, BLOCK)`` when inputs
    run along columns, ``(BLOCK, 1)`` when they run along rows. ``ROW`` and ``PLANE`` are
    the table's strides: ``t_j`` is at ``table + j * ROW``, ``1 / (t_{j+p} - t_j)`` at
    ``table + p * PLANE + j * ROW`` (constexpr, so these offsets compile to immediates).

    Cox-de Boor with half-open order-0 intervals ``[t_j, t_{j+1})``, written with
    ``u_{j,p} = B_{j,p-1} / (t_{j+p} - t_j)``:

        B_{j,p} = (x - t_j) * u_{j,p} - (x - t_{j+p+1}) * u_{j+1,p}

    The triangle is swept along its diagonal (below, indices are relative to ``first``):
    step ``s`` adds the order-0 basis ``s`` and then, order by order, ``B_{s-p,p}``. The
    ``u`` that step ``s`` makes for ``B_{s-p+1,p-1}`` is reused by step ``s + 1``, so each
    basis costs one multiply and one fused multiply-add, and only a few tiles per order
    stay alive from one step to the next (registers, not the whole triangle).
    """
    table = table + first * ROW
    knots = (tl.load(table),)
    distance = (x - knots[0],)  # distance[j] = x - t_j
    above = x >= knots[0]
    previous = ()  # the bases B_{s-1-p,p} made by the previous step
    carried_u = ()  # carried_u[p - 1] = u_{s-p,p}, made by the previous step
    bases = ()
    for s in tl.static_range(COUNT + ORDER):
        knots = knots + (tl.load(table + (s + 1) * ROW),)
        distance = distance + (x - knots[s + 1],)
        above_next = x >= knots[s + 1]
        current = (above & ~above_next,)  # B_{s,0}, kept as a boolean: x in [t_s, t_{s+1})
        above = above_next
        next_u = ()
        for p in tl.static_range(1, ORDER + 1):
            if p <= s:  # B_{s-p,p} needs order-0 bases s-p .. s, all inside this chunk
                inverse_high = tl.load(table + p * PLANE + (s - p + 1) * ROW)  # 1 / (t_{s+1} - t_{s-p+1})
                if p < s:
                    u_low = carried_u[p - 1]
                elif p == 1:  # u of a boolean order-0 basis: a select, not a multiply
                    u_low = tl.where(previous[0], tl.load(table + PLANE), 0.0)
                else:  # the first basis of order p: no u carried over yet
                    u_low = previous[p - 1] * tl.load(table + p * PLANE)
                if p == 1:
                    u_high = tl.where(current[0], inverse_high, 0.0)
                else:
                    u_high = current[p - 1] * inverse_high
                current = current + (distance[s - p] * u_low - distance[s + 1] * u_high,)
                next_u = next_u + (u_high,)
        previous = current
        carried_u = next_u
        if s >= ORDER:
            bases = bases + ((current[0].to(tl.float32) if ORDER == 0 else current[ORDER]),)
    return bases


@triton.jit
def _bspline_slopes(x, table, ROW: tl.constexpr, PLANE: tl.constexpr, first, COUNT: tl.constexpr,
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
        lower = _bspline_bases(x, table, ROW, PLANE, first, COUNT + 1, ORDER - 1)
        inverse_spans = table + ORDER * PLANE + first * ROW  # 1 / (t_{j+k} - t_j) from j = first
        u_low = lower[0] * tl.load(inverse_spans)
        for c in tl.static_range(COUNT):
            u_high = lower[c + 1] * tl.load(inverse_spans + (c + 1) * ROW)
            slopes = slopes + (ORDER * (u_low - u_high),)
            u_low = u_high
    return slopes


@triton.jit
def _uniform_bases(x, origin, inv_step, first, COUNT: tl.constexpr, ORDER: tl.constexpr):
    """``B_{j,ORDER}(x)`` for ``j = first .. first + COUNT - 1`` on *uniform* knots
    ``t_j = origin + j / inv_step`` (a tuple of tiles, like :func:`_bspline_bases`).

    On uniform knots every basis is the same piecewise polynomial, shifted. With
    ``u = (x - origin) * inv_step``, ``s = floor(u)`` (the knot interval of x) and
    ``t = u - s``, the ``ORDER + 1`` bases that are nonzero on interval ``s`` are
    ``v[r] = B_{s-r}(x)``, ``r = 0..ORDER``, and the recursion that builds them,

        v_p[r] = ((t + r) v_{p-1}[r] + (p + 1 - r - t) v_{p-1}[r-1]) / p,

    has constant coefficients: no knot loads, no divisions. Basis ``j`` then picks
    ``v[s - j]`` (0 when ``s - j`` is outside ``0..ORDER``, which also covers x outside
    the grid). About a third of the instructions of the general recursion at k = 3, which
    matters because the tensor cores wait for these tiles.
    """
    u = (x - origin) * inv_step
    s = tl.floor(u)
    t = u - s
    v = (tl.zeros_like(x) + 1.0,)
    for p in tl.static_range(1, ORDER + 1):
        nxt = ()
        for r in tl.static_range(p + 1):
            if r == 0:
                term = t * v[0]
            elif r == p:
                term = (1.0 - t) * v[r - 1]
            else:
                term = (t + r) * v[r] + (p + 1 - r - t) * v[r - 1]
            nxt = nxt + (term * (1.0 / p),)
        v = nxt
    offset = s - first  # basis first + c is v[offset - c]
    bases = ()
    for c in tl.static_range(COUNT):
        b = tl.where(offset == c, v[0], 0.0)
        for r in tl.static_range(1, ORDER + 1):
            b = tl.where(offset == c + r, v[r], b)
        bases = bases + (b,)
    return bases


@triton.jit
def _bases(x, table, ROW: tl.constexpr, PLANE: tl.constexpr, first, COUNT: tl.constexpr, ORDER: tl.constexpr,
           UNIFORM: tl.constexpr):
    """The bases by whichever recursion the knots allow (``UNIFORM``: see :func:`knot_table`)."""
    if UNIFORM:
        out = _uniform_bases(x, tl.load(table), tl.load(table + PLANE), first, COUNT, ORDER)
    else:
        out = _bspline_bases(x, table, ROW, PLANE, first, COUNT, ORDER)
    return out


@triton.jit
def _slopes(x, table, ROW: tl.constexpr, PLANE: tl.constexpr, first, COUNT: tl.constexpr, ORDER: tl.constexpr,
            UNIFORM: tl.constexpr):
    """``d B_j / dx``; on uniform knots ``B'_{j,k} = (B_{j,k-1} - B_{j+1,k-1}) / step``."""
    if UNIFORM:
        inv_step = tl.load(table + PLANE)
        lower = _uniform_bases(x, tl.load(table), inv_step, first, COUNT + 1, ORDER - 1)
        out = ()
        for c in tl.static_range(COUNT):
            out = out + (inv_step * (lower[c] - lower[c + 1]),)
    else:
        out = _bspline_slopes(x, table, ROW, PLANE, first, COUNT, ORDER)
    return out


@triton.jit
def _silu(x):
    return x * tl.sigmoid(x)


@triton.jit
def _silu_slope(x):
    """d silu / dx = sigmoid(x) * (1 + x * (1 - sigmoid(x)))."""
    sig = tl.sigmoid(x)
    return sig * (1.0 + x * (1.0 - sig))


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr):
    """``acc + a @ b``. ``PRECISION``: ``"ieee"``, ``"tf32"`` or ``"tf32x3"`` (fp32 operands only).

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
    x_ptr, table_ptr, w_ptr, y_ptr,
    M, IN, OUT, M_BUCKET,
    stride_xm, stride_wf, stride_wi, stride_ym,
    TABLE_ROW: tl.constexpr, TABLE_PLANE: tl.constexpr, GRID_SIZE: tl.constexpr,
    ORDER: tl.constexpr, PRECISION: tl.constexpr, UNIFORM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, CHUNK: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """``y[m, o] = sum_{f, i} feature_f(x[m, i]) * W[f, i, o]`` for one (BLOCK_M, BLOCK_N) tile."""
    N_BASES: tl.constexpr = GRID_SIZE + ORDER
    pid_m, pid_n = _swizzled_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(OUT, BLOCK_N), GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < OUT
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)

    # Spline branch, CHUNK bases at a time; bases past N_BASES meet zero (masked) weights.
    for b0 in range(0, N_BASES, CHUNK):
        for i0 in range(0, IN, BLOCK_K):
            ins = i0 + tl.arange(0, BLOCK_K)
            in_ok = ins < IN
            x = tl.load(x_ptr + rows[:, None] * stride_xm + ins[None, :],
                        mask=row_ok[:, None] & in_ok[None, :], other=0.0).to(tl.float32)
            bases = _bases(x, table_ptr + ins[None, :], TABLE_ROW, TABLE_PLANE, b0, CHUNK, ORDER, UNIFORM)
            for c in tl.static_range(CHUNK):
                w = tl.load(w_ptr + (1 + b0 + c) * stride_wf + ins[:, None] * stride_wi + cols[None, :],
                            mask=(b0 + c < N_BASES) & in_ok[:, None] & col_ok[None, :], other=0.0)
                acc = _dot(bases[c].to(w.dtype), w, acc, PRECISION)

    # Base branch: an ordinary GEMM over silu(x), after the chunk loops (module docstring).
    for i0 in range(0, IN, BLOCK_K):
        ins = i0 + tl.arange(0, BLOCK_K)
        in_ok = ins < IN
        x = tl.load(x_ptr + rows[:, None] * stride_xm + ins[None, :],
                    mask=row_ok[:, None] & in_ok[None, :], other=0.0).to(tl.float32)
        w = tl.load(w_ptr + ins[:, None] * stride_wi + cols[None, :],
                    mask=in_ok[:, None] & col_ok[None, :], other=0.0)
        acc = _dot(_silu(x).to(w.dtype), w, acc, PRECISION)

    tl.store(y_ptr + rows[:, None] * stride_ym + cols[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _grad_input_kernel(
    dy_ptr, w_ptr, x_ptr, table_ptr, dx_ptr,
    M, IN, OUT, M_BUCKET,
    stride_dym, stride_wf, stride_wi, stride_xm, stride_dxm,
    TABLE_ROW: tl.constexpr, TABLE_PLANE: tl.constexpr, GRID_SIZE: tl.constexpr,
    ORDER: tl.constexpr, PRECISION: tl.constexpr, UNIFORM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, CHUNK: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """``dx[m, i] = sum_f feature_f'(x[m, i]) * (dy @ W[f].T)[m, i]`` for one (BLOCK_M, BLOCK_K) tile.

    The slopes depend on (m, i) only, so each ``dy @ W[f].T`` is accumulated over all outputs
    first and multiplied by its slope once, in the epilogue of its chunk.
    """
    N_BASES: tl.constexpr = GRID_SIZE + ORDER
    pid_m, pid_k = _swizzled_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(IN, BLOCK_K), GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ins = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    row_ok = rows < M
    in_ok = ins < IN
    # W[f].T tile (BLOCK_N outputs, BLOCK_K inputs) = W[f, ins, outs] read transposed.
    wt_ptr = w_ptr + ins[None, :] * stride_wi

    # Spline branch, CHUNK features at a time.
    dx = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
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
        x = tl.load(x_ptr + rows[:, None] * stride_xm + ins[None, :],
                    mask=row_ok[:, None] & in_ok[None, :], other=0.0).to(tl.float32)
        for c in tl.static_range(CHUNK):
            slope = _slopes(x, table_ptr + ins[None, :], TABLE_ROW, TABLE_PLANE, b0 + c, 1, ORDER, UNIFORM)
            dx += slope[0] * accs[c]

    # Base branch, after the chunk loops (module docstring).
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
    dx += _silu_slope(x) * acc

    tl.store(dx_ptr + rows[:, None] * stride_dxm + ins[None, :], dx.to(dx_ptr.dtype.element_ty),
             mask=row_ok[:, None] & in_ok[None, :])


@triton.jit
def _row_step(x_ptr, dy_ptr, m0, row_end, ins, outs, IN, OUT, stride_xm, stride_dym, BLOCK_M: tl.constexpr):
    """One step of the weight gradient's reduction over rows: ``x^T`` (BLOCK_K inputs x
    BLOCK_M rows, fp32) and ``dy`` (BLOCK_M rows x BLOCK_N outputs), zero past the ends."""
    rows = m0 + tl.arange(0, BLOCK_M)
    row_ok = rows < row_end
    xt = tl.load(x_ptr + rows[None, :] * stride_xm + ins[:, None],
                 mask=(ins[:, None] < IN) & row_ok[None, :], other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + rows[:, None] * stride_dym + outs[None, :],
                 mask=row_ok[:, None] & (outs[None, :] < OUT), other=0.0)
    return xt, dy


@triton.jit
def _grad_weight_kernel(
    x_ptr, table_ptr, dy_ptr, dw_ptr,
    M, IN, OUT, M_BUCKET, ROWS_PER_SPLIT,
    stride_xm, stride_dym, split_stride,
    TABLE_ROW: tl.constexpr, TABLE_PLANE: tl.constexpr, GRID_SIZE: tl.constexpr,
    ORDER: tl.constexpr, PRECISION: tl.constexpr, UNIFORM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, CHUNK: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """``dW[f, i, o] = sum_m feature_f(x[m, i]) * dy[m, o]`` in fp32, the gradient of the
    combined weight, for one (BLOCK_K, BLOCK_N) tile of (i, o).

    Program axis 1 picks the features: ``CHUNK`` spline bases per program, and one extra
    program per tile for the SiLU feature (``f = 0``). Chunks write disjoint outputs, and
    ``(G + k) / CHUNK + 1`` times more programs keep every SM busy when tiles are large.
    Axis 2 picks a slice of ``ROWS_PER_SPLIT`` rows (split-K: fp32 partial sums, added by
    :func:`_unpack_grads_kernel`). ``dW`` is stored (F, in, out), contiguous along the
    outputs, so every store is coalesced; the unpack kernel turns it into the parameters'
    layouts.
    """
    N_BASES: tl.constexpr = GRID_SIZE + ORDER
    N_CHUNKS: tl.constexpr = (N_BASES + CHUNK - 1) // CHUNK
    pid_k, pid_n = _swizzled_tile(tl.program_id(0), tl.cdiv(IN, BLOCK_K), tl.cdiv(OUT, BLOCK_N), GROUP_M)
    chunk = tl.program_id(1)
    split = tl.program_id(2)
    row_begin = split * ROWS_PER_SPLIT
    row_end = tl.minimum(M, row_begin + ROWS_PER_SPLIT)
    ins = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    outs = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    in_ok = ins < IN
    out_ok = outs < OUT
    tile_ok = in_ok[:, None] & out_ok[None, :]
    # Inputs run along the rows of every tile here, so table entries are (BLOCK_K, 1) columns.
    table = table_ptr + ins[:, None]
    dw_ptr += split * split_stride + ins[:, None] * OUT + outs[None, :]

    if chunk == N_CHUNKS:  # the SiLU feature: an ordinary GEMM silu(x).T @ dy
        acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
        for m0 in range(row_begin, row_end, BLOCK_M):
            xt, dy = _row_step(x_ptr, dy_ptr, m0, row_end, ins, outs, IN, OUT, stride_xm, stride_dym, BLOCK_M)
            acc = _dot(_silu(xt).to(dy.dtype), dy, acc, PRECISION)
        tl.store(dw_ptr, acc, mask=tile_ok)
    else:
        b0 = chunk * CHUNK
        accs = ()
        for c in tl.static_range(CHUNK):
            accs = accs + (tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32),)
        for m0 in range(row_begin, row_end, BLOCK_M):
            xt, dy = _row_step(x_ptr, dy_ptr, m0, row_end, ins, outs, IN, OUT, stride_xm, stride_dym, BLOCK_M)
            bases = _bases(xt, table, TABLE_ROW, TABLE_PLANE, b0, CHUNK, ORDER, UNIFORM)
            updated = ()
            for c in tl.static_range(CHUNK):
                updated = updated + (_dot(bases[c].to(dy.dtype), dy, accs[c], PRECISION),)
            accs = updated
        for c in tl.static_range(CHUNK):
            tl.store(dw_ptr + (1 + b0 + c) * IN * OUT, accs[c], mask=tile_ok & (b0 + c < N_BASES))


@triton.jit
def _pack_weight_kernel(
    base_ptr, spline_ptr, scaler_ptr, w_ptr, IN, OUT,
    N_BASES: tl.constexpr, BASES_POW2: tl.constexpr, HAS_SCALER: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr, PARAM_IN,
):
    """``W[0, i, o] = base_weight[o, i]``, ``W[1 + j, i, o] = spline_weight[o, i, j] * scaler[o, i]``.

    One pass over the parameters that also casts them to the operand dtype of the GEMM
    kernels (the product is taken in fp32 and rounded once). The loads run along the
    parameters' contiguous axes and the stores along W's (the outputs); Triton moves the
    tile between the two layouts through shared memory. ``PARAM_IN`` is the parameters' row
    length (``IN`` for the whole weight): with a larger one the kernel packs a block of ``IN``
    inputs (pointers at its first input), as :mod:`labkit.kan.gemm_bspline` does.
    """
    outs = tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)
    ins = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    bases = tl.arange(0, BASES_POW2)
    ok = (outs[:, None] < OUT) & (ins[None, :] < IN)
    base = tl.load(base_ptr + outs[:, None] * PARAM_IN + ins[None, :], mask=ok)
    tl.store(w_ptr + ins[None, :] * OUT + outs[:, None], base.to(w_ptr.dtype.element_ty), mask=ok)

    ok3 = ok[:, :, None] & (bases[None, None, :] < N_BASES)
    spline = tl.load(spline_ptr + (outs[:, None, None] * PARAM_IN + ins[None, :, None]) * N_BASES
                     + bases[None, None, :], mask=ok3).to(tl.float32)
    if HAS_SCALER:
        scaler = tl.load(scaler_ptr + outs[:, None] * PARAM_IN + ins[None, :], mask=ok).to(tl.float32)
        spline = spline * scaler[:, :, None]
    w_spline = w_ptr + ((1 + bases[None, None, :]) * IN + ins[None, :, None]) * OUT + outs[:, None, None]
    tl.store(w_spline, spline.to(w_ptr.dtype.element_ty), mask=ok3)


@triton.jit
def _unpack_grads_kernel(
    dw_ptr, spline_ptr, scaler_ptr, d_base_ptr, d_spline_ptr, d_scaler_ptr,
    IN, OUT, SPLITS, split_stride,
    N_BASES: tl.constexpr, BASES_POW2: tl.constexpr, HAS_SCALER: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr, PARAM_IN,
):
    """From ``dW`` (summed over its row slices) to the parameters' gradients, in their layouts
    and dtype. With ``W[1 + j] = (spline_weight[..., j] * scaler).T`` the chain rule gives

        d spline_weight[o, i, j] = dW[1 + j, i, o] * scaler[o, i]
        d scaler[o, i]           = sum_j dW[1 + j, i, o] * spline_weight[o, i, j]

    and ``d base_weight = dW[0].T``. Weight-sized work, one pass. ``PARAM_IN`` as in
    :func:`_pack_weight_kernel`: the parameters' (and their gradients') row length.
    """
    outs = tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)
    ins = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    bases = tl.arange(0, BASES_POW2)
    ok = (outs[:, None] < OUT) & (ins[None, :] < IN)
    ok3 = ok[:, :, None] & (bases[None, None, :] < N_BASES)
    base_offsets = ins[None, :] * OUT + outs[:, None]
    spline_offsets = ((1 + bases[None, None, :]) * IN + ins[None, :, None]) * OUT + outs[:, None, None]
    d_base = tl.zeros((BLOCK_O, BLOCK_I), dtype=tl.float32)
    d_spline = tl.zeros((BLOCK_O, BLOCK_I, BASES_POW2), dtype=tl.float32)
    for split in range(SPLITS):
        d_base += tl.load(dw_ptr + split * split_stride + base_offsets, mask=ok)
        d_spline += tl.load(dw_ptr + split * split_stride + spline_offsets, mask=ok3)
    tl.store(d_base_ptr + outs[:, None] * PARAM_IN + ins[None, :], d_base.to(d_base_ptr.dtype.element_ty),
             mask=ok)
    param_offsets = (outs[:, None, None] * PARAM_IN + ins[None, :, None]) * N_BASES + bases[None, None, :]
    if HAS_SCALER:
        spline = tl.load(spline_ptr + param_offsets, mask=ok3).to(tl.float32)
        scaler = tl.load(scaler_ptr + outs[:, None] * PARAM_IN + ins[None, :], mask=ok).to(tl.float32)
        d_scaler = tl.sum(d_spline * spline, axis=2)
        tl.store(d_scaler_ptr + outs[:, None] * PARAM_IN + ins[None, :],
                 d_scaler.to(d_scaler_ptr.dtype.element_ty), mask=ok)
        d_spline = d_spline * scaler[:, :, None]
    tl.store(d_spline_ptr + param_offsets, d_spline.to(d_spline_ptr.dtype.element_ty), mask=ok3)


# --------------------------------------------------------------------------------------
# Launch configurations
# --------------------------------------------------------------------------------------
def _config(block_m, block_n, block_k, chunk, warps, stages, group=8):
    assert chunk < _TABLE_EXTRA_ROWS and _TABLE_INPUT_MULTIPLE % block_k == 0, "the knot table is too small"
    meta = dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, CHUNK=chunk, GROUP_M=group)
    return triton.Config(meta, num_warps=warps, num_stages=stages)


# Block names mean the same in every kernel: M rows, N outputs, K inputs. The tile of the
# forward is (M, N), of grad input (M, K), of grad weight (K, N); the third block is the
# reduction step. Two lists per kernel: tensor-core dots (16-bit operands, or TF32) and
# exact fp32 dots, which Triton runs on FMA units with its operands in registers, so they
# need smaller tiles. Every config below compiles for sm_90 (G=5, k=3) without more than
# a few bytes of register spills; which is fastest is left to the autotuner.
_FORWARD_CONFIGS = {
    "tensor_cores": [
        _config(128, 256, 16, 2, 8, 3),
        _config(128, 256, 16, 4, 8, 3),
        _config(128, 128, 16, 4, 8, 3),
        _config(128, 128, 16, 8, 8, 3),
        _config(128, 256, 16, 8, 8, 3),  # all G + k = 8 bases from one recursion (uniform knots)
        _config(128, 128, 32, 8, 8, 3),
    ],
    "fma": [
        _config(64, 64, 16, 2, 4, 3),
        _config(64, 64, 16, 4, 4, 3),
        _config(128, 64, 16, 2, 8, 3),
        _config(64, 128, 16, 2, 4, 3),
    ],
}
_GRAD_INPUT_CONFIGS = {
    "tensor_cores": [
        _config(64, 64, 32, 2, 4, 3),
        _config(128, 64, 32, 2, 8, 3),
        _config(64, 64, 64, 1, 4, 3),
        _config(128, 64, 64, 1, 8, 3),
    ],
    "fma": [
        _config(64, 32, 32, 1, 4, 3),
        _config(32, 64, 32, 2, 4, 3),
        _config(64, 32, 64, 1, 8, 3),
    ],
}
_GRAD_WEIGHT_CONFIGS = {
    "tensor_cores": [
        _config(16, 256, 128, 1, 8, 3),
        _config(16, 256, 64, 1, 4, 3),
        _config(16, 128, 128, 2, 8, 3),
        _config(32, 128, 64, 1, 4, 3),
        _config(16, 256, 64, 2, 8, 3),  # chunks of 2 and 4 share one x tile's recursion (uniform knots)
        _config(16, 128, 64, 4, 8, 3),
        _config(32, 128, 64, 2, 4, 3),
        _config(32, 256, 128, 1, 8, 3),  # longer row steps: fewer loop trips per recursion
        _config(64, 256, 64, 1, 8, 3),
    ],
    "fma": [
        _config(32, 64, 32, 1, 4, 3),
        _config(32, 64, 64, 1, 8, 3),
        _config(16, 64, 32, 2, 4, 3),
    ],
}
# One fixed small configuration: CPU interpreter runs (fast tests that still cross block,
# chunk and masking boundaries) and tiny problems on GPU (no autotuning compile storm for
# layers like [2, 1, 1] whose grid size changes during grid extension).
_INTERPRETER_CONFIG = _config(64, 32, 32, 4, 1, 1)
_SMALL_CONFIG = _config(32, 32, 32, 2, 4, 2)
_SMALL_PROBLEM_MACS = 2**26  # M * in * out * (G + k + 1) below this: no autotuning

_SMEM_BUDGET = 200 * 1024  # bytes; H100 allows 227 KiB per block


def _prune(config_lists, loads_per_stage, operand):
    """An ``early_config_prune``: the list for this dot kind, minus configs whose pipelined
    tiles overflow shared memory or whose tile is far larger than the problem. ``operand``
    names the argument whose dtype is the GEMM's operand dtype."""

    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        elem = args[operand].element_size()
        kind = "fma" if elem == 4 and args["PRECISION"] == "ieee" else "tensor_cores"
        # x may be wider than the operands (fp32 activations under autocast): count it at 4 bytes.
        elem = max(elem, args["x_ptr"].element_size())
        fitting = []
        for config in config_lists[kind]:
            meta = config.kwargs
            too_big = (meta["BLOCK_N"] > 2 * max(16, triton.next_power_of_2(args["OUT"]))
                       or meta["BLOCK_K"] > 2 * max(16, triton.next_power_of_2(args["IN"])))
            smem = config.num_stages * elem * loads_per_stage(meta)
            if args["PRECISION"] == "tf32x3":
                smem *= 2  # the big and the small TF32 half of each operand tile
            if smem <= _SMEM_BUDGET and not too_big:
                fitting.append(config)
        return fitting or [min(config_lists[kind], key=lambda c: c.num_stages * loads_per_stage(c.kwargs))]

    return prune


def _autotuned(kernel, config_lists, loads_per_stage, operand):
    return triton.autotune(
        configs=config_lists["tensor_cores"] + config_lists["fma"],
        key=["M_BUCKET", "IN", "OUT", "GRID_SIZE", "ORDER", "PRECISION", "UNIFORM"],  # + the pointers' dtypes
        prune_configs_by={"early_config_prune": _prune(config_lists, loads_per_stage, operand)},
        cache_results=True,  # timings kept on disk: a rerun (e.g. of a notebook) does not retune
    )(kernel)


# Elements per pipeline stage: the tiles loaded in one step of the reduction loop.
_forward_tuned = _autotuned(
    _forward_kernel, _FORWARD_CONFIGS,
    lambda m: m["BLOCK_M"] * m["BLOCK_K"] + m["CHUNK"] * m["BLOCK_K"] * m["BLOCK_N"], "w_ptr")
_grad_input_tuned = _autotuned(
    _grad_input_kernel, _GRAD_INPUT_CONFIGS,
    lambda m: m["BLOCK_M"] * m["BLOCK_N"] + m["CHUNK"] * m["BLOCK_N"] * m["BLOCK_K"], "w_ptr")
_grad_weight_tuned = _autotuned(
    _grad_weight_kernel, _GRAD_WEIGHT_CONFIGS,
    lambda m: m["BLOCK_M"] * m["BLOCK_K"] + m["BLOCK_M"] * m["BLOCK_N"], "dy_ptr")


#: Pin a config per kernel ("forward", "grad_input", "grad_weight"), bypassing autotuning:
#: the GPU tests use it to check every config in the lists above.
PINNED_CONFIGS: dict[str, triton.Config] = {}


def _launch(name, tuned, args, macs, grid):
    """Run ``tuned`` (an autotuner) or its kernel with a fixed config on small or CPU problems."""
    if interpret_mode():
        patch_triton_interpreter()
    config = PINNED_CONFIGS.get(name)
    if config is None and (interpret_mode() or macs < _SMALL_PROBLEM_MACS):
        config = _INTERPRETER_CONFIG if interpret_mode() else _SMALL_CONFIG
    if config is None:
        tuned[lambda meta: grid(meta)](**args)
    else:
        meta = {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}
        tuned.fn[lambda _: grid(config.kwargs)](**args, **meta)


def _dot_precision(dtype: torch.dtype) -> str:
    """How ``tl.dot`` multiplies fp32 operands (16-bit operands ignore this).

    ``"tf32"`` when PyTorch allows TF32 for matmuls, as ``torch.matmul`` would. Otherwise
    fp32 accuracy: by default ``"tf32x3"``, three TF32 products per product on the tensor
    cores (each operand split into a TF32 part and a TF32 remainder; relative error about
    1e-6), measured 2.2x faster than ``"ieee"`` on an H100 at 4096 x 768 -> 3072. ``"ieee"``
    (exact products on the FMA units) when the environment sets ``LABKIT_KAN_FP32_DOT=ieee``.
    """
    if interpret_mode():
        return "interpreter"
    if dtype != torch.float32:
        return "ieee"  # tl.dot's input_precision only applies to fp32 operands; one name, one compiled variant
    if cublas_allows_tf32():
        return "tf32"
    exact = os.environ.get("LABKIT_KAN_FP32_DOT", "tf32x3")
    if exact not in ("ieee", "tf32x3"):
        raise ValueError(f"LABKIT_KAN_FP32_DOT must be 'ieee' or 'tf32x3', got {exact!r}")
    return exact


def _common_args(knots: "Knots", precision: str) -> dict:
    return dict(TABLE_ROW=knots.table.stride(1), TABLE_PLANE=knots.table.stride(0), GRID_SIZE=knots.grid_size,
                ORDER=knots.order, PRECISION=precision, UNIFORM=knots.uniform)


def _launch_forward(x, knots, w, precision):
    """y = features(x) @ W, in W's dtype."""
    m, n_in = x.shape
    n_out = w.shape[2]
    y = torch.empty((m, n_out), device=x.device, dtype=w.dtype)
    if m == 0:
        return y
    args = dict(
        x_ptr=x, table_ptr=knots.table, w_ptr=w, y_ptr=y, M=m, IN=n_in, OUT=n_out,
        M_BUCKET=tuning_bucket(m), stride_xm=x.stride(0), stride_wf=w.stride(0), stride_wi=w.stride(1),
        stride_ym=y.stride(0), **_common_args(knots, precision),
    )
    _launch("forward", _forward_tuned, args, m * n_in * n_out * w.shape[0],
            lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n_out, meta["BLOCK_N"]),))
    return y


def _launch_grad_input(dy, w, x, knots, precision):
    """dx in x's dtype."""
    m, n_in = x.shape
    n_out = w.shape[2]
    dx = torch.empty_like(x)
    if m == 0:
        return dx
    args = dict(
        dy_ptr=dy, w_ptr=w, x_ptr=x, table_ptr=knots.table, dx_ptr=dx, M=m, IN=n_in, OUT=n_out,
        M_BUCKET=tuning_bucket(m), stride_dym=dy.stride(0), stride_wf=w.stride(0), stride_wi=w.stride(1),
        stride_xm=x.stride(0), stride_dxm=dx.stride(0), **_common_args(knots, precision),
    )
    _launch("grad_input", _grad_input_tuned, args, m * n_in * n_out * w.shape[0],
            lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n_in, meta["BLOCK_K"]),))
    return dx


def _grad_weight_splits(m: int, n_in: int, n_out: int, n_bases: int, device: torch.device) -> int:
    """How many row slices the weight gradient is split into (split-K).

    There is one program per (inputs x outputs) tile and chunk of features; with the largest
    tiles (128 x 256) and one basis per chunk, a small layer (e.g. a ViT-Tiny MLP, 192 ->
    768, M = 25k tokens) leaves most SMs idle. Each slice writes an fp32 partial gradient
    that the unpack kernel sums, so this stays at a few slices and only for small layers.
    """
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    programs = triton.cdiv(n_in, 128) * triton.cdiv(n_out, 256) * (n_bases + 1)
    if programs >= 2 * sms:
        return 1
    return max(1, min(8, triton.cdiv(2 * sms, programs), m // 2048))


_UNPACK_BLOCK = 32  # (outputs, inputs) tile of the pack / unpack kernels


def _pack_weight(base_weight, spline_weight, spline_scaler, dtype) -> torch.Tensor:
    """The combined weight ``W`` (G + k + 1, in, out) in ``dtype``: ``W[0] = base_weight.T``,
    ``W[1 + j] = (spline_weight[:, :, j] * spline_scaler).T`` (see :func:`_pack_weight_kernel`)."""
    n_out, n_in, n_bases = spline_weight.shape
    w = torch.empty((n_bases + 1, n_in, n_out), device=spline_weight.device, dtype=dtype)
    grid = (triton.cdiv(n_out, _UNPACK_BLOCK), triton.cdiv(n_in, _UNPACK_BLOCK))
    _pack_weight_kernel[grid](
        base_weight, spline_weight, spline_weight if spline_scaler is None else spline_scaler, w, n_in, n_out,
        N_BASES=n_bases, BASES_POW2=triton.next_power_of_2(n_bases), HAS_SCALER=spline_scaler is not None,
        BLOCK_O=_UNPACK_BLOCK, BLOCK_I=_UNPACK_BLOCK, PARAM_IN=n_in,
    )
    return w


def _launch_grad_weight(x, knots, dy, spline_weight, spline_scaler, precision):
    """Gradients of base_weight, spline_weight and spline_scaler (None without a scaler),
    in the parameters' own dtype."""
    m, n_in = x.shape
    n_out, _, n_bases = spline_weight.shape
    splits = max(1, min(_grad_weight_splits(m, n_in, n_out, n_bases, x.device), m))
    while splits > 1 and splits * n_out * n_in * (n_bases + 1) > _INT32_LIMIT:  # keep int32 indexing
        splits //= 2
    rows_per_split = triton.cdiv(triton.cdiv(max(m, 1), splits), 16) * 16
    splits = max(1, triton.cdiv(m, rows_per_split))
    split_stride = n_out * n_in * (n_bases + 1)
    dw = torch.empty((splits, n_bases + 1, n_in, n_out), device=x.device, dtype=torch.float32)
    args = dict(
        x_ptr=x, table_ptr=knots.table, dy_ptr=dy, dw_ptr=dw,
        M=m, IN=n_in, OUT=n_out, M_BUCKET=tuning_bucket(m), ROWS_PER_SPLIT=rows_per_split,
        stride_xm=x.stride(0), stride_dym=dy.stride(0), split_stride=split_stride, **_common_args(knots, precision),
    )
    if m == 0:
        dw.zero_()
    else:
        _launch("grad_weight", _grad_weight_tuned, args, m * n_in * n_out * (n_bases + 1),
                lambda meta: (triton.cdiv(n_in, meta["BLOCK_K"]) * triton.cdiv(n_out, meta["BLOCK_N"]),
                              triton.cdiv(n_bases, meta["CHUNK"]) + 1, splits))
    d_base = spline_weight.new_empty((n_out, n_in))
    d_spline = torch.empty_like(spline_weight)
    d_scaler = None if spline_scaler is None else torch.empty_like(spline_scaler)
    grid = (triton.cdiv(n_out, _UNPACK_BLOCK), triton.cdiv(n_in, _UNPACK_BLOCK))
    _unpack_grads_kernel[grid](
        dw, spline_weight, spline_weight if spline_scaler is None else spline_scaler, d_base, d_spline,
        d_spline if d_scaler is None else d_scaler, n_in, n_out, splits, split_stride,
        N_BASES=n_bases, BASES_POW2=triton.next_power_of_2(n_bases), HAS_SCALER=spline_scaler is not None,
        BLOCK_O=_UNPACK_BLOCK, BLOCK_I=_UNPACK_BLOCK, PARAM_IN=n_in,
    )
    return d_base, d_spline, d_scaler


# --------------------------------------------------------------------------------------
# PyTorch side: validation, knots, autograd
# --------------------------------------------------------------------------------------
def _validate(x, grid, base_weight, spline_weight, spline_scaler, spline_order, compute_dtype) -> int:
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
    if compute_dtype is not None and compute_dtype not in _OPERAND_DTYPES:
        raise TypeError(f"compute_dtype must be None, float32, float16 or bfloat16, got {compute_dtype}")
    # Without compute_dtype everything is in x's dtype; with it, the weights share one dtype.
    like, weight_dtype = ("x", x.dtype) if compute_dtype is None else ("base_weight", base_weight.dtype)
    for name in ("base_weight", "spline_weight", "spline_scaler"):
        if name in tensors and tensors[name].dtype != weight_dtype:
            raise TypeError(f"{name} has dtype {tensors[name].dtype} but {like} has {weight_dtype}; cast the "
                            "weights to one dtype (or pass compute_dtype, as labkit.kan.ops.bspline_kan does "
                            "under autocast)")
    if weight_dtype not in _OPERAND_DTYPES:
        raise TypeError(f"the weights must be float32, float16 or bfloat16, got {weight_dtype}")
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


def knot_table(grid: torch.Tensor, spline_order: int) -> torch.Tensor:
    """Per-input constants of the Cox-de Boor recursion, shape ``(k + 1, rows, in_padded)``.

    ``table[0, j, i] = t_j`` (the knots of input ``i``) and ``table[p, j, i] = 1 / (t_{j+p} -
    t_j)``, or 0 where that span is empty: the basis divided by it is 0 there itself (the
    reference's 0/0 gives NaN instead). Inputs run along the last axis, so a block of
    consecutive inputs is one vector load, and the kernels multiply by inverse spans instead
    of dividing. Everything past the grid's end and past the last input is 0.
    """
    n_in, n_knots = grid.shape
    rows = n_knots + _TABLE_EXTRA_ROWS
    n_in_padded = triton.cdiv(n_in, _TABLE_INPUT_MULTIPLE) * _TABLE_INPUT_MULTIPLE
    table = grid.new_zeros((spline_order + 1, rows, n_in_padded), dtype=torch.float32)
    knots = grid.t()  # (n_knots, in)
    table[0, :n_knots, :n_in] = knots
    for p in range(1, spline_order + 1):
        span = knots[p:] - knots[:-p]
        table[p, : n_knots - p, :n_in] = torch.where(span > 0, span.reciprocal(), 0.0)
    return table


#: Knots count as uniform when every knot is within this many fp32 ulps (of the largest
#: knot) of the straight line through the first and the last one.
UNIFORM_TOLERANCE_ULPS = 4


def uniform_step(grid: torch.Tensor, spline_order: int) -> torch.Tensor | None:
    """``1 / step`` per input (float64) if every row of ``grid`` is uniformly spaced, else None.

    The uniform recursion is used from order 2 on, where the bases and their slopes are
    continuous: an input that rounds into the neighbouring interval right at a knot then
    changes the result by rounding error only. (At order 0 and 1 the values or slopes jump
    at the knots, and only the exact comparisons of the general recursion reproduce the
    reference there.) One host synchronisation; :func:`knots_for` caches the answer.
    """
    if spline_order < 2 or grid.shape[1] < 2:
        return None
    g = grid.double()
    step = (g[:, -1] - g[:, 0]) / (g.shape[1] - 1)
    line = g[:, :1] + step[:, None] * torch.arange(g.shape[1], device=g.device, dtype=g.dtype)
    tolerance = UNIFORM_TOLERANCE_ULPS * 2.0**-23 * g.abs().amax().clamp_min(1.0)
    uniform = (step > 0).all() & ((g - line).abs().amax() <= tolerance)
    return step.reciprocal() if bool(uniform) else None


class Knots:
    """What the kernels need to know about a grid: the knot table, ``G``, ``k``, and whether
    the knots are uniform (then ``table[0, 0]`` holds the first knot and ``table[1, 0]`` the
    inverse step of each input, which is all the uniform recursion reads)."""

    def __init__(self, grid: torch.Tensor, spline_order: int):
        self.order = spline_order
        self.grid_size = grid.shape[1] - 2 * spline_order - 1
        self.table = knot_table(grid, spline_order)
        inverse_step = uniform_step(grid, spline_order)
        self.uniform = inverse_step is not None
        if self.uniform:
            self.table[1, 0, : grid.shape[0]] = inverse_step.float()


_KNOTS_CACHE: dict = {}
_KNOTS_CACHE_SIZE = 64


def knots_for(grid: torch.Tensor, spline_order: int) -> Knots:
    """:class:`Knots` of ``grid``, cached per grid tensor and in-place version.

    Layers change their grid only in ``update_grid`` / ``extend_grid`` (in place, which
    bumps the tensor's version counter, or by assigning a new tensor), so every other call
    reuses the table and the uniformity test, and costs no launches and no host sync.
    """
    try:
        version = grid._version
    except RuntimeError:  # inference tensors have no version counter: do not cache
        return Knots(grid, spline_order)
    key = (id(grid), spline_order)
    hit = _KNOTS_CACHE.get(key)
    if hit is not None and hit[0]() is grid and hit[1] == version:
        return hit[2]
    knots = Knots(grid, spline_order)
    if len(_KNOTS_CACHE) >= _KNOTS_CACHE_SIZE:
        _KNOTS_CACHE.clear()
    _KNOTS_CACHE[key] = (weakref.ref(grid), version, knots)
    return knots


class _BSplineKAN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, grid, base_weight, spline_weight, spline_scaler, spline_order, compute_dtype):
        _validate(x, grid, base_weight, spline_weight, spline_scaler, spline_order, compute_dtype)
        compute_dtype = compute_dtype or x.dtype
        x = x.contiguous()
        base_weight, spline_weight = base_weight.contiguous(), spline_weight.contiguous()
        spline_scaler = None if spline_scaler is None else spline_scaler.contiguous()
        knots = knots_for(grid, spline_order)
        precision = _dot_precision(compute_dtype)
        w = _pack_weight(base_weight, spline_weight, spline_scaler, compute_dtype)
        y = _launch_forward(x, knots, w, precision)
        # x, the packed weight (weight-sized, in the compute dtype: what autocast would
        # cache too) and the parameters the chain rule through the scaler needs. Nothing
        # of size rows x in x (G + k).
        ctx.save_for_backward(x, w, spline_weight, spline_scaler)
        ctx.knots, ctx.precision = knots, precision
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, w, spline_weight, spline_scaler = ctx.saved_tensors
        need_x, _, need_base, need_spline, need_scaler, _, _ = ctx.needs_input_grad
        dy = dy.to(w.dtype).contiguous()
        dx = d_base = d_spline = d_scaler = None
        if need_x:
            dx = _launch_grad_input(dy, w, x, ctx.knots, ctx.precision)
        if need_base or need_spline or need_scaler:
            d_base, d_spline, d_scaler = _launch_grad_weight(
                x, ctx.knots, dy, spline_weight, spline_scaler, ctx.precision)
        return (dx, None, d_base if need_base else None, d_spline if need_spline else None,
                d_scaler if need_scaler else None, None, None)


def bspline_kan_triton(
    x: torch.Tensor,
    grid: torch.Tensor,
    base_weight: torch.Tensor,
    spline_weight: torch.Tensor,
    spline_scaler: torch.Tensor | None,
    spline_order: int,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """B-spline KAN layer with fused Triton kernels; differentiable in x and all weights.

    Args:
        x: (M, in) activations, float32 / float16 / bfloat16.
        grid: (in, G + 2k + 1) float32 knots, one non-decreasing row per input (not differentiated).
        base_weight: (out, in).
        spline_weight: (out, in, G + k).
        spline_scaler: (out, in), or None.
        spline_order: k, 0 .. MAX_SPLINE_ORDER.
        compute_dtype: the dtype of the GEMM operands and of ``y``. None: x's dtype, and the
            weights must have it too. Given (what :func:`labkit.kan.ops.bspline_kan` does under
            autocast), x and the weights may be of any supported dtype: the kernels cast on
            load, and the gradients come back in the dtypes of x and of the weights.

    Returns:
        y: (M, out) in ``compute_dtype``, ``silu(x) @ base_weight.T + B(x) @ (spline_weight * scaler).T``.
    """
    return _BSplineKAN.apply(x, grid, base_weight, spline_weight, spline_scaler, spline_order, compute_dtype)


# --------------------------------------------------------------------------------------
# Self-check on a GPU: python -m labkit.kan.triton_bspline [--tf32]
# --------------------------------------------------------------------------------------
def _selfcheck(rows: int = 4096, n_in: int = 768, n_out: int = 3072, grid_size: int = 5, spline_order: int = 3,
               tf32: bool = False, device: str = "cuda") -> None:
    """Accuracy against the float64 reference, then time and peak memory next to Linear+GELU.

    Forward + backward (gradients of x and of every weight) at a ViT-Base MLP shape, fp32
    and bf16 (and fp32 with TF32 and with 3xTF32 when ``tf32``). Baselines of the same (rows, in) -> out
    shape and dtype: ``gelu(x @ W.T)``, and efficient-kan's formulation (the reference).
    The first call of each dtype autotunes (compiles every config): allow a few minutes.
    ``device="cpu"`` (under ``TRITON_INTERPRET=1``, small shapes) checks accuracy only.
    """
    import torch.nn.functional as F
    from triton.testing import do_bench

    from labkit.kan.reference import bspline_kan_reference, uniform_knots

    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("the self-check needs a CUDA GPU")
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    grid = uniform_knots(n_in, grid_size, spline_order, dtype=torch.float32, device=device)  # on [-1, 1]
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

    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU interpreter"
    print(f"B-spline KAN {rows}x{n_in} -> {n_out}, G={grid_size}, k={spline_order}, "
          f"{device_name}, triton {triton.__version__}, torch {torch.__version__}")
    y_ref, grads_ref = step(bspline_kan_reference, torch.float64)()
    names = ["y"] + ["d_" + n for n in params]
    wanted = [y_ref, *grads_ref]
    del y_ref, grads_ref
    print("relative error vs float64 reference (norm ratio / max-abs ratio):")
    # (label, dtype, torch's TF32 switch, LABKIT_KAN_FP32_DOT)
    cases = [("fp32", torch.float32, False, "ieee"), ("bf16", torch.bfloat16, False, "ieee")]
    if tf32:
        cases += [("fp32 tf32", torch.float32, True, "ieee"), ("fp32 3xtf32", torch.float32, False, "tf32x3")]
    fp32_dot = os.environ.get("LABKIT_KAN_FP32_DOT")

    def use(allow_tf32, exact_fp32_dot):
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        os.environ["LABKIT_KAN_FP32_DOT"] = exact_fp32_dot

    def restore():
        use(False, fp32_dot or "ieee")
        if fp32_dot is None:
            del os.environ["LABKIT_KAN_FP32_DOT"]

    for label, dtype, allow_tf32, exact_fp32_dot in cases:
        use(allow_tf32, exact_fp32_dot)
        y, grads = step(bspline_kan_triton, dtype)()
        errors = []
        for name, got, want in zip(names, [y, *grads], wanted):
            norm = ((got.double() - want).norm() / want.norm()).item()
            peak = ((got.double() - want).abs().max() / want.abs().max()).item()
            errors.append(f"{name} {norm:.1e}/{peak:.1e}")
        print(f"  {label:11s} " + "  ".join(errors))
    del wanted
    if device.type != "cuda":
        restore()
        return
    torch.cuda.empty_cache()

    print(f"{'':11s} {'kan ms':>8s} {'lin+gelu':>8s} {'ratio':>6s} {'eff-kan':>8s} | "
          f"{'kan MiB':>8s} {'lin MiB':>8s} {'ratio':>6s} {'eff MiB':>8s}   (forward + backward)")
    for label, dtype, allow_tf32, exact_fp32_dot in cases:
        use(allow_tf32, exact_fp32_dot)
        kan, lin, eff = step(bspline_kan_triton, dtype), linear_gelu_step(dtype), step(bspline_kan_reference, dtype)
        kan()  # autotune outside the timed region
        t_kan, t_lin, t_eff = (do_bench(fn, warmup=50, rep=300) for fn in (kan, lin, eff))
        m_kan, m_lin, m_eff = (peak_mib(fn) for fn in (kan, lin, eff))
        print(f"{label:11s} {t_kan:8.3f} {t_lin:8.3f} {t_kan / t_lin:6.2f} {t_eff:8.3f} | "
              f"{m_kan:8.0f} {m_lin:8.0f} {m_kan / m_lin:6.2f} {m_eff:8.0f}")
        for name, tuned in (("forward", _forward_tuned), ("grad input", _grad_input_tuned),
                            ("grad weight", _grad_weight_tuned)):
            best = getattr(tuned, "best_config", None)
            print(f"            {name}: {best}")
    restore()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=_selfcheck.__doc__.splitlines()[0])
    parser.add_argument("--tf32", action="store_true",
                        help="also run fp32 with TF32 and with 3xTF32 (LABKIT_KAN_FP32_DOT=tf32x3) tensor cores")
    parser.add_argument("--grid-size", type=int, default=5)
    parser.add_argument("--spline-order", type=int, default=3)
    cli = parser.parse_args()
    _selfcheck(grid_size=cli.grid_size, spline_order=cli.spline_order, tf32=cli.tf32)
