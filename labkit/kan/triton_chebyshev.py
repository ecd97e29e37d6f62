"""Fused Triton kernels for the Chebyshev-KAN layer, forward and backward.

The layer (see :func:`labkit.kan.reference.chebykan_reference`) is

    y[m, o] = sum_{i, d} T_d(tanh x[m, i]) * coeffs[i, o, d],    d = 0..D.

Read with the degree as part of the reduction index, this is one GEMM with
``K = in * (D + 1)`` whose left operand, the Chebyshev features ``T_d(tanh x)``, is
cheap to compute from ``x``. The kernels below never store that operand: each tile of
features is generated in registers, fed to ``tl.dot`` and dropped. Memory stays that of
a plain linear layer (autograd keeps only ``x`` and ``coeffs``), and the work is that of a
GEMM on tensor cores.

Two identities shape the code:

* ``T_0 = 1``, so degree 0 contributes ``bias[o] = sum_i coeffs[i, o, 0]`` to every row,
  and its weight gradient is ``sum_m dy[m, o]`` for every ``i``. Both are computed with
  one cheap reduction instead of a GEMM, which removes 1/(D+1) of the GEMM work
  (a quarter at degree 3). The kernels only handle degrees ``1..D``.
* ``d T_d / dt = d * U_{d-1}(t)`` (Chebyshev polynomials of the second kind, again a
  three-term recurrence), and ``d tanh(x) / dx = 1 - tanh(x)^2``. Both are bounded on
  ``[-1, 1]``, so the gradient is finite for every finite ``x``, even when ``tanh``
  rounds to exactly +-1 (the ``acos`` form of the layer has an infinite derivative there).

Kernels (``BLOCK_*`` sizes are autotuned on CUDA; M is the number of rows):

* forward: one program per (BLOCK_M, BLOCK_N) tile of ``y``, looping over the inputs
  BLOCK_K at a time; one fp32 accumulator, one ``tl.dot`` per degree.
* backward dx: one program per (BLOCK_M, BLOCK_K) tile of ``dx``, reducing over the
  outputs BLOCK_N at a time. The products ``dy @ W_d^T`` are mixed with the per-element
  derivative weights ``d U_{d-1}(t) (1 - t^2)`` once their reduction is complete: either one
  degree per sweep (two fp32 tiles live, so matmul-sized tiles fit) or all D side by side in
  one sweep (D accumulators, dy read once); the autotuner picks.
* backward tanh: ``t = tanh(x)`` in fp32, once, into a transient (M, in) buffer (freed when
  the backward returns; nothing of size M * in * (D + 1) is ever stored).
* backward dcoeffs: one program per (BLOCK_K, BLOCK_N) tile of ``coeffs[:, :, d]``, reducing
  over the rows BLOCK_M at a time, from ``t``: only the cheap recurrence runs per element.
  Either one degree per program (one accumulator ``T_d(t)^T @ dy``, plain-matmul tiles) or
  all D at once (D accumulators sharing each t and dy tile); the autotuner picks.

No kernel uses atomics: every output element is owned by exactly one program.
"""
from __future__ import annotations

import contextlib
import math
import os
import time

import torch
import triton
import triton.language as tl

from labkit.backend import cublas_allows_tf32, interpret_mode, patch_triton_interpreter, tuning_bucket

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_DEGREE = 32  # the kernels unroll over degrees; beyond this, compile time and registers explode
FP32_INPUT_PRECISIONS = ("ieee", "tf32", "tf32x3")
_MAX_INT32_ELEMENTS = 2**31 - 1  # kernels index with int32
# On CUDA, benchmark every config that fits and keep the fastest (per shape, degree and
# dtype). LABKIT_AUTOTUNE=0 takes the first config that fits instead: less compiling.
AUTOTUNE = os.environ.get("LABKIT_AUTOTUNE", "1") != "0"

_LOG2_E = tl.constexpr(1.4426950408889634)
# The interpreter runs tl.dot as a NumPy matmul, and NumPy has no bfloat16: it would
# multiply the raw bits. Under the interpreter we upcast the operands to fp32 first,
# which gives the same products (a 16-bit x 16-bit product is exact in fp32).
_UPCAST_DOT_OPERANDS = tl.constexpr(interpret_mode())


if interpret_mode():
    patch_triton_interpreter()


# ----------------------------------------------------------------------------------------
# Element-wise math shared by the kernels (fp32, in registers)
# ----------------------------------------------------------------------------------------
@triton.jit
def _tanh_and_slope(x):
    """``tanh(x)`` and its derivative ``1 - tanh(x)^2``, both fp32, from one ``exp2``.

    With ``e = exp(-2|x|)`` in (0, 1]: ``tanh|x| = (1 - e) / (1 + e)`` and
    ``1 - tanh^2 = 4e / (1 + e)^2``. The second form keeps full *relative* precision when
    ``tanh`` is close to +-1, where ``1 - t*t`` would cancel. ``x = +-inf`` gives ``e = 0``,
    hence ``t = +-1`` and slope 0, as ``torch.tanh`` does.
    """
    x = x.to(tl.float32)
    e = tl.exp2((-2.0 * _LOG2_E) * tl.abs(x))
    one_plus_e = 1.0 + e
    t_abs = (1.0 - e) / one_plus_e
    t = tl.where(x < 0.0, -t_abs, t_abs)
    slope = 4.0 * e / (one_plus_e * one_plus_e)
    return t, slope


@triton.jit
def _chebyshev_features(t, D: tl.constexpr, dtype: tl.constexpr):
    """``(T_1(t), ..., T_D(t))`` as a tuple of tiles cast to ``dtype`` (the tl.dot operand type).

    The recurrence ``T_n = 2t T_{n-1} - T_{n-2}`` runs in fp32; only the results are
    rounded. ``T_0 = 1`` is not needed: the host folds it into a bias.
    """
    feats = (t.to(dtype),)
    t_prev = tl.full(t.shape, 1.0, tl.float32)  # T_0
    t_cur = t  # T_1
    for _n in tl.static_range(2, D + 1):
        t_next = 2.0 * t * t_cur - t_prev
        t_prev = t_cur
        t_cur = t_next
        feats = feats + (t_cur.to(dtype),)
    return feats


@triton.jit
def _chebyshev_feature_of_degree(t, degree, D: tl.constexpr):
    """``T_degree(t)`` in fp32 for a *runtime* ``degree`` in 1..D (one program = one degree).

    The recurrence runs to the highest degree D and keeps the wanted term: D is a compile-time
    constant, so the loop unrolls into straight-line code, and a select per step costs less
    than a data-dependent loop would (that inner loop would also stop Triton from
    software-pipelining the loop around it).
    """
    feat = t
    t_prev = tl.full(t.shape, 1.0, tl.float32)  # T_0
    t_cur = t  # T_1
    for n in tl.static_range(2, D + 1):
        t_next = 2.0 * t * t_cur - t_prev
        t_prev = t_cur
        t_cur = t_next
        feat = tl.where(degree == n, t_cur, feat)
    return feat


