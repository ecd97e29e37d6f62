"""Log-domain matmul ``C_ij = log sum_k exp(A_ik + B_kj)`` and the forward algorithm of an HMM.

This is the seed's "LNS matmul" done as a numerical method: ``A`` and ``B`` hold logarithms of
non-negative matrices and ``C`` is the logarithm of their product, computed without leaving
the log domain (so nothing overflows or underflows however large or small the entries are).
Three implementations, one contract (same values, same gradients):

* ``log_matmul(A, B)``: the fast one (Triton kernels on CUDA or under ``TRITON_INTERPRET=1``,
  :mod:`labkit.htt.triton_logmatmul`; the same algorithm in PyTorch otherwise);
* :func:`log_matmul_reference`: the textbook ``torch.logsumexp(A[:, :, None] + B[None], dim=1)``,
  in chunks of rows so the ``M x K x N`` intermediate fits (the baseline of the benchmark);
* :func:`log_matmul_maxonly`: the seed's "max-log" approximation ``max_k (A_ik + B_kj)``
  (tropical matmul), which is off by up to ``log K``; kept for the chapter's comparison.

**Algorithm.** Let ``ra_i = max_k A_ik`` and ``rb_j = max_k B_kj`` and work with
``A' = A - ra <= 0`` and ``B' = B - rb <= 0``. Then

    C_ij = ra_i + rb_j + L_ij,    exp(L_ij) = s_ij = sum_k exp(A'_ik) exp(B'_kj),

and ``s = exp(A') @ exp(B')`` is an ordinary fp32 matmul: ``M K + K N`` exps in all instead of
one exp per multiply-add (``M N K``), which is what makes the kernel run at matmul speed. This
is "max plus an exact correction": ``ra_i + rb_j`` is an upper bound of the max-log value
``max_k (A_ik + B_kj)``, and ``log s_ij`` corrects it exactly. The seed applied the Jacobian
logarithm ``log(e^x + e^y) = max(x, y) + log1p(exp(-|x - y|))`` pairwise, term after term: also
exact, but an exp and a log1p per multiply-add, and NaN on masked ``-inf`` lanes.

The factorisation fails only by underflow: when the row's maximum and the column's maximum
sit at different ``k`` (the terms that matter are all far below ``exp(ra_i + rb_j)``), ``s_ij``
is tiny and fp32 drops it. Where ``s_ij < TINY = 2^-80`` the tile is recomputed with the
maxima of each block of ``k`` (a running maximum per entry, as in flash attention), and a
block that still underflows is recomputed term by term (an online log-sum-exp: one exp per
term). These slow paths run only where needed. Inputs uniform in +-80 at ``K = 1024`` take them
with probability about ``e^-63`` per entry; small ``K``, structured inputs (an HMM with sparse
transitions) and adversarial ones (``A_ik + B_kj`` small exactly where one of them is large)
send some or all tiles there, at up to one exp per term. The PyTorch implementation does the
fast path with a library matmul (plain fp32, no TF32) and the flagged entries exactly, each by a
``logsumexp`` over its row of ``A`` and column of ``B`` (it costs one host sync).

**Error bound (forward).** Where the fast path is kept, ``2^-80 <= s_ij <= K``. Every term
above ``2^-126`` is formed with relative error at most about ``(|A'_ik| + |B'_kj| + 4) u``
(``u = 2^-24``: the rounding of the shifted arguments and of the exp); the terms below
``2^-126`` (possibly flushed to 0) change ``s`` by at most ``3 K 2^-126``, that is ``3 K 2^-46``
relative (``< 1e-8`` for ``K <= 2^20``); and the fp32 accumulation of ``K`` non-negative terms
adds at most ``K u`` relative (about ``sqrt(K) u`` in practice). Hence

    |C - C_exact| <~ |C| u + (Lambda + 4) u + K u + 3 K 2^-46,

with ``Lambda`` the largest ``|A'_ik| + |B'_kj|`` among the terms within ``e^-20`` of the sum.
For inputs uniform in +-80 at ``K = 1024`` (``|C| ~ 155``, ``Lambda ~ 20``) the typical error is
``|C| u ~ 1e-5`` absolute, ``~1e-7`` relative, and the worst case ``~1e-4`` absolute, ``< 1e-6``
relative: the issue's ``1e-5`` relative holds with a wide margin. fp32 ``torch.logsumexp`` has
the same ``|C| u`` and ``Lambda u`` terms. The slow paths compute the tile in absolute
coordinates (``C`` directly, not ``ra + rb + L``, which would cancel ``|ra + rb| u`` when
``C << ra + rb``), the block path with the same bound and the term-by-term path to ``K u``.

**Backward.** With ``G = dLoss/dC`` and ``P_ijk = exp(A'_ik + B'_kj - L_ij)`` (the softmax
weight of term ``k`` in entry ``ij``), ``dA_ik = sum_j G_ij P_ijk`` and ``dB_kj = sum_i G_ij
P_ijk``. Both are matmuls after the same factorisation: for a block of ``k`` with maxima ``al``
of ``A'`` and ``be`` of ``B'``, ``P = exp(A' - al) exp(B' - be) exp(al + be - L)`` and ``dA =
exp(A' - al) * ((G * exp(al + be - L)) @ exp(B' - be)^T)``. ``al + be - L <= -L <= 80 log 2``
wherever the forward's fast path held, so nothing overflows; blocks where it exceeds 56 are done
term by term. We save ``L`` rather than ``C``: then ``A' + B' - L`` involves no cancellation of
numbers of size ``|C|``, and each ``P`` is accurate to a few ``u`` (through the fp32 ``C`` it
would carry ``|C| u ~ 1e-5`` relative error for inputs of size 80; the entries that took the
forward's slow path have ``L = C - ra - rb`` and do carry it). The gradient error is
``O(u) sum_j |G_ij| P_ijk`` plus at most ``2^-45 sum_j |G_ij|`` from underflow: accurate relative
to the gradient's natural scale, for ``G`` of either sign. Entries with ``C = -inf`` have
``P = 0`` (zero gradient, never NaN).

**HMM.** :func:`hmm_forward_log` runs the forward algorithm in log space with this matmul
(``log alpha_t = log_matmul(log alpha_{t-1}, log A) + log b_t``); :func:`hmm_forward_scaled` is
the classical scaled-probability version (Rabiner's scaling), the float64 check.
"""
from __future__ import annotations

