"""Triton kernels for the log-domain matmul ``C_ij = log sum_k exp(A_ik + B_kj)``, forward and backward.

The algorithm and its error bound are explained in :mod:`labkit.htt.logmatmul`; in short:

* Everything is computed *relative to* the row maxima ``ra_i = max_k A_ik`` and the column
  maxima ``rb_j = max_k B_kj`` (the wrapper computes them with two ``amax``; ``-inf`` where a
  row or column is all ``-inf``). With ``A'_ik = A_ik - ra_i <= 0`` and ``B'_kj = B_kj - rb_j <= 0``
  the kernels return ``L_ij = log sum_k exp(A'_ik + B'_kj)`` and ``C_ij = ra_i + rb_j + L_ij``
  (both fp32; the wrapper casts ``C`` to the inputs' dtype).
* Forward, fast kernel (autotuned): ``exp(L) = exp(A') @ exp(B')``, an ordinary matmul of two
  exponentiated tiles (``tl.dot`` in fp32), so a tile costs ``BLOCK_M x BLOCK_K + BLOCK_K x
  BLOCK_N`` exps per K-block instead of one per multiply-add. It fails only by underflow: if the
  row maximum and the column maximum sit at different ``k`` the sum can be far below 1 and fp32
  loses it.
* Forward, fix-up kernel (a second launch over ``FIX x FIX`` tiles, so the slow path's
  registers do not weigh on the fast kernel): where ``L < log(TINY)``, ``TINY = 2^-80``, the
  tile is recomputed with per-K-block maxima (flash-attention style, a running max per entry),
  and a K-block whose sum still underflows is recomputed exactly, one ``k`` at a time with an
  online log-sum-exp (one exp per term). This is done in absolute coordinates (``C`` directly;
  ``ra + rb + L`` would cancel ``|ra + rb| u`` there) and only those entries are overwritten.
  Where nothing needs it, the kernel only reads ``L`` and writes one flag per tile: whether the
  tile has entries with ``L < log(TINY)`` left, for the backward.
* Backward, fast kernels (autotuned): ``dA_ik = sum_j G_ij P_ijk`` and ``dB_kj = sum_i G_ij
  P_ijk`` with ``P_ijk = exp(A'_ik + B'_kj - L_ij) <= 1``. One program owns an output tile of
  ``dA`` (``BLOCK_M x BLOCK_K``) or ``dB`` (``BLOCK_K x BLOCK_N``) and loops over the other index
  in blocks. With the K-block's own maxima ``al_i`` (of ``A'``) and ``be_j`` (of ``B'``),
  ``P = exp(A' - al) exp(B' - be) exp(al + be - L)``: the third factor is folded into
  ``W = G * exp(al + be - L)``, and the block's contribution is ``exp(A' - al) * (W @
  exp(B' - be)^T)`` (for ``dA``), again a matmul. Entries with ``L < log(TINY)`` are left out, so
  ``al + be - L <= -L <= 80 log 2`` and nothing overflows. ``L`` (not ``C``) is saved: ``A' + B'
  - L`` has no cancellation of large numbers, so ``P`` is accurate to a few ulp even for inputs
  of size 80 (through ``C`` it would carry ``|C| * 2^-24 ~ 1e-5`` of relative error).
* Backward, fix-up kernels: the left-out entries, term by term (``P = exp(A + B - C)`` in
  absolute coordinates with the fp32 ``C``), visiting only the tiles that the forward flagged.

``-inf`` inputs and masked tails load ``-inf`` and contribute 0; no ``-inf - (-inf)`` reaches a
result (every maximum is replaced by 0 where it is ``-inf``, and every ``exp`` of a difference
with ``L`` is masked where ``L = -inf``), so all-``-inf`` rows give ``C = -inf`` and zero
gradients. ``+inf`` and NaN inputs give NaN.

The dot products take ``input_precision`` (a constexpr): ``"ieee"`` (fp32 FMA, the default) or
``"tf32x3"`` (tensor cores, three TF32 products: about 2^-21 relative per product).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from labkit.backend import interpret_mode, patch_triton_interpreter

if interpret_mode():
    patch_triton_interpreter()

TINY = 2.0 ** -80  # forward: entries whose scaled sum falls below this are recomputed...
LOG_TINY = -80 * 0.6931471805599453  # ...and in the backward, entries with L < log(TINY) go term by term
FIX = 32  # tile of the fix-up kernels, and the granularity of the backward's flags
PRECISIONS = ("ieee", "tf32x3")


def _config(m, n, k, w, s):
    return triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)


# With input_precision="ieee" tl.dot is a loop of FMAs in which each thread holds its rows of the
# A tile and its columns of the B tile over the whole reduction width, so that width stays small
# (BLOCK_K in the forward; BLOCK_N for dA and BLOCK_M for dB in the backward). "tf32x3" runs on
# tensor cores. Every configuration below compiles for sm_90 with Triton 3.6 within an H100's
# shared memory; cuobjdump shows no register spills in the forward ones and at most a few words
# in some backward ones (which of them is fastest is the autotuner's business).
_FWD = {"ieee": [(64, 64, 16, 4, 3), (64, 64, 16, 4, 4), (64, 64, 32, 4, 3), (128, 64, 16, 8, 3),
                 (64, 128, 16, 8, 3), (128, 64, 32, 8, 3), (32, 64, 16, 2, 4), (64, 64, 16, 4, 2)],
        "tf32x3": [(64, 64, 32, 4, 3), (64, 64, 32, 4, 4), (128, 64, 32, 8, 3), (64, 128, 32, 8, 3),
                   (128, 64, 64, 8, 3), (64, 64, 16, 4, 4), (128, 64, 16, 8, 3), (32, 64, 32, 4, 4)]}
_BWD = {"ieee": [(64, 64, 16, 8, 3), (128, 32, 16, 8, 3), (32, 128, 16, 8, 3), (64, 32, 32, 4, 3),
                 (32, 64, 32, 4, 3), (128, 32, 32, 8, 3), (32, 32, 16, 2, 3), (64, 32, 16, 4, 3)],
        "tf32x3": [(32, 32, 64, 4, 3), (64, 64, 16, 4, 2), (32, 32, 32, 4, 3), (64, 32, 32, 4, 3),
                   (32, 64, 32, 4, 3), (64, 64, 32, 4, 2)]}


def _configs(table: dict, interpreted: tuple) -> list:
    if interpret_mode():  # one config, with unequal block sizes so the tests see non-square tiles
        return [_config(*interpreted)]
    seen = []
    for shapes in table.values():
        seen += [c for c in shapes if c not in seen]
    return [_config(*c) for c in seen]


def _prune(table: dict):
    """Keep the configurations listed for the call's dot precision."""
    def prune(configs, named_args, **kwargs):
        if interpret_mode():
            return configs
        wanted = set(table[kwargs.get("PRECISION", "ieee")])
        kept = [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps,
                                       c.num_stages) in wanted]
        return kept or configs
    return {"early_config_prune": prune}