@triton.jit
def _chebyshev_slope_of_degree(t, degree, D: tl.constexpr):
    """``T_degree'(t) = degree * U_{degree-1}(t)`` in fp32 for a runtime ``degree`` in 1..D.

    U_0 = 1, U_1 = 2t, U_n = 2t U_{n-1} - U_{n-2}: the same select-the-wanted-term scheme as
    :func:`_chebyshev_feature_of_degree`.
    """
    slope = tl.full(t.shape, 1.0, tl.float32)  # degree 1: T_1' = 1 * U_0
    u_prev = tl.zeros(t.shape, tl.float32)  # U_{-1} = 0 makes the recurrence give U_1 = 2t
    u_cur = tl.full(t.shape, 1.0, tl.float32)  # U_0
    for n in tl.static_range(2, D + 1):
        u_next = 2.0 * t * u_cur - u_prev
        u_prev = u_cur
        u_cur = u_next  # U_{n-1}
        slope = tl.where(degree == n, n * u_cur, slope)
    return slope


@triton.jit
def _dot(a, b, acc, INPUT_PRECISION: tl.constexpr):
    """``acc + a @ b`` with fp32 accumulation (see _UPCAST_DOT_OPERANDS)."""
    if _UPCAST_DOT_OPERANDS:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=INPUT_PRECISION)


@triton.jit
def _load_tile(ptr, rows, cols, n_rows, n_cols, VOLATILE: tl.constexpr = False):
    """``ptr[rows, cols]`` of a row-major (n_rows, n_cols) matrix, 0 outside it.

    ``VOLATILE=True`` pins the load (and so all the math on its result) where it is written.
    Inside a loop, the compiler would otherwise hoist a load that does not change with the
    iteration, with its math, out of the loop: in the dx kernel that turns a short epilogue
    into D - 1 weight tiles kept live across the whole sweep (about 128 extra registers per
    thread at 128 x 128, 8 warps: ptxas spills).
    """
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    return tl.load(ptr + rows[:, None] * n_cols + cols[None, :], mask=mask, other=0.0, volatile=VOLATILE)