import contextlib

import torch
from torch.autograd.function import once_differentiable

from labkit.backend import resolve_backend

TINY = 2.0 ** -80  # forward: entries whose scaled sum is below this take the slow path
LOG_TINY = -80 * 0.6931471805599453  # backward: entries with L below this are done term by term
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what the Triton kernels accept
PRECISIONS = ("ieee", "tf32x3")
_CHUNK_ELEMENTS = 2 ** 25  # the reference's chunk: rows * K * N at most this many elements
# Above this many multiply-adds (batch * M * K * N) the Triton path's backward is done by the
# PyTorch formulation (two exp passes and library matmuls) when no tile needs the exact slow
# path. Measured on an H100 (fp32, ieee; bench/results/nvidia-h100-80gb-hbm3/logmatmul.json):
# the Triton backward took 0.8 ms against 1.4 ms at 1024^3 (2^30) but 4.8 ms against 2.1 ms at
# 2048^3 (2^33) and 33 ms against 7 ms at 4096^3: its kernels exponentiate every operand tile
# again for each output tile, which at large sizes costs more than the fusion saves.
LIBRARY_BACKWARD_MIN_MACS = 2 ** 31


# --------------------------------------------------------------------------- validation
def _check_operands(A, B, name: str = "log_matmul") -> None:
    for arg, t, shape in (("A", A, "(M, K) or (batch, M, K)"), ("B", B, "(K, N) or (batch, K, N)")):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() not in (2, 3):
            fix = "add a leading dim with unsqueeze(0)" if t.dim() < 2 else "flatten the batch dims into one"
            raise ValueError(f"{name}: {arg} must be {shape}, got shape {tuple(t.shape)}; {fix}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name}: {arg} has dtype {t.dtype}; log-values must be float32, float16, bfloat16 "
                            f"or float64: convert with {arg}.float()")
    if A.dtype != B.dtype:
        raise TypeError(f"{name}: A is {A.dtype} and B is {B.dtype}; use one dtype, e.g. B.to(A.dtype)")
    if A.device != B.device:
        raise ValueError(f"{name}: A is on {A.device} and B on {B.device}; move both to one device, "
                         "e.g. B.to(A.device)")
    if A.shape[-1] != B.shape[-2]:
        raise ValueError(f"{name}: inner dimensions differ: A is {tuple(A.shape)} (K = {A.shape[-1]}) and B is "
                         f"{tuple(B.shape)} (K = {B.shape[-2]}); A's last dim must equal B's second-to-last")
    if A.dim() == 3 and B.dim() == 3 and A.shape[0] != B.shape[0] and 1 not in (A.shape[0], B.shape[0]):
        raise ValueError(f"{name}: batch sizes differ: A has {A.shape[0]} and B has {B.shape[0]}; they must be "
                         "equal, or one of them 1 (or the operand 2-D) to broadcast")