@triton.jit
def _guard(x):
    """``(x > -inf, x with -inf replaced by 0)``: a safe shift for ``exp(y - x)``."""
    ok = x > float("-inf")
    return ok, tl.where(ok, x, 0.0)


@triton.jit
def _shift(x):
    """``x`` with ``-inf`` replaced by 0 (the second half of :func:`_guard`)."""
    return tl.where(x > float("-inf"), x, 0.0)


@triton.jit
def _load_rel_a(a_ptr, rm, rk, M, K, s_am, s_ak, ra0):
    """``A'`` tile ``(BLOCK_M, BLOCK_K)`` in fp32: ``A - ra``, ``-inf`` outside the matrix."""
    mask = (rm < M)[:, None] & (rk < K)[None, :]
    a = tl.load(a_ptr + rm[:, None] * s_am + rk[None, :] * s_ak, mask=mask, other=float("-inf"))
    return a.to(tl.float32) - ra0[:, None]


@triton.jit
def _load_rel_b(b_ptr, rk, rn, K, N, s_bk, s_bn, rb0):
    """``B'`` tile ``(BLOCK_K, BLOCK_N)`` in fp32: ``B - rb``, ``-inf`` outside the matrix."""
    mask = (rk < K)[:, None] & (rn < N)[None, :]
    b = tl.load(b_ptr + rk[:, None] * s_bk + rn[None, :] * s_bn, mask=mask, other=float("-inf"))
    return b.to(tl.float32) - rb0[None, :]