@triton.jit
def _grouped_tile(pid, n_rows, n_cols, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, GROUP_R: tl.constexpr):
    """Map a linear program id to a (row block, column block) of the output.

    Programs are launched in order of their id, so consecutive ids should reuse the same
    operand tiles while those are still in L2: we sweep the columns of GROUP_R row blocks
    before moving on to the next GROUP_R row blocks.
    """
    row_blocks = tl.cdiv(n_rows, BLOCK_R)
    col_blocks = tl.cdiv(n_cols, BLOCK_C)
    programs_per_group = GROUP_R * col_blocks
    first_row_block = (pid // programs_per_group) * GROUP_R
    rows_in_group = min(row_blocks - first_row_block, GROUP_R)
    local = pid % programs_per_group
    return first_row_block + local % rows_in_group, local // rows_in_group


# ----------------------------------------------------------------------------------------
# Autotuning: configs, and pruning those that cannot fit
# ----------------------------------------------------------------------------------------
def _config(block_m, block_n, block_k, warps, stages, group=8, **extra):
    return triton.Config(
        {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "GROUP": group, **extra},
        num_warps=warps,
        num_stages=stages,
    )


def _dx_config(block_m, block_n, block_k, warps, stages, all_degrees_at_once):
    return _config(block_m, block_n, block_k, warps, stages, ALL_DEGREES_AT_ONCE=all_degrees_at_once)


_dw_config = _dx_config  # the dcoeffs kernel has the same two variants


# Under the interpreter a program is plain NumPy: one small config keeps CPU tests fast
# (and with a single config the autotuner does not benchmark at all). The dx kernel has two
# code paths; the tests swap in the other one (see DX_INTERPRETER_VARIANTS).
_INTERPRETER_CONFIGS = [_config(16, 16, 16, 1, 1, group=2)]
DX_INTERPRETER_VARIANTS = {
    "one degree per pass": [_config(16, 16, 16, 1, 1, group=2, ALL_DEGREES_AT_ONCE=False)],
    "all degrees at once": [_config(16, 16, 16, 1, 1, group=2, ALL_DEGREES_AT_ONCE=True)],
}
DW_INTERPRETER_VARIANTS = {
    "one degree per program": [_config(16, 16, 16, 1, 1, group=2, ALL_DEGREES_AT_ONCE=False)],
    "all degrees at once": [_config(16, 16, 16, 1, 1, group=2, ALL_DEGREES_AT_ONCE=True)],
}

# BLOCK_M x BLOCK_N x BLOCK_K in each kernel's own meaning (see the table in the module
# docstring). The large tiles feed H100 tensor cores (16-bit operands, tf32); the small ones
# suit fp32 "ieee" products (FMA units, whose operands also live in registers) and high
# degrees, whose D accumulators or D feature tiles crowd the registers.
_FORWARD_CONFIGS = [
    _config(128, 256, 32, 8, 3),
    _config(128, 256, 16, 8, 3),
    _config(128, 128, 32, 8, 2),
    _config(128, 128, 64, 8, 3),
    _config(128, 128, 32, 4, 4),
    _config(64, 128, 32, 4, 4),
    _config(64, 64, 32, 4, 3),
    _config(128, 64, 16, 8, 3),
    _config(32, 32, 32, 4, 2),
]
# dx: tile (BLOCK_M rows, BLOCK_K inputs); the reduction runs over the outputs, BLOCK_N at a time.
# "One degree per pass" holds two fp32 tiles (the running product and the mixed gradient), so
# it affords plain-GEMM tiles: 128 x 128 over 8 warps is 2 x 64 accumulator registers per
# thread. "All degrees at once" holds D tiles and reads dy once for all of them, but at D = 3
# a 128 x 64 tile already costs 96 accumulator registers (8 warps) and ~230 in all (ptxas,
# sm_90); larger tiles spill. The autotuner picks the faster of the two per shape.
_DX_CONFIGS = [
    _dx_config(128, 64, 128, 8, 4, False),
    _dx_config(128, 64, 128, 8, 3, False),
    _dx_config(128, 64, 64, 8, 4, False),
    _dx_config(64, 64, 128, 8, 4, False),
    _dx_config(64, 64, 64, 4, 4, False),
    _dx_config(64, 64, 64, 4, 3, False),
    _dx_config(128, 64, 64, 8, 3, True),
    _dx_config(128, 64, 32, 4, 4, True),
    _dx_config(64, 64, 64, 4, 3, True),
    _dx_config(64, 32, 32, 4, 3, True),
    _dx_config(32, 32, 32, 4, 2, False),
    _dx_config(32, 32, 32, 4, 2, True),
]
# dcoeffs: tile (BLOCK_K inputs, BLOCK_N outputs); the reduction runs over the rows, BLOCK_M
# at a time. One degree per program holds one fp32 accumulator, so these are the tiles of a
# plain Hopper matmul: 128 x 256 over 8 warps is 128 accumulator registers per thread. All
# degrees at once holds D of them (D = 3: 64 x 128 over 8 warps is 96 registers).
_DW_CONFIGS = [
    _dw_config(64, 256, 128, 8, 3, False),
    _dw_config(32, 256, 128, 8, 4, False),
    _dw_config(64, 128, 128, 8, 4, False),
    _dw_config(64, 128, 128, 4, 4, False),
    _dw_config(32, 128, 128, 4, 4, False),
    _dw_config(64, 256, 64, 8, 3, False),
    _dw_config(64, 128, 64, 4, 4, False),
    _dw_config(64, 128, 128, 8, 3, True),
    _dw_config(64, 128, 64, 8, 3, True),
    _dw_config(64, 64, 128, 8, 3, True),
    _dw_config(64, 64, 64, 4, 3, True),
    _dw_config(32, 64, 64, 4, 3, False),
    _dw_config(32, 32, 32, 4, 2, False),
    _dw_config(32, 32, 32, 4, 2, True),
]

# What a config must fit, estimated per thread: the fp32 accumulators plus the feature
# tiles kept live in registers (a 16-bit value is half a register). Calibrated by compiling
# for sm_90 (ptxas register counts): above these budgets the kernels spill. FMA products
# ("ieee" fp32) hold their operand fragments in registers too, hence the lower budget.
# Shared memory holds num_stages copies of the operand tiles (H100: 227 KiB per block).
_REGISTER_BUDGET = {"tensor cores": 160, "ieee fp32": 80}
_MAX_SHARED_BYTES = 200 * 1024


def _fits(cfg, named_args, kwargs, accumulators, live_operands, stage_elems, fp32_stage_elems=0) -> bool:
    """``stage_elems`` operand elements per pipeline stage in the input dtype, plus ``fp32_stage_elems`` in fp32."""
    # The tensor-core operands' dtype: dy and w have it (x may be wider, fp32 under autocast).
    element_size = named_args["dy_ptr" if "dy_ptr" in named_args else "w_ptr"].element_size()
    fp32_ieee = element_size == 4 and kwargs["INPUT_PRECISION"] == "ieee"
    threads = 32 * cfg.num_warps
    registers = (accumulators + live_operands * element_size / 4) / threads
    budget = _REGISTER_BUDGET["ieee fp32" if fp32_ieee else "tensor cores"]
    stage_bytes = stage_elems * element_size + fp32_stage_elems * 4
    if element_size == 4 and kwargs["INPUT_PRECISION"] == "tf32x3":
        # 3xTF32 keeps the big and the small half of each operand tile: on sm_90 the first
        # fp32 config that passed the single-copy estimate asked for 245,760 B (limit 232,448).
        stage_bytes *= 2
    return registers <= budget and cfg.num_stages * stage_bytes <= _MAX_SHARED_BYTES


def _keep_fitting(configs, fits):
    """Configs that fit; if none does (very high degree), the one with the smallest tiles.

    With ``AUTOTUNE`` off, only the first config that fits (the lists are ordered from the
    largest tiles down, which suits H100 and 16-bit data best): one compile per shape class
    instead of one per config, for tests and short experiments.
    """
    kept = [c for c in configs if fits(c)]
    if not kept:
        kept = [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"])]
    return kept if AUTOTUNE else kept[:1]


def _prune_forward(configs, named_args, **kwargs):
    def fits(c):
        bm, bn, bk, d = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], kwargs["D"]
        return _fits(c, named_args, kwargs, bm * bn, d * bm * bk, bk * (bm + d * bn))
    return _keep_fitting(configs, fits)


def _prune_dx(configs, named_args, **kwargs):
    def fits(c):
        bm, bn, bk, d = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], kwargs["D"]
        if c.kwargs["ALL_DEGREES_AT_ONCE"]:  # D accumulators; D weight tiles per stage
            return _fits(c, named_args, kwargs, d * bm * bk, 0, bn * (bm + d * bk))
        # the running product and the mixed gradient; one weight tile per stage
        return _fits(c, named_args, kwargs, 2 * bm * bk, 0, bn * (bm + bk))
    return _keep_fitting(configs, fits)


def _prune_dw(configs, named_args, **kwargs):
    def fits(c):
        bm, bn, bk, d = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], kwargs["D"]
        if c.kwargs["ALL_DEGREES_AT_ONCE"]:  # D accumulators, D feature tiles
            return _fits(c, named_args, kwargs, d * bk * bn, d * bk * bm, bm * bn, bm * bk)
        return _fits(c, named_args, kwargs, bk * bn, bk * bm, bm * bn, bm * bk)  # t is read in fp32
    return _keep_fitting(configs, fits)


def _autotune(configs, prune, interpreter_configs=_INTERPRETER_CONFIGS):
    if interpret_mode():
        return triton.autotune(configs=interpreter_configs, key=_TUNING_KEY)
    return triton.autotune(configs=configs, key=_TUNING_KEY, prune_configs_by={"early_config_prune": prune},
                           cache_results=True)  # timings kept on disk, as for the B-spline kernels


# Tuned once per power-of-two bucket of the row count M, not per M: a training loop meets several
# M (full batches, the last partial batch, evaluation batches), and with M itself in the key each
# new one re-ran the whole tuning (a ViT's first epoch on an H200 took 2.45 s instead of 0.89 s).
_TUNING_KEY = ["M_BUCKET", "N_IN", "N_OUT", "D"]