def _as_batched(A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """3-D views with a common batch size (broadcast by ``expand``; autograd sums the gradient)."""
    squeeze = A.dim() == 2 and B.dim() == 2
    a = A if A.dim() == 3 else A.unsqueeze(0)
    b = B if B.dim() == 3 else B.unsqueeze(0)
    batch = max(a.shape[0], b.shape[0])
    return a.expand(batch, -1, -1), b.expand(batch, -1, -1), squeeze


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------- references
def _chunk_rows(m: int, k: int, n: int, chunk: int | None) -> int:
    if chunk is None:
        chunk = max(1, _CHUNK_ELEMENTS // max(1, k * n))
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of rows, got {chunk}")
    return min(chunk, max(m, 1))


def _chunked(A: torch.Tensor, B: torch.Tensor, chunk: int | None, reduce) -> torch.Tensor:
    m, k, n = A.shape[-2], A.shape[-1], B.shape[-1]
    rows = _chunk_rows(m, k, n, chunk)
    parts = [reduce(A[..., i:i + rows, :, None] + B[..., None, :, :]) for i in range(0, m, rows)]
    if not parts:
        return A.new_empty(torch.broadcast_shapes(A.shape[:-2], B.shape[:-2]) + (0, n))
    return torch.cat(parts, dim=-2)


def log_matmul_reference(A: torch.Tensor, B: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """``torch.logsumexp(A[..., :, :, None] + B[..., None, :, :], dim=-2)``, ``chunk`` rows at a time.

    The textbook formulation: it materialises ``chunk x K x N`` sums (by default about 2^25
    elements per chunk) and takes one exp per term. Plain autograd, any float dtype.
    """
    _check_operands(A, B, "log_matmul_reference")
    return _chunked(A, B, chunk, lambda x: torch.logsumexp(x, dim=-2))


def log_matmul_maxonly(A: torch.Tensor, B: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """The "max-log" approximation ``max_k (A_ik + B_kj)``: a lower bound, low by up to ``log K``.

    Exact when one term dominates each sum; ``log K`` too small when ``K`` terms are equal.
    """
    _check_operands(A, B, "log_matmul_maxonly")
    return _chunked(A, B, chunk, lambda x: torch.amax(x, dim=-2))


# --------------------------------------------------------------------------- PyTorch implementation
@contextlib.contextmanager
def _fp32_matmul(device: torch.device):
    """Plain fp32 matmuls on CUDA for the duration (TF32 would cost ~1e-3 relative).

    Through ``torch.set_float32_matmul_precision``, which keeps PyTorch's legacy and new TF32
    flags consistent (setting ``torch.backends.cuda.matmul.fp32_precision`` alone while
    ``allow_tf32`` was set makes cuBLAS matmuls raise).
    """
    if device.type != "cuda":
        yield
        return
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def _guard(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ok = x > float("-inf")
    return ok, torch.where(ok, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _relative(a, b, ra, rb):
    """``A' = A - ra`` and ``B' = B - rb`` (with ``-inf`` maxima replaced by 0), and the masks."""
    ra_ok, ra0 = _guard(ra)
    rb_ok, rb0 = _guard(rb)
    return a - ra0[..., :, None], b - rb0[..., None, :], ra_ok, rb_ok, ra0, rb0


def _flagged_chunks(idx: tuple[torch.Tensor, ...], k: int):
    step = max(1, _CHUNK_ELEMENTS // max(1, k))
    for start in range(0, idx[0].numel(), step):
        yield tuple(t[start:start + step] for t in idx)


def _torch_forward(a, b, ra, rb):
    """``(C, L)`` of batched ``a (Bt, M, K)``, ``b (Bt, K, N)`` in the compute dtype."""
    ar, br, ra_ok, rb_ok, ra0, rb0 = _relative(a, b, ra, rb)
    with _fp32_matmul(a.device):
        s = torch.exp(ar) @ torch.exp(br)
    lse = torch.log(s)
    need = (s < TINY) & ra_ok[..., :, None] & rb_ok[..., None, :]
    c = ra0[..., :, None] + rb0[..., None, :] + lse
    idx = need.nonzero(as_tuple=True)  # one host sync: the fallback is allowed one
    bt = b.transpose(1, 2)
    for t, i, j in _flagged_chunks(idx, a.shape[2]):  # absolute coordinates: no cancellation in C
        c[t, i, j] = torch.logsumexp(a[t, i] + bt[t, j], dim=-1)
        lse[t, i, j] = c[t, i, j] - ra0[t, i] - rb0[t, j]
    return c, lse


def _torch_backward(a, b, ra, rb, c, lse, g, need_a, need_b):
    ar, br, ra_ok, rb_ok, _, _ = _relative(a, b, ra, rb)
    # With the global maxima (al = be = 0 on finite rows/columns) the scale exponent is -L;
    # entries with L < log(TINY) are done term by term, in absolute coordinates.
    valid = ra_ok[..., :, None] & rb_ok[..., None, :] & (lse > float("-inf"))
    exact = valid & (lse < LOG_TINY)
    zero = torch.zeros((), dtype=lse.dtype, device=lse.device)
    w = g * torch.where(valid & ~exact, torch.exp(-lse), zero)
    ea, eb = torch.exp(ar), torch.exp(br)
    with _fp32_matmul(a.device):
        grad_a = ea * (w @ eb.transpose(1, 2)) if need_a else None
        grad_b = eb * (ea.transpose(1, 2) @ w) if need_b else None
    idx = exact.nonzero(as_tuple=True)
    if idx[0].numel():
        bt = b.transpose(1, 2)
        grad_bt = torch.zeros_like(bt) if need_b else None
        for t, i, j in _flagged_chunks(idx, a.shape[2]):
            contrib = g[t, i, j, None] * torch.exp(a[t, i] + bt[t, j] - c[t, i, j, None])
            if need_a:
                grad_a.index_put_((t, i), contrib, accumulate=True)
            if need_b:
                grad_bt.index_put_((t, j), contrib, accumulate=True)
        if need_b:
            grad_b = grad_b + grad_bt.transpose(1, 2)
    return grad_a, grad_b


def _library_backward_pays(a: torch.Tensor, b: torch.Tensor, flags: torch.Tensor) -> bool:
    """Large problems without slow-path tiles: the PyTorch backward is faster (see the constant).

    Tiles flagged for the exact path keep the Triton backward, whose tile-level fallback stays
    fast where the PyTorch one goes entry by entry. ``flags.any()`` is one host sync, negligible
    next to a backward of this size.
    """
    macs = a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
    return macs >= LIBRARY_BACKWARD_MIN_MACS and not bool(flags.any())


# --------------------------------------------------------------------------- autograd
class _LogMatmul(torch.autograd.Function):
    """Batched ``a (Bt, M, K)``, ``b (Bt, K, N)``; saves the inputs, the maxima, ``L`` and the fp32 ``C``."""

    @staticmethod
    def forward(ctx, a, b, impl: str, precision: str, save: bool):
        cdt = _compute_dtype(a.dtype)
        ra = a.amax(dim=2).to(cdt).contiguous()
        rb = b.amax(dim=1).to(cdt).contiguous()
        if impl == "triton":
            from labkit.htt.triton_logmatmul import log_matmul_fwd

            c, lse, flags = log_matmul_fwd(a, b, ra, rb, precision)
        else:
            (c, lse), flags = _torch_forward(a.to(cdt), b.to(cdt), ra, rb), None
        ctx.impl, ctx.precision, ctx.flags = impl, precision, flags
        if save:  # c in fp32 (fp64): the output itself for fp32 (fp64) inputs
            ctx.save_for_backward(a, b, ra, rb, c, lse)
        return c.to(a.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_c):
        a, b, ra, rb, c, lse = ctx.saved_tensors
        need_a, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if ctx.impl == "triton" and not _library_backward_pays(a, b, ctx.flags):
            from labkit.htt.triton_logmatmul import log_matmul_bwd

            grad_a, grad_b = log_matmul_bwd(a, b, ra, rb, c, lse, ctx.flags, grad_c, need_a, need_b, ctx.precision)
        else:
            cdt = _compute_dtype(a.dtype)
            grad_a, grad_b = _torch_backward(a.to(cdt), b.to(cdt), ra, rb, c, lse, grad_c.to(cdt), need_a, need_b)
        return (grad_a.to(a.dtype) if need_a else None, grad_b.to(b.dtype) if need_b else None, None, None, None)


def log_matmul(A: torch.Tensor, B: torch.Tensor, backend: str = "auto", precision: str = "ieee") -> torch.Tensor:
    """``C_ij = log sum_k exp(A_ik + B_kj)``, exact to fp32 rounding, with gradients.

    ``A`` is ``(M, K)`` or ``(batch, M, K)``, ``B`` is ``(K, N)`` or ``(batch, K, N)`` (a 2-D
    operand or a batch of 1 broadcasts); the result is ``(M, N)`` or ``(batch, M, N)`` in the
    inputs' dtype, computed in fp32 (fp64 for fp64 inputs, PyTorch path only). ``-inf`` entries
    are allowed (log 0); ``+inf`` and NaN give NaN.

    ``backend``: ``"auto"`` (Triton for CUDA tensors, or CPU under ``TRITON_INTERPRET=1``, in
    fp32/fp16/bf16; PyTorch otherwise), ``"triton"`` or ``"torch"``. ``precision``: the Triton
    dot's input precision, ``"ieee"`` (fp32 FMA) or ``"tf32x3"`` (tensor cores, about 2^-21 per
    product); the PyTorch path always uses plain fp32 matmuls.
    """
    _check_operands(A, B)
    if precision not in PRECISIONS:
        raise ValueError(f"log_matmul: precision must be one of {PRECISIONS}, got {precision!r}")
    if backend == "auto" and A.dtype not in KERNEL_DTYPES:
        backend = "torch"
    backend = resolve_backend(backend, A, B)
    if backend == "triton" and A.dtype not in KERNEL_DTYPES:
        raise ValueError(f"log_matmul: the Triton kernels take {[str(d) for d in KERNEL_DTYPES]}, got {A.dtype}; "
                         "use backend='torch' for float64")
    a, b, squeeze = _as_batched(A, B)
    if a.shape[2] == 0:  # an empty sum: log 0 = -inf everywhere (and zero gradients)
        c = a.sum(dim=2, keepdim=True) * 0 + b.sum(dim=1, keepdim=True) * 0 - float("inf")
    else:
        save = torch.is_grad_enabled() and (A.requires_grad or B.requires_grad)
        c = _LogMatmul.apply(a, b, backend, precision, save)
    return c[0] if squeeze else c


# --------------------------------------------------------------------------- HMM forward algorithm
def _check_hmm(pi, trans, obs, name: str, log: bool = True) -> None:
    names = ("log_pi", "log_A", "log_B_obs") if log else ("pi", "A", "B_obs")
    for arg, t in zip(names, (pi, trans, obs)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name}: {arg} must be a floating-point tensor, got "
                            f"{t.dtype if isinstance(t, torch.Tensor) else type(t).__name__}")
    if trans.dim() != 2 or trans.shape[0] != trans.shape[1]:
        raise ValueError(f"{name}: {names[1]} must be a square (S, S) transition matrix (from, to), "
                         f"got {tuple(trans.shape)}")
    s = trans.shape[0]
    if obs.dim() not in (2, 3) or obs.shape[-1] != s or obs.shape[-2] == 0:
        raise ValueError(f"{name}: {names[2]} must be (T, S) or (batch, T, S) with S = {s} and T >= 1: the "
                         f"emission probability of each step's observation in each state; got {tuple(obs.shape)}")
    batch = obs.shape[:-2]
    if pi.shape not in ((s,), (*batch, s)):
        raise ValueError(f"{name}: {names[0]} must be (S,) or (batch, S) with S = {s}, batch = {tuple(batch)}; "
                         f"got {tuple(pi.shape)}")


def hmm_forward_log(log_pi: torch.Tensor, log_A: torch.Tensor, log_B_obs: torch.Tensor, backend: str = "auto"
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward algorithm of an HMM in log space: ``(log p(x_1..T), log alpha)``.

    ``log_pi (S,)`` or ``(batch, S)``: initial state log-probabilities; ``log_A (S, S)``: transition
    log-probabilities, ``log_A[i, j] = log p(z_t = j | z_{t-1} = i)``; ``log_B_obs (T, S)`` or
    ``(batch, T, S)``: ``log p(x_t | z_t = s)`` of the observed sequence(s). Returns the
    log-likelihood (``()`` or ``(batch,)``) and ``log alpha_t(s) = log p(x_1..t, z_t = s)``, shaped
    like ``log_B_obs``. Each step is one :func:`log_matmul` of the batch's ``log alpha`` rows with
    ``log_A``, so it is differentiable: the gradient of the log-likelihood with respect to
    ``log_B_obs`` is the posterior ``p(z_t = s | x)``. ``backend="reference"`` uses
    :func:`log_matmul_reference` instead.
    """
    _check_hmm(log_pi, log_A, log_B_obs, "hmm_forward_log")
    batched = log_B_obs.dim() == 3
    obs = log_B_obs if batched else log_B_obs.unsqueeze(0)
    step = (lambda x: log_matmul_reference(x, log_A)) if backend == "reference" else \
        (lambda x: log_matmul(x, log_A, backend=backend))
    alpha = log_pi.expand(obs.shape[0], -1) + obs[:, 0]
    alphas = [alpha]
    for t in range(1, obs.shape[1]):
        alpha = step(alpha) + obs[:, t]
        alphas.append(alpha)
    log_alpha = torch.stack(alphas, dim=1)
    loglik = torch.logsumexp(alpha, dim=-1)
    return (loglik, log_alpha) if batched else (loglik[0], log_alpha[0])


def hmm_forward_scaled(pi: torch.Tensor, A: torch.Tensor, B_obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The classical forward algorithm in probabilities with per-step normalisation (Rabiner).

    Same arguments as :func:`hmm_forward_log` but probabilities (``pi``, ``A``, ``B_obs``), same
    outputs (log-likelihood and ``log alpha``). ``alpha_t`` is renormalised to sum 1 at every step
    and the normalisers ``c_t`` are kept: ``log p(x) = sum_t log c_t``. Use it in float64 as the
    check of the log-space version.
    """
    _check_hmm(pi, A, B_obs, "hmm_forward_scaled", log=False)
    batched = B_obs.dim() == 3
    obs = B_obs if batched else B_obs.unsqueeze(0)
    alpha = pi.expand(obs.shape[0], -1) * obs[:, 0]
    log_c = torch.zeros(obs.shape[0], dtype=alpha.dtype, device=alpha.device)
    logs = []
    for t in range(obs.shape[1]):
        if t:
            alpha = (alpha @ A) * obs[:, t]
        c = alpha.sum(dim=-1, keepdim=True)
        alpha = alpha / c
        log_c = log_c + torch.log(c[:, 0])
        logs.append(torch.log(alpha) + log_c[:, None])
    log_alpha = torch.stack(logs, dim=1)
    return (log_c, log_alpha) if batched else (log_c[0], log_alpha[0])
