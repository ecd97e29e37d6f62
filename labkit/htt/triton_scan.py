"""Triton kernels for the linear recurrence ``h_t = a_t h_{t-1} + b_t``, forward and backward.

The tensors are ``(..., L)`` and contiguous, read as ``R`` independent rows (every leading
index, e.g. batch x channels), each a sequence of length ``L`` laid out contiguously, as in
accelerated-scan's ``(B, C, T)``; below they are written ``(R, L)``.

Why a scan. The pairs ``(a_t, b_t)`` stand for the affine maps ``x -> a_t x + b_t``, and
composing two of them (left first, then right) gives another one:

    (a_l, b_l) . (a_r, b_r) = (a_l a_r, a_r b_l + b_r)

This is associative, so the inclusive scan of the pairs under it gives, at ``t``, the map
from ``h_{-1}`` to ``h_t``: a prefix scan, computed in ``log`` depth by ``tl.associative_scan``
within a block of registers.

Forward (:func:`scan_forward`). One program owns ``BLOCK_R`` rows and walks along them in
chunks of ``CHUNK`` contiguous elements (so every load and store is a coalesced read of a
contiguous stretch of each row). The state ``h`` at the end of the previous chunk, the
*carry* (``h0`` or 0 for the first chunk), is folded into the chunk's first element,
``b_s <- b_s + a_s * carry``; the scan of the chunk then gives ``h`` directly, and the carry
for the next chunk is its last column. Each element is read once and written once: 3 streams
(``a``, ``b``, ``h``), the minimum. The chunks of a row are processed one after the other,
so the parallelism is the number of rows (12,288 programs at the issue's (8, 1536, L)). The
length is a run-time argument: Triton compiles one variant for lengths divisible by 16 and
one for the others (plus ``L = 1``), never one per length. The divisible variant is the fast
one: it knows every row starts 16-byte aligned, so it loads and stores 16 bytes per
instruction (checked in the PTX for sm_90); marking ``L`` ``do_not_specialize`` would lose
that. ``PREFETCH`` issues the loads of chunk ``i + 1`` before the scan of chunk ``i``, so that
memory latency overlaps the shuffles of the scan: Triton's software pipelining does not do it
for a loop without ``tl.dot`` (no ``cp.async`` in the PTX whatever ``num_stages``). It costs
registers (the fp32 forward at 2048 x 4 warps: 95 per thread with it); autotuning decides.

Backward (:func:`scan_backward`). With ``g_t = dL/dh_t`` in total (through every later
step), ``g_t = dh_t + a_{t+1} g_{t+1}`` (``g_{L-1} = dh_{L-1}``): the same recurrence run
from the end, with the gates shifted by one. Then ``dL/db_t = g_t``,
``dL/da_t = g_t h_{t-1}`` (``h_{-1} = h0``) and ``dL/dh0 = a_0 g_0``. The kernel walks the
chunks from the last to the first, scans each with ``tl.associative_scan(reverse=True)``
(flip, scan with the same combine function, flip: what Triton's own test of a reversed
linear recurrence checks, ``test_scan2d`` in ``test_core.py``, and what its interpreter does)
with the carry ``g`` of the chunk after it folded into the last element. The loads of
``a_{t+1}`` and ``h_{t-1}`` are one element off the 16-byte grid, so they are scalar loads
(``dh`` and the stores stay 16-byte); a warp still reads one contiguous stretch, so the
traffic to memory is unchanged and L1 serves the neighbours.

What backward reads: the forward saves ``a`` and its own output ``h``, and the backward reads
``a`` (shifted by one), ``h`` (shifted by one the other way) and ``dh``, and writes ``da`` and
``db``: 5 streams, 8 for forward + backward. The alternative, saving ``b`` and the per-chunk
carries and recomputing ``h`` chunk by chunk in backward, moves exactly as many bytes (it reads
``b`` instead of ``h``) but adds a second scan per chunk; and ``h`` is usually kept alive by
the next layer anyway while ``b`` is not, so saving ``h`` costs no extra memory in a model.
When ``a`` needs no gradient the kernel skips ``h`` and ``da`` (3 streams).

Precision: loads are converted to fp32 and all arithmetic is fp32; stores convert to the
output dtype (bf16 in, bf16 out). ``enable_fp_fusion`` is left on: fusing
``a_r b_l + b_r`` into one FMA rounds once instead of twice, which can only reduce the error
against the exact result, and the results are compared to a float64 reference with a
tolerance, never bit for bit (a tree-ordered scan cannot match a sequential loop bit for bit
anyway; accelerated-scan turns fusion off to match its own tree-ordered reference exactly).
The cases that are exact stay exact with FMA: ``a = 0`` gives ``h = b``, and ``a = 1`` with
integer-valued ``b`` (partial sums below 2**24) gives the exact cumulative sum.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from labkit.backend import interpret_mode, patch_triton_interpreter, tuning_bucket

if interpret_mode():
    patch_triton_interpreter()

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _configs() -> list[triton.Config]:
    """A short list: chunk length x warps x rows per program x prefetch, for the GPU.

    Under the interpreter a single small configuration (no benchmarking): chunks of 16 and two
    rows per program, so that the tests cross many chunk boundaries and a partial row block.
    """
    if interpret_mode():
        return [triton.Config({"BLOCK_R": 2, "CHUNK": 16, "PREFETCH": True}, num_warps=4)]
    # The H200 run (bench/results/nvidia-h200/scan.json) chose (1, 4096, 8, False) forward and a
    # prefetching 1024/2048 chunk backward at every length, yet at L = 4096 accelerated-scan's
    # Triton scan (one row per program, chunks of 2048, 4 warps, no prefetch) was 1.4x faster, so
    # its setting and a 1024 one without prefetch are in the list too.
    shapes = (  # (BLOCK_R, CHUNK, num_warps, PREFETCH)
        (1, 1024, 2, True), (1, 1024, 4, True), (1, 2048, 4, True),
        (1, 1024, 4, False), (1, 2048, 4, False),
        (1, 2048, 8, False), (1, 4096, 8, False), (4, 256, 4, False),  # the last for short rows
    )
    return [triton.Config({"BLOCK_R": r, "CHUNK": c, "PREFETCH": p}, num_warps=w) for r, c, w, p in shapes]


def _prune(configs, named_args, **kwargs):
    """Drop chunks far longer than the sequence (they would mostly scan padding)."""
    longest = max(256, triton.next_power_of_2(int(named_args["L"])))
    kept = [c for c in configs if c.kwargs["CHUNK"] <= longest]
    return kept or [min(configs, key=lambda c: c.kwargs["CHUNK"])]


@triton.jit
def _combine(a_l, b_l, a_r, b_r):
    """Compose ``x -> a_l x + b_l`` then ``x -> a_r x + b_r``."""
    return a_l * a_r, a_r * b_l + b_r


@triton.jit
def _load_fwd(a_ptr, b_ptr, offs, mask):
    # Padding is the identity map (a = 1, b = 0), so it leaves the carry of a row unchanged.
    a = tl.load(a_ptr + offs, mask=mask, other=1.0).to(tl.float32)
    b = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return a, b


# The row count and length are run-time arguments (R not specialised; L only on L % 16 == 0,
# see the module docstring). R_KEY and L_KEY are their power-of-two buckets, passed only to key
# the autotuning.
@triton.jit(do_not_specialize=["R", "R_KEY", "L_KEY"])
def _scan_fwd_kernel(
    a_ptr, b_ptr, h0_ptr, h_ptr, R, L, R_KEY, L_KEY,
    HAS_H0: tl.constexpr, BLOCK_R: tl.constexpr, CHUNK: tl.constexpr, PREFETCH: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < R
    base = rows.to(tl.int64)[:, None] * L  # (BLOCK_R, 1) offset of each row
    idx = tl.arange(0, CHUNK)[None, :]  # (1, CHUNK) position in the chunk
    if HAS_H0:
        carry = tl.load(h0_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    else:
        carry = tl.zeros((BLOCK_R,), dtype=tl.float32)
    if PREFETCH:
        a_next, b_next = _load_fwd(a_ptr, b_ptr, base + idx, row_ok[:, None] & (idx < L))
    for start in range(0, L, CHUNK):
        cols = start + idx
        mask = row_ok[:, None] & (cols < L)
        if PREFETCH:
            a, b = a_next, b_next
            a_next, b_next = _load_fwd(a_ptr, b_ptr, base + cols + CHUNK, row_ok[:, None] & (cols + CHUNK < L))
        else:
            a, b = _load_fwd(a_ptr, b_ptr, base + cols, mask)
        b = tl.where(idx == 0, b + a * carry[:, None], b)  # enter the chunk with the state so far
        _, h = tl.associative_scan((a, b), axis=1, combine_fn=_combine)
        tl.store(h_ptr + base + cols, h.to(h_ptr.dtype.element_ty), mask=mask)
        carry = tl.sum(tl.where(idx == CHUNK - 1, h, 0.0), axis=1)  # padding kept it: the row's last h


@triton.jit
def _load_bwd(a_ptr, dh_ptr, h_ptr, h0, row_ok, base, cols, L, HAS_H0: tl.constexpr, NEED_DA: tl.constexpr):
    """Chunk ``cols`` of the backward's inputs: ``a_{t+1}``, ``dh_t`` and (if needed) ``h_{t-1}``."""
    mask = row_ok[:, None] & (cols < L)
    # a_{t+1}, 0 past the end (g_{L-1} = dh_{L-1}); padding is then (0, 0), which keeps g = 0.
    a_next = tl.load(a_ptr + base + cols + 1, mask=row_ok[:, None] & (cols + 1 < L), other=0.0).to(tl.float32)
    dh = tl.load(dh_ptr + base + cols, mask=mask, other=0.0).to(tl.float32)
    if NEED_DA:
        h_prev = tl.load(h_ptr + base + cols - 1, mask=mask & (cols >= 1), other=0.0).to(tl.float32)
        if HAS_H0:
            h_prev = tl.where(cols == 0, h0[:, None], h_prev)
    else:
        h_prev = dh  # unused
    return a_next, dh, h_prev