# ----------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------
@_autotune(_FORWARD_CONFIGS, _prune_forward)
@triton.jit
def _chebykan_forward_kernel(
    x_ptr,  # (M, N_IN), contiguous
    w_ptr,  # (D + 1, N_IN, N_OUT), contiguous: w[d] = coeffs[:, :, d]
    y_ptr,  # (M, N_OUT), contiguous
    M, N_IN, N_OUT, M_BUCKET,
    D: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr,
):
    """y tile (BLOCK_M, BLOCK_N) = bias + sum_{d>=1} T_d(tanh x[:, k-block]) @ w[d][k-block, :].

    ``bias = sum_k w[0][k, :]`` (T_0 = 1) is summed on the way, element-wise into one small
    tile and reduced once at the end: no GEMM work and no separate launch for degree 0.
    """
    row_block, col_block = _grouped_tile(tl.program_id(0), M, N_OUT, BLOCK_M, BLOCK_N, GROUP)
    rows = row_block * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = col_block * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N_OUT

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    bias = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, N_IN, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < N_IN
        # Padding columns (ks >= N_IN) load x = 0, whose features are not 0 (T_2(0) = -1);
        # they are cancelled because the matching weight rows load as 0.
        x = tl.load(x_ptr + rows[:, None] * N_IN + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        t = _tanh_and_slope(x)[0]
        w_ptrs = w_ptr + ks[:, None] * N_OUT + cols[None, :]
        w_mask = k_ok[:, None] & col_ok[None, :]
        # All D features first, then D dots: the feature math can overlap the tensor-core
        # work still in flight from the previous step.
        feats = _chebyshev_features(t, D, w_ptr.dtype.element_ty)  # x may be wider than the operands
        bias += tl.load(w_ptrs, mask=w_mask, other=0.0).to(tl.float32)
        for d in tl.static_range(1, D + 1):
            w = tl.load(w_ptrs + d * N_IN * N_OUT, mask=w_mask, other=0.0)
            acc = _dot(feats[d - 1], w, acc, INPUT_PRECISION)

    acc += tl.sum(bias, axis=0)[None, :]
    tl.store(y_ptr + rows[:, None] * N_OUT + cols[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


@_autotune(_DX_CONFIGS, _prune_dx, DX_INTERPRETER_VARIANTS["one degree per pass"])
@triton.jit
def _chebykan_dx_kernel(
    dy_ptr,  # (M, N_OUT), contiguous
    w_ptr,  # (D + 1, N_IN, N_OUT), contiguous, as in the forward kernel (w[0] unused here)
    x_ptr,  # (M, N_IN), contiguous
    dx_ptr,  # (M, N_IN), contiguous
    M, N_IN, N_OUT, M_BUCKET,
    D: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr,
    ALL_DEGREES_AT_ONCE: tl.constexpr,
):
    """dx tile (BLOCK_M, BLOCK_K) = (1 - t^2) * sum_{d>=1} d U_{d-1}(t) * (dy @ w[d-1]^T).

    The products ``g_d = dy @ w[d-1]^T`` can only be mixed with the per-element weights
    ``d U_{d-1}(t)`` once their reduction over the outputs is complete. Two ways, picked by
    the autotuner:

    * one degree per pass (``ALL_DEGREES_AT_ONCE=False``): D sweeps over the outputs, each
      with one accumulator, folded into a running fp32 gradient after its sweep. Two fp32
      tiles live at any time, whatever D, so the tile can be as large as a plain matmul's.
    * all degrees at once: one sweep, D accumulators side by side that share each dy tile
      (dy is read once instead of D times), at the price of D times the registers.
    """
    row_block, k_block = _grouped_tile(tl.program_id(0), M, N_IN, BLOCK_M, BLOCK_K, GROUP)
    rows = row_block * BLOCK_M + tl.arange(0, BLOCK_M)
    ks = k_block * BLOCK_K + tl.arange(0, BLOCK_K)
    row_ok = rows < M
    k_ok = ks < N_IN
    # Operand loads in the main loop read rows and inputs wrapped into range (the tile's
    # padding rows/columns compute throw-away values that are never stored), so they need
    # a mask along the reduction axis only: fewer predicate registers per pipeline stage.
    dy_ptrs = dy_ptr + (rows % M)[:, None] * N_OUT + tl.arange(0, BLOCK_N)[None, :]
    # (BLOCK_N, BLOCK_K) view of w[d-1]^T: element (n, k) is w[d-1, k, n]. Along n it is
    # contiguous, which is the reduction axis here: the usual "K-major" B operand.
    wt_ptrs = w_ptr + (ks % N_IN)[None, :] * N_OUT + tl.arange(0, BLOCK_N)[:, None]

    if ALL_DEGREES_AT_ONCE:
        accs = ()
        for _degree in tl.static_range(D):
            accs = accs + (tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32),)
        for n0 in range(0, N_OUT, BLOCK_N):
            ns = n0 + tl.arange(0, BLOCK_N)
            n_ok = ns < N_OUT
            dy = tl.load(dy_ptrs + n0, mask=n_ok[None, :], other=0.0)
            updated = ()
            for d in tl.static_range(1, D + 1):
                wt = tl.load(wt_ptrs + d * N_IN * N_OUT + n0, mask=n_ok[:, None], other=0.0)
                updated = updated + (_dot(dy, wt, accs[d - 1], INPUT_PRECISION),)
            accs = updated
        # Epilogue: T_d'(t) = d * U_{d-1}(t), with U_0 = 1, U_1 = 2t, U_n = 2t U_{n-1} - U_{n-2}.
        t, slope = _tanh_and_slope(_load_tile(x_ptr, rows, ks, M, N_IN))
        u_prev = tl.zeros(t.shape, tl.float32)  # U_{-1} = 0 makes the recurrence give U_1 = 2t
        u_cur = tl.full(t.shape, 1.0, tl.float32)  # U_0
        grad_t = accs[0]  # d = 1: T_1' = 1 * U_0 = 1
        for d in tl.static_range(2, D + 1):
            u_next = 2.0 * t * u_cur - u_prev
            u_prev = u_cur
            u_cur = u_next  # U_{d-1}
            grad_t += (d * u_cur) * accs[d - 1]
    else:
        grad_t = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
        # A runtime loop, not an unrolled one: the inner sweep is compiled (and pipelined) once.
        for degree in range(1, D + 1):
            acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
            w_degree = wt_ptrs + degree * N_IN * N_OUT
            for n0 in range(0, N_OUT, BLOCK_N):
                ns = n0 + tl.arange(0, BLOCK_N)
                n_ok = ns < N_OUT
                dy = tl.load(dy_ptrs + n0, mask=n_ok[None, :], other=0.0)
                wt = tl.load(w_degree + n0, mask=n_ok[:, None], other=0.0)
                acc = _dot(dy, wt, acc, INPUT_PRECISION)
            # Rebuilding t from x after each sweep is cheaper than keeping it (and the U
            # recurrence) in registers across the sweep: BLOCK_M * BLOCK_K elements once,
            # against BLOCK_M * BLOCK_K * N_OUT multiply-adds in the sweep. VOLATILE keeps
            # the compiler from undoing this (see _load_tile).
            t = _tanh_and_slope(_load_tile(x_ptr, rows, ks, M, N_IN, VOLATILE=True))[0]
            grad_t += _chebyshev_slope_of_degree(t, degree, D) * acc
        slope = _tanh_and_slope(_load_tile(x_ptr, rows, ks, M, N_IN))[1]

    tl.store(dx_ptr + rows[:, None] * N_IN + ks[None, :], (slope * grad_t).to(dx_ptr.dtype.element_ty),
             mask=row_ok[:, None] & k_ok[None, :])


@triton.jit
def _tanh_kernel(x_ptr, t_ptr, numel, BLOCK: tl.constexpr):
    """t = tanh(x) in fp32, element-wise over a flat (M * N_IN) array: the backward's one pass of
    transcendental math, so that the dcoeffs programs (many per element) run only the recurrence."""
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offsets < numel
    t = _tanh_and_slope(tl.load(x_ptr + offsets, mask=ok, other=0.0))[0]
    tl.store(t_ptr + offsets, t, mask=ok)


@_autotune(_DW_CONFIGS, _prune_dw, DW_INTERPRETER_VARIANTS["one degree per program"])
@triton.jit
def _chebykan_dcoeffs_kernel(
    t_ptr,  # (M, N_IN) fp32, contiguous: tanh(x), from _tanh_kernel
    dy_ptr,  # (M, N_OUT), contiguous
    dw_ptr,  # dcoeffs (N_IN, N_OUT, D + 1)
    stride_dw_in, stride_dw_out, stride_dw_deg,
    M, N_IN, N_OUT, M_BUCKET,
    D: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr,
    ALL_DEGREES_AT_ONCE: tl.constexpr,
):
    """dcoeffs[k-block, n-block, d] = T_d(t[:, k-block])^T @ dy[:, n-block], t = tanh(x).

    Degree 0 (``T_0 = 1``) is the column sum of dy for every input: the programs that own
    degree 1 add up the dy tiles they read anyway and write it, so it costs no GEMM and no
    launch of its own.

    Two ways, picked by the autotuner:

    * one degree per program (``ALL_DEGREES_AT_ONCE=False``): program ``pid`` owns degree
      ``1 + pid % D`` of tile ``pid // D``. One fp32 accumulator, so the tile can be as large as
      a plain matmul's; the D programs of a tile each rerun the recurrence from t (a few
      multiply-adds per element: tanh itself was computed once, by _tanh_kernel). They run next
      to each other (consecutive ids), so t and dy come from L2 after the first.
    * all degrees at once: one program per tile, D accumulators that share each t and dy tile
      (read once instead of D times), at the price of D times the registers.
    """
    pid = tl.program_id(0)
    if ALL_DEGREES_AT_ONCE:
        tile = pid
        degree = 1  # unused
    else:
        tile = pid // D
        degree = 1 + pid % D
    k_block, col_block = _grouped_tile(tile, N_IN, N_OUT, BLOCK_K, BLOCK_N, GROUP)
    ks = k_block * BLOCK_K + tl.arange(0, BLOCK_K)
    cols = col_block * BLOCK_N + tl.arange(0, BLOCK_N)
    k_ok = ks < N_IN
    col_ok = cols < N_OUT
    dtype = dy_ptr.dtype.element_ty

    accs = ()
    for _d in tl.static_range(D if ALL_DEGREES_AT_ONCE else 1):
        accs = accs + (tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32),)
    column_sums = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        ms = m0 + tl.arange(0, BLOCK_M)
        m_ok = ms < M
        # t loaded already transposed, (BLOCK_K, BLOCK_M), so the features are the left operand.
        # Padding rows (ms >= M) load t = 0, whose features are finite; the matching dy rows load as 0.
        tt = tl.load(t_ptr + ms[None, :] * N_IN + ks[:, None], mask=k_ok[:, None] & m_ok[None, :], other=0.0)
        dy = tl.load(dy_ptr + ms[:, None] * N_OUT + cols[None, :], mask=m_ok[:, None] & col_ok[None, :], other=0.0)
        if degree == 1:  # the program of degree 1 (or of all degrees) also owns degree 0
            column_sums += tl.sum(dy.to(tl.float32), axis=0)
        if ALL_DEGREES_AT_ONCE:
            feats = _chebyshev_features(tt, D, dtype)
            updated = ()
            for d in tl.static_range(D):
                updated = updated + (_dot(feats[d], dy, accs[d], INPUT_PRECISION),)
            accs = updated
        else:
            feat = _chebyshev_feature_of_degree(tt, degree, D)
            accs = (_dot(feat.to(dtype), dy, accs[0], INPUT_PRECISION),)

    out_ptrs = dw_ptr + ks[:, None] * stride_dw_in + cols[None, :] * stride_dw_out
    out_mask = k_ok[:, None] & col_ok[None, :]
    if degree == 1:
        degree0 = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32) + column_sums[None, :]
        tl.store(out_ptrs, degree0.to(dw_ptr.dtype.element_ty), mask=out_mask)
    if ALL_DEGREES_AT_ONCE:
        for d in tl.static_range(D):
            tl.store(out_ptrs + (d + 1) * stride_dw_deg, accs[d].to(dw_ptr.dtype.element_ty), mask=out_mask)
    else:
        tl.store(out_ptrs + degree * stride_dw_deg, accs[0].to(dw_ptr.dtype.element_ty), mask=out_mask)