@triton.jit
def _exact_block(a_ptr, b_ptr, rm, rn, k0, M, N, K, s_am, s_ak, s_bk, s_bn, ra0, rb0,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """``(m, s)`` with ``m + log s = log sum_{k in block} exp(A'_ik + B'_kj)``, term by term.

    Online log-sum-exp with one exp per term: a new term ``x`` either raises the maximum
    (``s <- s exp(m - x) + 1``) or adds ``exp(x - m)``; both are ``exp(-|x - m|)``. ``s`` is in
    ``[1, BLOCK_K]`` where the block has a finite term, else ``m = -inf, s = 0``.
    """
    m = tl.full((BLOCK_M, BLOCK_N), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for kk in range(BLOCK_K):
        k = k0 + kk
        a = tl.load(a_ptr + rm * s_am + k * s_ak, mask=(rm < M) & (k < K), other=float("-inf"))
        b = tl.load(b_ptr + k * s_bk + rn * s_bn, mask=(rn < N) & (k < K), other=float("-inf"))
        x = (a.to(tl.float32) - ra0)[:, None] + (b.to(tl.float32) - rb0)[None, :]
        d = tl.where(x > float("-inf"), x - m, float("-inf"))  # never -inf - (-inf)
        e = tl.exp(-tl.abs(d))
        up = d > 0
        s = tl.where(up, s * e + 1.0, s + e)
        m = tl.where(up, x, m)
    return m, s


@triton.jit
def _slow_tile(a_ptr, b_ptr, rm, rn, M, N, K, s_am, s_ak, s_bk, s_bn, ra0, rb0,
               TINY: tl.constexpr, PRECISION: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """``log sum_k exp(A_ik - ra0_i + B_kj - rb0_j)`` of a tile whose global factorisation underflowed.

    Each K-block is a matmul of ``exp(A' - al)`` and ``exp(B' - be)`` with the block's own row
    and column maxima, at the per-entry scale ``al_i + be_j``; the blocks are merged with a
    running maximum per entry. A block whose sum still underflows is redone by
    :func:`_exact_block`.
    """
    m = tl.full((BLOCK_M, BLOCK_N), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        a = _load_rel_a(a_ptr, rm, rk, M, K, s_am, s_ak, ra0)
        b = _load_rel_b(b_ptr, rk, rn, K, N, s_bk, s_bn, rb0)
        al_ok, al0 = _guard(tl.max(a, axis=1))
        be_ok, be0 = _guard(tl.max(b, axis=0))
        sb = tl.dot(tl.exp(a - al0[:, None]), tl.exp(b - be0[None, :]), input_precision=PRECISION)
        sc = al0[:, None] + be0[None, :]
        bad = (sb < TINY) & al_ok[:, None] & be_ok[None, :]
        if tl.max(bad.to(tl.int32)) > 0:
            sc, sb = _exact_block(a_ptr, b_ptr, rm, rn, k0, M, N, K, s_am, s_ak, s_bk, s_bn, ra0, rb0,
                                  BLOCK_M, BLOCK_N, BLOCK_K)
        blk = tl.where(sb > 0, sc, float("-inf"))
        m_new = tl.maximum(m, blk)
        m0 = _shift(m_new)
        s = s * tl.exp(m - m0) + sb * tl.exp(blk - m0)
        m = m_new
    return m + tl.log(s)


@triton.autotune(configs=_configs(_FWD, (16, 32, 16, 4, 1)), key=["M", "N", "K", "PRECISION"],
                 prune_configs_by=_prune(_FWD))
@triton.jit
def _log_matmul_fwd_kernel(
    a_ptr, b_ptr, ra_ptr, rb_ptr, c_ptr, l_ptr, M, N, K,
    s_a0, s_am, s_ak, s_b0, s_bk, s_bn,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Fast path of a tile: ``L = log(exp(A') @ exp(B'))`` and ``C = ra + rb + L``, both fp32."""
    pid_b = tl.program_id(2).to(tl.int64)
    rm = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rn = (tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    a_ptr += pid_b * s_a0
    b_ptr += pid_b * s_b0
    ra0 = _shift(tl.load(ra_ptr + pid_b * M + rm, mask=rm < M, other=float("-inf")))
    rb0 = _shift(tl.load(rb_ptr + pid_b * N + rn, mask=rn < N, other=float("-inf")))
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        ea = tl.exp(_load_rel_a(a_ptr, rm, rk, M, K, s_am, s_ak, ra0))
        eb = tl.exp(_load_rel_b(b_ptr, rk, rn, K, N, s_bk, s_bn, rb0))
        acc = tl.dot(ea, eb, acc, input_precision=PRECISION)
    lse = tl.log(acc)
    mask = (rm < M)[:, None] & (rn < N)[None, :]
    c = ra0[:, None] + rb0[None, :] + lse
    tl.store(c_ptr + pid_b * M * N + rm[:, None] * N + rn[None, :], c, mask=mask)
    tl.store(l_ptr + pid_b * M * N + rm[:, None] * N + rn[None, :], lse, mask=mask)


@triton.jit
def _log_matmul_fix_kernel(
    a_ptr, b_ptr, ra_ptr, rb_ptr, c_ptr, l_ptr, flag_ptr, M, N, K,
    s_a0, s_am, s_ak, s_b0, s_bk, s_bn,
    TINY: tl.constexpr, LOG_TINY: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Slow path of the entries whose fast path underflowed, and the backward's flags.

    A separate launch (cheap where nothing needs it: it reads ``L`` once), so that the slow
    path's registers do not weigh on the fast kernel. A tile with such entries is recomputed in
    absolute coordinates (``C`` directly: ``ra + rb + L`` would cancel ``|ra + rb| u`` where
    ``C << ra + rb``), and those entries are overwritten. Then the tile is flagged for the
    backward if any entry still has ``L < log(TINY)``.
    """
    pid_b = tl.program_id(2).to(tl.int64)
    rm = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rn = (tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    a_ptr += pid_b * s_a0
    b_ptr += pid_b * s_b0
    ra_ok, ra0 = _guard(tl.load(ra_ptr + pid_b * M + rm, mask=rm < M, other=float("-inf")))
    rb_ok, rb0 = _guard(tl.load(rb_ptr + pid_b * N + rn, mask=rn < N, other=float("-inf")))
    mask = (rm < M)[:, None] & (rn < N)[None, :]
    offs = pid_b * M * N + rm[:, None] * N + rn[None, :]
    lse = tl.load(l_ptr + offs, mask=mask, other=0.0)
    need = (lse < LOG_TINY) & ra_ok[:, None] & rb_ok[None, :]
    if tl.max(need.to(tl.int32)) > 0:
        c = _slow_tile(a_ptr, b_ptr, rm, rn, M, N, K, s_am, s_ak, s_bk, s_bn, tl.zeros_like(ra0),
                       tl.zeros_like(rb0), TINY, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
        lse = tl.where(need, c - ra0[:, None] - rb0[None, :], lse)
        tl.store(c_ptr + offs, c, mask=mask & need)
        tl.store(l_ptr + offs, lse, mask=mask & need)
    exact = (lse > float("-inf")) & (lse < LOG_TINY) & ra_ok[:, None] & rb_ok[None, :]
    flag = tl.max(exact.to(tl.int32))
    tl.store(flag_ptr + (pid_b * tl.num_programs(0) + tl.program_id(0)) * tl.num_programs(1) + tl.program_id(1),
             flag.to(tl.int8))


@triton.jit
def _weights(al_ok, al0, be_ok, be0, lt, g, LOG_TINY: tl.constexpr):
    """``W = G exp(al + be - L)`` on the entries of the fast backward, 0 elsewhere.

    Left out: entries with ``L = -inf`` (``P = 0``), rows or columns of the block that are all
    ``-inf`` (their ``exp(A' - al)`` or ``exp(B' - be)`` is 0, and ``exp(al + be - L)`` might
    overflow), and the entries with ``L < log(TINY)`` (the fix-up kernels do those term by
    term). Elsewhere ``al + be - L <= -L <= 80 log 2``, so nothing overflows.
    """
    ok = al_ok[:, None] & be_ok[None, :] & (lt > float("-inf")) & (lt >= LOG_TINY)
    return g * tl.exp(tl.where(ok, al0[:, None] + be0[None, :] - lt, float("-inf")))


@triton.autotune(configs=_configs(_BWD, (32, 16, 16, 4, 1)), key=["M", "N", "K", "PRECISION"],
                 prune_configs_by=_prune(_BWD))
@triton.jit
def _log_matmul_bwd_a_kernel(
    a_ptr, b_ptr, ra_ptr, rb_ptr, l_ptr, g_ptr, da_ptr, M, N, K,
    s_a0, s_am, s_ak, s_b0, s_bk, s_bn, s_g0, s_gm, s_gn,
    LOG_TINY: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """``dA`` tile ``(BLOCK_M, BLOCK_K)``: ``sum_j G_ij P_ijk`` over blocks of ``j`` (fast entries)."""
    pid_b = tl.program_id(2).to(tl.int64)
    rm = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rk = (tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)).to(tl.int64)
    a_ptr += pid_b * s_a0
    b_ptr += pid_b * s_b0
    g_ptr += pid_b * s_g0
    l_ptr += pid_b * M * N
    rb_ptr += pid_b * N
    ra0 = _shift(tl.load(ra_ptr + pid_b * M + rm, mask=rm < M, other=float("-inf")))
    a = _load_rel_a(a_ptr, rm, rk, M, K, s_am, s_ak, ra0)
    al_ok, al0 = _guard(tl.max(a, axis=1))
    ea = tl.exp(a - al0[:, None])
    acc = tl.zeros((BLOCK_M, BLOCK_K), tl.float32)
    for n0 in range(0, N, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        rb0 = _shift(tl.load(rb_ptr + rn, mask=rn < N, other=float("-inf")))
        b = _load_rel_b(b_ptr, rk, rn, K, N, s_bk, s_bn, rb0)
        be_ok, be0 = _guard(tl.max(b, axis=0))
        mask = (rm < M)[:, None] & (rn < N)[None, :]
        lt = tl.load(l_ptr + rm[:, None] * N + rn[None, :], mask=mask, other=float("-inf"))
        g = tl.load(g_ptr + rm[:, None] * s_gm + rn[None, :] * s_gn, mask=mask, other=0.0).to(tl.float32)
        w = _weights(al_ok, al0, be_ok, be0, lt, g, LOG_TINY)
        acc += ea * tl.dot(w, tl.trans(tl.exp(b - be0[None, :])), input_precision=PRECISION)
    mask = (rm < M)[:, None] & (rk < K)[None, :]
    tl.store(da_ptr + pid_b * M * K + rm[:, None] * K + rk[None, :], acc, mask=mask)


@triton.autotune(configs=_configs(_BWD, (32, 16, 16, 4, 1)), key=["M", "N", "K", "PRECISION"],
                 prune_configs_by=_prune(_BWD))
@triton.jit
def _log_matmul_bwd_b_kernel(
    a_ptr, b_ptr, ra_ptr, rb_ptr, l_ptr, g_ptr, db_ptr, M, N, K,
    s_a0, s_am, s_ak, s_b0, s_bk, s_bn, s_g0, s_gm, s_gn,
    LOG_TINY: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """``dB`` tile ``(BLOCK_K, BLOCK_N)``: ``sum_i G_ij P_ijk`` over blocks of ``i`` (fast entries)."""
    pid_b = tl.program_id(2).to(tl.int64)
    rk = (tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)).to(tl.int64)
    rn = (tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    a_ptr += pid_b * s_a0
    b_ptr += pid_b * s_b0
    g_ptr += pid_b * s_g0
    l_ptr += pid_b * M * N
    ra_ptr += pid_b * M
    rb0 = _shift(tl.load(rb_ptr + pid_b * N + rn, mask=rn < N, other=float("-inf")))
    b = _load_rel_b(b_ptr, rk, rn, K, N, s_bk, s_bn, rb0)
    be_ok, be0 = _guard(tl.max(b, axis=0))
    eb = tl.exp(b - be0[None, :])
    acc = tl.zeros((BLOCK_K, BLOCK_N), tl.float32)
    for m0 in range(0, M, BLOCK_M):
        rm = m0 + tl.arange(0, BLOCK_M)
        ra0 = _shift(tl.load(ra_ptr + rm, mask=rm < M, other=float("-inf")))
        a = _load_rel_a(a_ptr, rm, rk, M, K, s_am, s_ak, ra0)
        al_ok, al0 = _guard(tl.max(a, axis=1))
        mask = (rm < M)[:, None] & (rn < N)[None, :]
        lt = tl.load(l_ptr + rm[:, None] * N + rn[None, :], mask=mask, other=float("-inf"))
        g = tl.load(g_ptr + rm[:, None] * s_gm + rn[None, :] * s_gn, mask=mask, other=0.0).to(tl.float32)
        w = _weights(al_ok, al0, be_ok, be0, lt, g, LOG_TINY)
        acc += eb * tl.dot(tl.trans(tl.exp(a - al0[:, None])), w, input_precision=PRECISION)
    mask = (rk < K)[:, None] & (rn < N)[None, :]
    tl.store(db_ptr + pid_b * K * N + rk[:, None] * N + rn[None, :], acc, mask=mask)


@triton.jit
def _log_matmul_bwd_fix_a_kernel(
    a_ptr, b_ptr, c_ptr, l_ptr, g_ptr, flag_ptr, da_ptr, M, N, K,
    s_a0, s_am, s_ak, s_b0, s_bk, s_bn, s_g0, s_gm, s_gn,
    LOG_TINY: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Adds to a ``dA`` tile the terms of the entries with ``L < log(TINY)``, one column at a time.

    ``BLOCK_M x BLOCK_N`` is the flags' tile: only flagged tiles are visited. Absolute
    coordinates, ``P = exp(A_ik + B_kj - C_ij)`` with the fp32 ``C``: for these entries
    ``C << ra + rb`` and the shifted form would carry ``|ra + rb| u`` of error.
    """
    pid_b = tl.program_id(2).to(tl.int64)
    rm = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rk = (tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)).to(tl.int64)
    a_ptr += pid_b * s_a0
    b_ptr += pid_b * s_b0
    g_ptr += pid_b * s_g0
    c_ptr += pid_b * M * N
    l_ptr += pid_b * M * N
    tiles_n = tl.cdiv(N, BLOCK_N)
    flag_ptr += (pid_b * tl.cdiv(M, BLOCK_M) + tl.program_id(0)) * tiles_n
    a = tl.load(a_ptr + rm[:, None] * s_am + rk[None, :] * s_ak, mask=(rm < M)[:, None] & (rk < K)[None, :],
                other=float("-inf")).to(tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_K), tl.float32)
    hits = tl.program_id(0) * 0
    for tn in range(0, tiles_n):
        flag = tl.load(flag_ptr + tn).to(tl.int32)
        if flag != 0:
            for jj in range(BLOCK_N):
                j = tn * BLOCK_N + jj
                rows = (rm < M) & (j < N)
                bj = tl.load(b_ptr + rk * s_bk + j * s_bn, mask=(rk < K) & (j < N), other=float("-inf"))
                lj = tl.load(l_ptr + rm * N + j, mask=rows, other=float("-inf"))
                cj = tl.load(c_ptr + rm * N + j, mask=rows, other=0.0)
                gj = tl.load(g_ptr + rm * s_gm + j * s_gn, mask=rows, other=0.0).to(tl.float32)
                sel = (lj > float("-inf")) & (lj < LOG_TINY)
                p = tl.exp(a + bj.to(tl.float32)[None, :] - cj[:, None])
                acc += tl.where(sel[:, None], gj[:, None] * p, 0.0)
        hits += flag
    if hits > 0:
        mask = (rm < M)[:, None] & (rk < K)[None, :]
        ptrs = da_ptr + pid_b * M * K + rm[:, None] * K + rk[None, :]
        tl.store(ptrs, tl.load(ptrs, mask=mask, other=0.0) + acc, mask=mask)


@triton.jit
def _log_matmul_bwd_fix_b_kernel(
    a_ptr, b_ptr, c_ptr, l_ptr, g_ptr, flag_ptr, db_ptr, M, N, K,
    s_a0, s_am, s_ak, s_b0, s_bk, s_bn, s_g0, s_gm, s_gn,
    LOG_TINY: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Adds to a ``dB`` tile the terms of the entries with ``L < log(TINY)``, one row at a time."""
    pid_b = tl.program_id(2).to(tl.int64)
    rk = (tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)).to(tl.int64)
    rn = (tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    a_ptr += pid_b * s_a0
    b_ptr += pid_b * s_b0
    g_ptr += pid_b * s_g0
    c_ptr += pid_b * M * N
    l_ptr += pid_b * M * N
    tiles_n = tl.cdiv(N, BLOCK_N)
    flag_ptr += pid_b * tl.cdiv(M, BLOCK_M) * tiles_n + tl.program_id(1)
    b = tl.load(b_ptr + rk[:, None] * s_bk + rn[None, :] * s_bn, mask=(rk < K)[:, None] & (rn < N)[None, :],
                other=float("-inf")).to(tl.float32)
    acc = tl.zeros((BLOCK_K, BLOCK_N), tl.float32)
    hits = tl.program_id(0) * 0
    for tm in range(0, tl.cdiv(M, BLOCK_M)):
        flag = tl.load(flag_ptr + tm * tiles_n).to(tl.int32)
        if flag != 0:
            for ii in range(BLOCK_M):
                i = tm * BLOCK_M + ii
                cols = (rn < N) & (i < M)
                ai = tl.load(a_ptr + i * s_am + rk * s_ak, mask=(rk < K) & (i < M), other=float("-inf"))
                li = tl.load(l_ptr + i * N + rn, mask=cols, other=float("-inf"))
                ci = tl.load(c_ptr + i * N + rn, mask=cols, other=0.0)
                gi = tl.load(g_ptr + i * s_gm + rn * s_gn, mask=cols, other=0.0).to(tl.float32)
                sel = (li > float("-inf")) & (li < LOG_TINY)
                p = tl.exp(ai.to(tl.float32)[:, None] + b - ci[None, :])
                acc += tl.where(sel[None, :], gi[None, :] * p, 0.0)
        hits += flag
    if hits > 0:
        mask = (rk < K)[:, None] & (rn < N)[None, :]
        ptrs = db_ptr + pid_b * K * N + rk[:, None] * N + rn[None, :]
        tl.store(ptrs, tl.load(ptrs, mask=mask, other=0.0) + acc, mask=mask)


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def log_matmul_fwd(a: torch.Tensor, b: torch.Tensor, ra: torch.Tensor, rb: torch.Tensor, precision: str = "ieee"
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``C`` and ``L = C - ra - rb`` (fp32, contiguous ``(batch, M, N)``) and the backward's flags.

    ``a`` is ``(batch, M, K)``, ``b`` is ``(batch, K, N)`` (any strides, batch stride 0 allowed);
    ``ra`` ``(batch, M)`` and ``rb`` ``(batch, N)`` are contiguous fp32 row and column maxima.
    ``flags[t, p, q]`` (int8) marks the ``FIX x FIX`` tiles with entries that the backward does
    term by term. Two launches: the fast kernel, then the fix-up of the entries that underflowed.
    """
    _check_precision(precision)
    batch, m, k = a.shape
    n = b.shape[2]
    c = torch.empty(batch, m, n, device=a.device, dtype=torch.float32)
    lse = torch.empty_like(c)
    flags = torch.empty(batch, triton.cdiv(m, FIX), triton.cdiv(n, FIX), device=a.device, dtype=torch.int8)
    if c.numel():
        args = (a, b, ra, rb, c, lse)
        sizes = (m, n, k, *a.stride(), *b.stride())
        grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]), batch)  # noqa: E731
        _log_matmul_fwd_kernel[grid](*args, *sizes, PRECISION=precision)
        _log_matmul_fix_kernel[(flags.shape[1], flags.shape[2], batch)](
            *args, flags, *sizes, TINY=TINY, LOG_TINY=LOG_TINY, PRECISION=precision,
            BLOCK_M=FIX, BLOCK_N=FIX, BLOCK_K=32, num_warps=4)
    return c, lse, flags


def log_matmul_bwd(a: torch.Tensor, b: torch.Tensor, ra: torch.Tensor, rb: torch.Tensor, c: torch.Tensor,
                   lse: torch.Tensor, flags: torch.Tensor, grad: torch.Tensor, need_a: bool = True,
                   need_b: bool = True, precision: str = "ieee") -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """fp32 gradients ``(dA, dB)``, contiguous ``(batch, M, K)`` and ``(batch, K, N)``.

    ``c``, ``lse`` and ``flags`` are :func:`log_matmul_fwd`'s outputs. Per gradient two launches:
    the fast kernel, then the exact terms of the flagged tiles.
    """
    _check_precision(precision)
    batch, m, k = a.shape
    n = b.shape[2]
    sizes = (m, n, k, *a.stride(), *b.stride(), *grad.stride())
    fix = dict(LOG_TINY=LOG_TINY, BLOCK_M=FIX, BLOCK_N=FIX, BLOCK_K=32, num_warps=4)
    grad_a = grad_b = None
    if need_a:
        grad_a = torch.empty(batch, m, k, device=a.device, dtype=torch.float32)
        if grad_a.numel():
            grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(k, meta["BLOCK_K"]), batch)  # noqa: E731
            _log_matmul_bwd_a_kernel[grid](a, b, ra, rb, lse, grad, grad_a, *sizes, LOG_TINY=LOG_TINY,
                                           PRECISION=precision)
            _log_matmul_bwd_fix_a_kernel[(triton.cdiv(m, FIX), triton.cdiv(k, 32), batch)](
                a, b, c, lse, grad, flags, grad_a, *sizes, **fix)
    if need_b:
        grad_b = torch.empty(batch, k, n, device=a.device, dtype=torch.float32)
        if grad_b.numel():
            grid = lambda meta: (triton.cdiv(k, meta["BLOCK_K"]), triton.cdiv(n, meta["BLOCK_N"]), batch)  # noqa: E731
            _log_matmul_bwd_b_kernel[grid](a, b, ra, rb, lse, grad, grad_b, *sizes, LOG_TINY=LOG_TINY,
                                           PRECISION=precision)
            _log_matmul_bwd_fix_b_kernel[(triton.cdiv(k, 32), triton.cdiv(n, FIX), batch)](
                a, b, c, lse, grad, flags, grad_b, *sizes, **fix)
    return grad_a, grad_b