@triton.jit(do_not_specialize=["R", "R_KEY", "L_KEY"])
def _scan_bwd_kernel(
    a_ptr, h_ptr, h0_ptr, dh_ptr, da_ptr, db_ptr, dh0_ptr, R, L, R_KEY, L_KEY,
    HAS_H0: tl.constexpr, NEED_DA: tl.constexpr, NEED_DH0: tl.constexpr,
    BLOCK_R: tl.constexpr, CHUNK: tl.constexpr, PREFETCH: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < R
    base = rows.to(tl.int64)[:, None] * L
    idx = tl.arange(0, CHUNK)[None, :]
    if HAS_H0 and NEED_DA:
        h0 = tl.load(h0_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    else:
        h0 = tl.zeros((BLOCK_R,), dtype=tl.float32)  # unused
    carry = tl.zeros((BLOCK_R,), dtype=tl.float32)  # g at the first position of the chunk after this one
    n_chunks = tl.cdiv(L, CHUNK)
    if PREFETCH:
        a_nx, dh_nx, hp_nx = _load_bwd(a_ptr, dh_ptr, h_ptr, h0, row_ok, base, (n_chunks - 1) * CHUNK + idx, L,
                                       HAS_H0, NEED_DA)
    for i in range(0, n_chunks):
        start = (n_chunks - 1 - i) * CHUNK
        cols = start + idx
        mask = row_ok[:, None] & (cols < L)
        if PREFETCH:
            a_next, dh, h_prev = a_nx, dh_nx, hp_nx
            # The chunk before this one; none on the last pass (every lane masked off).
            a_nx, dh_nx, hp_nx = _load_bwd(a_ptr, dh_ptr, h_ptr, h0, row_ok & (start >= CHUNK), base, cols - CHUNK,
                                           L, HAS_H0, NEED_DA)
        else:
            a_next, dh, h_prev = _load_bwd(a_ptr, dh_ptr, h_ptr, h0, row_ok, base, cols, L, HAS_H0, NEED_DA)
        dh = tl.where(idx == CHUNK - 1, dh + a_next * carry[:, None], dh)  # what flows back from later chunks
        _, g = tl.associative_scan((a_next, dh), axis=1, combine_fn=_combine, reverse=True)
        tl.store(db_ptr + base + cols, g.to(db_ptr.dtype.element_ty), mask=mask)
        if NEED_DA:
            tl.store(da_ptr + base + cols, (g * h_prev).to(da_ptr.dtype.element_ty), mask=mask)
        carry = tl.sum(tl.where(idx == 0, g, 0.0), axis=1)
    if NEED_DH0:  # carry is now g_0
        a0 = tl.load(a_ptr + rows.to(tl.int64) * L, mask=row_ok, other=0.0).to(tl.float32)
        tl.store(dh0_ptr + rows, a0 * carry, mask=row_ok)


_fwd_tuned = triton.autotune(configs=_configs(), key=["R_KEY", "L_KEY"], prune_configs_by={"early_config_prune": _prune}
                             )(_scan_fwd_kernel)
_bwd_tuned = triton.autotune(configs=_configs(), key=["R_KEY", "L_KEY"], prune_configs_by={"early_config_prune": _prune}
                             )(_scan_bwd_kernel)


def _launch(tuned, raw, grid_rows: int, args: tuple, flags: dict, config: dict | None) -> None:
    """Launch the autotuned kernel, or ``raw`` with an explicit ``config`` (tests, sweeps).

    ``config`` holds ``BLOCK_R``, ``CHUNK``, ``PREFETCH`` and optionally ``num_warps``.
    """
    if config is None:
        tuned[lambda meta: (triton.cdiv(grid_rows, meta["BLOCK_R"]),)](*args, **flags)
        return
    meta = dict(config)
    num_warps = meta.pop("num_warps", 4)
    missing = {"BLOCK_R", "CHUNK", "PREFETCH"} - set(meta)
    if missing:
        raise ValueError(f"config needs BLOCK_R, CHUNK and PREFETCH (missing {sorted(missing)})")
    raw[(triton.cdiv(grid_rows, meta["BLOCK_R"]),)](*args, **flags, **meta, num_warps=num_warps)


def _rows(name: str, t: torch.Tensor) -> tuple[int, int]:
    """``(rows, length)`` of a contiguous ``(..., L)`` tensor: every leading index is a row."""
    if t.dim() < 1 or not t.is_contiguous():
        raise ValueError(f"{name} must be a contiguous tensor with at least one dimension, got shape "
                         f"{tuple(t.shape)} (contiguous={t.is_contiguous()})")
    length = t.shape[-1]
    return (t.numel() // length if length else 0), length


def _check_h0(h0: torch.Tensor, rows: int) -> None:
    if not h0.is_contiguous() or h0.numel() != rows:
        raise ValueError(f"h0 must be a contiguous tensor with one element per row ({rows}), got shape "
                         f"{tuple(h0.shape)} (contiguous={h0.is_contiguous()})")


def scan_forward(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None,
                 config: dict | None = None) -> torch.Tensor:
    """``h`` of ``b``'s shape and dtype for contiguous ``a`` and ``b`` of shape ``(..., L)``.

    Every leading index is one row: ``(R, L)`` or, without a reshape on the caller's side (each
    costs host time on every call), ``(B, C, L)``. ``h0`` is ``None`` or a contiguous tensor of
    ``R`` elements, one per row (any float dtype; read as fp32).
    """
    _rows("a", a)
    rows, length = _rows("b", b)
    if a.shape != b.shape or a.dtype != b.dtype or b.dtype not in KERNEL_DTYPES:
        raise ValueError(f"a and b must share shape and a dtype in {KERNEL_DTYPES}; got {tuple(a.shape)} "
                         f"{a.dtype} and {tuple(b.shape)} {b.dtype}")
    h = torch.empty_like(b)
    if h0 is not None:
        _check_h0(h0, rows)
    if b.numel() == 0:
        return h
    args = (a, b, h0 if h0 is not None else b, h, rows, length, tuning_bucket(rows), tuning_bucket(length))
    _launch(_fwd_tuned, _scan_fwd_kernel, rows, args, {"HAS_H0": h0 is not None}, config)
    return h


def scan_backward(a: torch.Tensor, h: torch.Tensor, dh: torch.Tensor, h0: torch.Tensor | None = None,
                  need_da: bool = True, need_dh0: bool = False, config: dict | None = None
                  ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """``(da, db, dh0)`` from the saved ``a``, ``h`` (forward output) and the output gradient ``dh``.

    All of one shape ``(..., L)`` and contiguous (``h0``: one element per row, as in
    :func:`scan_forward`). ``da`` and ``db`` come in ``a``'s shape and dtype, ``dh0`` in fp32 with
    ``R`` elements; ``da`` is ``None`` unless ``need_da``, ``dh0`` unless ``need_dh0``.
    """
    for name, t in (("a", a), ("h", h), ("dh", dh)):
        rows, length = _rows(name, t)
        if t.shape != a.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(a.shape)}")
    db = torch.empty_like(a)
    da = torch.empty_like(a) if need_da else None
    dh0 = torch.zeros(rows, device=a.device, dtype=torch.float32) if need_dh0 else None
    if h0 is not None:
        _check_h0(h0, rows)
    if a.numel() == 0:
        return da, db, dh0
    args = (a, h, h0 if h0 is not None else a, dh, da if need_da else db, db, dh0 if need_dh0 else db,
            rows, length, tuning_bucket(rows), tuning_bucket(length))
    flags = {"HAS_H0": h0 is not None, "NEED_DA": need_da, "NEED_DH0": need_dh0}
    _launch(_bwd_tuned, _scan_bwd_kernel, rows, args, flags, config)
    return da, db, dh0


def tuned_configs() -> dict:
    """What the autotuner chose so far: ``{"forward"|"backward": {key: config}}`` as strings.

    The key is (row bucket, length bucket, then the dtypes of the tensor arguments).
    """
    return {name: {str(key): str(config) for key, config in tuner.cache.items()}
            for name, tuner in (("forward", _fwd_tuned), ("backward", _bwd_tuned))}