# ----------------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------------
def _check_inputs(x: torch.Tensor, coeffs: torch.Tensor, compute_dtype: torch.dtype | None = None) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(coeffs, torch.Tensor):
        raise TypeError(f"x and coeffs must be torch.Tensor, got {type(x).__name__} and {type(coeffs).__name__}")
    if x.dim() != 2:
        raise ValueError(
            f"x must be 2-D (rows, in_features), got shape {tuple(x.shape)}; "
            "flatten leading dimensions first, e.g. x.reshape(-1, x.shape[-1]) (labkit.kan.ops.chebykan does this)"
        )
    if coeffs.dim() != 3:
        raise ValueError(f"coeffs must be 3-D (in_features, out_features, degree + 1), got shape {tuple(coeffs.shape)}")
    if x.shape[1] != coeffs.shape[0]:
        raise ValueError(
            f"x has {x.shape[1]} input features (last dim) but coeffs has {coeffs.shape[0]} (dim 0); "
            "they must match"
        )
    if coeffs.shape[2] < 1 or coeffs.shape[2] - 1 > MAX_DEGREE:
        raise ValueError(f"coeffs.shape[2] is degree + 1 and must be in 1..{MAX_DEGREE + 1}, got {coeffs.shape[2]}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"x has dtype {x.dtype}; supported: float32, float16, bfloat16 (use the reference for float64)")
    if compute_dtype is None and coeffs.dtype != x.dtype:
        raise TypeError(f"x is {x.dtype} but coeffs is {coeffs.dtype}; cast both to one dtype, e.g. coeffs.to(x.dtype), "
                        "or pass compute_dtype")
    if coeffs.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"coeffs has dtype {coeffs.dtype}; supported: float32, float16, bfloat16")
    if compute_dtype is not None and compute_dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"compute_dtype must be None, float32, float16 or bfloat16, got {compute_dtype}")
    if x.device != coeffs.device:
        raise ValueError(f"x is on {x.device} but coeffs is on {coeffs.device}; move both to one device")
    if x.device.type != "cuda" and not (x.device.type == "cpu" and interpret_mode()):
        raise RuntimeError(
            f"chebykan_triton needs CUDA tensors, got {x.device}; on CPU set TRITON_INTERPRET=1 before importing "
            "triton, or use labkit.kan.reference.chebykan_reference"
        )
    m, n_in, n_out = x.shape[0], coeffs.shape[0], coeffs.shape[1]
    if max(m * n_in, m * n_out, coeffs.numel()) > _MAX_INT32_ELEMENTS:
        raise ValueError("tensors of 2**31 elements or more are not supported (int32 indexing); split the rows")


def resolve_input_precision(dtype: torch.dtype, input_precision: str | None = None) -> str:
    """How ``tl.dot`` treats fp32 operands.

    ``None`` follows PyTorch's global switch ``torch.backends.cuda.matmul.allow_tf32``:

    * True: ``"tf32"``, one tensor-core product on 10-bit mantissas (~1e-3 relative error),
      the trade PyTorch makes for its own matmuls under that switch.
    * False (PyTorch's default): ``"tf32x3"``, which splits each fp32 value into a tf32 part and
      a tf32 remainder and sums three tensor-core products. Measured on an H100 at 4096 x 768
      -> 3072, degree 3, it was both more accurate than ``"ieee"`` (max relative error 5e-7
      against 2e-6) and 1.8x faster.

    ``"ieee"`` (exact fp32 products on the FMA units, no tensor cores) stays available when
    asked for. 16-bit operands always use tensor cores, and the value is ignored for them.
    """
    if input_precision is not None and input_precision not in FP32_INPUT_PRECISIONS:
        raise ValueError(f"input_precision must be None or one of {FP32_INPUT_PRECISIONS}, got {input_precision!r}")
    if dtype != torch.float32:
        return "ieee"
    if input_precision is not None:
        return input_precision
    return "tf32" if cublas_allows_tf32() else "tf32x3"


def _weights_by_degree(coeffs: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """coeffs (in, out, D+1) -> w (D+1, in, out), contiguous, in ``dtype``: ``w[d] = coeffs[:, :, d]``.

    Why this layout: in coeffs' own layout the (in-block, out-block) slice of one degree
    is strided by D+1 along ``out``, so a tile load would touch D+1 times more memory
    than it uses. In (D, in, out) each degree is a dense row-major (in, out) matrix: the
    forward's B operand ``w[d][k-block, n-block]`` is a contiguous (BLOCK_K, BLOCK_N) tile,
    and the backward reads ``w[d]^T`` tiles that are contiguous along the reduction axis.
    One copy (cast included) over the weights: small next to the GEMM's rows*in*out*D
    multiply-adds. The forward keeps it for the backward, as autocast keeps its cast weights.
    """
    w = coeffs.new_empty((coeffs.shape[2], coeffs.shape[0], coeffs.shape[1]), dtype=dtype or coeffs.dtype)
    w.copy_(coeffs.permute(2, 0, 1))
    return w


def _device_guard(t: torch.Tensor):
    """Triton launches on the *current* CUDA device: make it the tensors' device (a no-op
    context when it already is, which is the common case and costs nothing)."""
    if t.is_cuda and t.device.index != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def _launch_forward(x, w, y, precision):
    """y = sum_d T_d(tanh x) @ w[d]: the kernel launch alone (shapes as in the kernel)."""
    m, n_in = x.shape
    n_out = y.shape[1]
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n_out, meta["BLOCK_N"]),)  # noqa: E731
    _chebykan_forward_kernel[grid](x, w, y, m, n_in, n_out, tuning_bucket(m), D=w.shape[0] - 1,
                                   INPUT_PRECISION=precision)


def _launch_dx(dy, w, x, dx, precision):
    m, n_in = x.shape
    n_out = dy.shape[1]
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n_in, meta["BLOCK_K"]),)  # noqa: E731
    _chebykan_dx_kernel[grid](dy, w, x, dx, m, n_in, n_out, tuning_bucket(m), D=w.shape[0] - 1,
                              INPUT_PRECISION=precision)


def _launch_tanh(x, t):
    """t = tanh(x) (fp32, same shape as x): one elementwise pass for the dcoeffs kernel."""
    block = 1024
    _tanh_kernel[(triton.cdiv(x.numel(), block),)](x, t, x.numel(), BLOCK=block)


def _launch_dcoeffs(t, dy, dcoeffs, precision):
    """Writes dcoeffs[:, :, 1:] from t = tanh(x); one program per (input tile, output tile[, degree])."""
    m, n_in = t.shape
    n_out, degree = dy.shape[1], dcoeffs.shape[2] - 1

    def grid(meta):
        tiles = triton.cdiv(n_in, meta["BLOCK_K"]) * triton.cdiv(n_out, meta["BLOCK_N"])
        return (tiles if meta["ALL_DEGREES_AT_ONCE"] else tiles * degree,)

    _chebykan_dcoeffs_kernel[grid](
        t, dy, dcoeffs, *dcoeffs.stride(), m, n_in, n_out, tuning_bucket(m), D=degree, INPUT_PRECISION=precision
    )


def _forward(x: torch.Tensor, coeffs: torch.Tensor, dtype: torch.dtype, precision: str):
    """y (M, out) in ``dtype``, and the packed weights (None at degree 0) for the backward."""
    m = x.shape[0]
    n_out, degree = coeffs.shape[1], coeffs.shape[2] - 1
    if degree == 0:  # T_0 = 1: the layer is a bias, sum_i coeffs[i, :, 0]
        bias = coeffs[:, :, 0].sum(dim=0, dtype=torch.float32)
        return bias.to(dtype).expand(m, n_out).contiguous(), None
    w = _weights_by_degree(coeffs, dtype)
    y = torch.empty((m, n_out), device=x.device, dtype=dtype)
    if y.numel() == 0:
        return y, w
    _launch_forward(x, w, y, precision)
    return y, w


def _backward_dx(dy: torch.Tensor, x: torch.Tensor, w: torch.Tensor | None, precision: str) -> torch.Tensor:
    if w is None or x.numel() == 0:  # degree 0 does not depend on x
        return torch.zeros_like(x)
    dx = torch.empty_like(x)
    _launch_dx(dy, w, x, dx, precision)
    return dx


def _backward_dcoeffs(dy: torch.Tensor, x: torch.Tensor, shape: torch.Size, dtype: torch.dtype,
                      precision: str) -> torch.Tensor:
    n_in, n_out, degree = shape[0], shape[1], shape[2] - 1
    dcoeffs = torch.empty(shape, device=x.device, dtype=dtype)
    if degree == 0 or n_in * n_out == 0:
        # T_0 = 1: every input gets the column sums of dy (the kernel does this for D >= 1).
        dcoeffs[:, :, 0] = dy.sum(dim=0, dtype=torch.float32)
        return dcoeffs
    t = torch.empty(x.shape, device=x.device, dtype=torch.float32)  # transient: freed on return
    _launch_tanh(x, t)
    _launch_dcoeffs(t, dy, dcoeffs, precision)
    return dcoeffs


class ChebyKANFunction(torch.autograd.Function):
    """Autograd wrapper: saves ``x`` and the packed weights; the backward regenerates features."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, coeffs: torch.Tensor, dtype: torch.dtype, precision: str) -> torch.Tensor:
        x = x.contiguous()
        with _device_guard(x):
            y, w = _forward(x, coeffs, dtype, precision)
        ctx.save_for_backward(x, w)
        ctx.coeffs_shape, ctx.coeffs_dtype = coeffs.shape, coeffs.dtype  # of the gradient
        ctx.precision = precision
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable  # the kernels have no backward of their own
    def backward(ctx, dy: torch.Tensor):
        x, w = ctx.saved_tensors
        dy = dy.to(ctx.coeffs_dtype if w is None else w.dtype).contiguous()
        dx = dcoeffs = None
        with _device_guard(x):
            if ctx.needs_input_grad[0]:
                dx = _backward_dx(dy, x, w, ctx.precision)
            if ctx.needs_input_grad[1]:
                dcoeffs = _backward_dcoeffs(dy, x, ctx.coeffs_shape, ctx.coeffs_dtype, ctx.precision)
        return dx, dcoeffs, None, None


def chebykan_triton(x: torch.Tensor, coeffs: torch.Tensor, *, input_precision: str | None = None,
                    compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Chebyshev-KAN layer on fused Triton kernels, differentiable in ``x`` and ``coeffs``.

    Args:
        x: (M, in) activations, float32, float16 or bfloat16; CUDA (or CPU under
            ``TRITON_INTERPRET=1``). Any strides.
        coeffs: (in, out, D + 1) Chebyshev coefficients, same dtype and device as ``x``
            (any supported dtype when ``compute_dtype`` is given).
        input_precision: fp32 only: ``None`` (follow ``torch.backends.cuda.matmul.allow_tf32``:
            ``"tf32"`` if set, else ``"tf32x3"``), ``"ieee"``, ``"tf32"`` or ``"tf32x3"``; see
            :func:`resolve_input_precision`.
        compute_dtype: dtype of the tensor-core operands and of ``y`` (default: x's). What
            :func:`labkit.kan.ops.chebykan` passes under autocast: x and coeffs are then read
            in their own dtypes and their gradients come back in them, with no cast passes.

    Returns:
        y: (M, out) in ``compute_dtype``, ``y[m, o] = sum_{i,d} T_d(tanh x[m, i]) coeffs[i, o, d]``.
        Products run in the compute dtype, sums in fp32.
    """
    _check_inputs(x, coeffs, compute_dtype)
    dtype = compute_dtype or x.dtype
    precision = resolve_input_precision(dtype, input_precision)
    return ChebyKANFunction.apply(x, coeffs, dtype, precision)


# ----------------------------------------------------------------------------------------
# GPU self-check and timing, for a person with an H100: python -m labkit.kan.triton_chebyshev
# ----------------------------------------------------------------------------------------
def _max_rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want|: one number per tensor, insensitive to tiny entries."""
    return ((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def _bench_ms(fn, device: torch.device) -> float:
    if device.type == "cuda":
        from triton.testing import do_bench

        return do_bench(fn)
    start = time.perf_counter()  # CPU smoke run: one call, no statistics
    fn()
    return (time.perf_counter() - start) * 1e3


def _step_memory(step, device: torch.device) -> int:
    """Peak bytes allocated while ``step`` runs, above what was allocated before it."""
    if device.type != "cuda":
        step()
        return 0
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def _selfcheck(
    rows: int = 4096,
    in_features: int = 768,
    out_features: int = 3072,
    degree: int = 3,
    fp32_precisions: tuple[str, ...] = ("tf32x3", "tf32", "ieee"),
    device: str = "cuda",
) -> None:
    """Accuracy against the float64 reference, then time and memory of forward+backward.

    Compared with ``nn.Linear(in, out) + GELU`` of the same shape and dtype, and with the
    seed's einsum formulation. Targets at 4096 x 768 -> 3072, degree 3: at most 2x the time
    and 1.5x the peak memory of Linear+GELU. "Memory" is the peak allocated during one
    forward+backward step above what was allocated before it (inputs, parameters, dy).
    The first call of each dtype/precision autotunes (compiles every config): its wall
    time is printed separately. ``device="cpu"`` (under ``TRITON_INTERPRET=1``, tiny sizes)
    only checks that this script runs.
    """
    from labkit.kan.reference import chebykan_reference, chebykan_seed_formulation

    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (interpreter smoke run)"
    print(f"{name}  rows={rows} in={in_features} out={out_features} degree={degree}")
    gen = torch.Generator(device=device).manual_seed(0)
    x64 = torch.randn(rows, in_features, device=device, dtype=torch.float64, generator=gen)
    c64 = torch.randn(in_features, out_features, degree + 1, device=device, dtype=torch.float64, generator=gen)
    c64 /= math.sqrt(in_features * (degree + 1))
    dy64 = torch.randn(rows, out_features, device=device, dtype=torch.float64, generator=gen)

    def train_step(fn, inputs, dy):
        """Forward + backward; the gradients are returned and dropped, as an optimizer would."""
        return lambda: torch.autograd.grad(fn(*inputs), inputs, dy)

    for dtype, precisions in ((torch.float32, fp32_precisions), (torch.bfloat16, (None,))):
        x = x64.to(dtype).requires_grad_()
        coeffs = c64.to(dtype).requires_grad_()
        dy = dy64.to(dtype)
        # Reference in float64 from the *rounded* inputs, so only the kernels' error shows.
        xr, cr = x.detach().double().requires_grad_(), coeffs.detach().double().requires_grad_()
        y_ref = chebykan_reference(xr, cr)
        dx_ref, dc_ref = torch.autograd.grad(y_ref, (xr, cr), dy.double())
        y_ref = y_ref.detach()

        linear = torch.nn.Linear(in_features, out_features, device=device, dtype=dtype)
        gelu = torch.nn.GELU()
        # The parameters are listed as inputs only so that their gradients are computed too.
        step_lin = train_step(lambda a, *params: gelu(linear(a)), (x, *linear.parameters()), dy)
        t_lin = _bench_ms(step_lin, device)
        mem_lin = _step_memory(step_lin, device)
        t_seed = _bench_ms(train_step(chebykan_seed_formulation, (x, coeffs), dy), device)
        print(f"\n{dtype}: Linear+GELU {t_lin:.3f} ms, {mem_lin / 2**20:.0f} MiB;  seed einsum {t_seed:.3f} ms")

        for precision in precisions:
            kan = lambda a, c, p=precision: chebykan_triton(a, c, input_precision=p)  # noqa: E731
            start = time.perf_counter()
            y = kan(x, coeffs)
            dx, dc = torch.autograd.grad(y, (x, coeffs), dy)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            first_call = time.perf_counter() - start
            errors = [_max_rel_error(got, want) for got, want in ((y, y_ref), (dx, dx_ref), (dc, dc_ref))]
            del y, dx, dc
            step = train_step(kan, (x, coeffs), dy)
            t_kan = _bench_ms(step, device)
            mem_kan = _step_memory(step, device)
            with torch.no_grad():
                t_fwd = _bench_ms(lambda: kan(x, coeffs), device)
            mem_ratio = mem_kan / mem_lin if mem_lin else float("nan")
            print(f"  triton [{precision or 'tensor cores'}] (first call, autotuning: {first_call:.1f} s)")
            print(f"    max rel err: y {errors[0]:.1e}, dx {errors[1]:.1e}, dcoeffs {errors[2]:.1e}")
            print(f"    fwd+bwd {t_kan:.3f} ms = {t_kan / t_lin:.2f}x Linear+GELU (target <= 2x); fwd {t_fwd:.3f} ms; "
                  f"memory {mem_kan / 2**20:.0f} MiB = {mem_ratio:.2f}x (target <= 1.5x)")
            for kernel in (_chebykan_forward_kernel, _chebykan_dx_kernel, _chebykan_dcoeffs_kernel):
                print(f"    best config {kernel.fn.__name__}: {_describe_config(kernel)}")



def _describe_config(kernel) -> str:
    config = getattr(kernel, "best_config", None)
    if config is None:  # the interpreter's single config is never "chosen"
        config = kernel.configs[0]
    sizes = ", ".join(f"{name} {value}" for name, value in config.kwargs.items())
    return f"{sizes}, {config.num_warps} warps, {config.num_stages} stages"


def profile_kernels(
    rows: int = 4096,
    in_features: int = 768,
    out_features: int = 3072,
    degree: int = 3,
    dtype: torch.dtype = torch.bfloat16,
    input_precision: str | None = None,
    device: str = "cuda",
) -> dict[str, float]:
    """Time each of the three kernels alone (after autotuning) and print ms, TFLOP/s, config.

    Each kernel does ``2 * rows * in * out * degree`` flops (degrees 1..D; degree 0, a bias
    or a column sum, rides along without GEMM work). The host-side glue of one
    forward+backward step (the (D + 1, in, out) weight copy, made once) is timed
    as well, so that the parts add up to what ``_selfcheck`` measures. Returns the times in ms.
    ``device="cpu"`` (under ``TRITON_INTERPRET=1``, tiny sizes) only checks that this runs.
    """
    device = torch.device(device)
    precision = resolve_input_precision(dtype, input_precision)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(rows, in_features, device=device, dtype=dtype, generator=gen)
    coeffs = torch.randn(in_features, out_features, degree + 1, device=device, dtype=dtype, generator=gen)
    coeffs /= math.sqrt(in_features * (degree + 1))
    dy = torch.randn(rows, out_features, device=device, dtype=dtype, generator=gen)
    _check_inputs(x, coeffs)
    if degree == 0:
        raise ValueError("degree 0 launches no kernel (it is a bias); profile degree >= 1")

    w = _weights_by_degree(coeffs)
    y = torch.empty(rows, out_features, device=device, dtype=dtype)
    dx = torch.empty_like(x)
    dcoeffs = torch.empty_like(coeffs)
    t = torch.empty(x.shape, device=device, dtype=torch.float32)
    launches = {
        "forward": (lambda: _launch_forward(x, w, y, precision), _chebykan_forward_kernel),
        "dx": (lambda: _launch_dx(dy, w, x, dx, precision), _chebykan_dx_kernel),
        "tanh": (lambda: _launch_tanh(x, t), None),
        "dcoeffs": (lambda: _launch_dcoeffs(t, dy, dcoeffs, precision), _chebykan_dcoeffs_kernel),
    }

    def host_glue():
        _weights_by_degree(coeffs)

    flops = 2 * rows * in_features * out_features * degree
    label = f"{dtype}" + (f" [{precision}]" if dtype == torch.float32 else "")
    print(f"\nkernels alone, {label}: rows={rows} in={in_features} out={out_features} degree={degree}")
    times = {}
    with _device_guard(x):
        for name, (launch, kernel) in launches.items():
            launch()  # the first call autotunes
            times[name] = _bench_ms(launch, device)
            if kernel is None:  # the elementwise tanh pass: memory-bound, so GB/s
                moved = x.numel() * (x.element_size() + 4)
                print(f"  {name}: {times[name]:.3f} ms, {moved / (times[name] * 1e-3) / 1e9:.0f} GB/s")
                continue
            tflops = flops / (times[name] * 1e-3) / 1e12
            print(f"  {name}: {times[name]:.3f} ms, {tflops:.0f} TFLOP/s;  {_describe_config(kernel)}")
        times["host glue"] = _bench_ms(host_glue, device)
    print(f"  host glue (the weight copy): {times['host glue']:.3f} ms;  "
          f"sum of all: {sum(times.values()):.3f} ms")
    return times


if __name__ == "__main__":
    _selfcheck(fp32_precisions=("tf32x3", "tf32"))
    profile_kernels(dtype=torch.bfloat16)
    profile_kernels(dtype=torch.float32, input_precision="tf32x3")
    profile_kernels(dtype=torch.float32, input_precision="tf32")
