"""Triton kernels for the two-core TT lookup, forward and backward.

With two cores ``A = core_1`` of shape ``(v_1, 1, d_1, r)`` and ``B = core_2`` of shape
``(v_2, r, d_2, 1)``, token ``t = i_1 v_2 + i_2`` has the row

    out[t, p d_2 + q] = sum_a A[i_1, p, a] B[i_2, a, q]        (cropped to D columns).

* Forward: one program per ``BLOCK_T`` tokens. It gathers each token's two slices (they sit in
  L2: the cores are a few hundred KB) and accumulates the ``d_1 x d_2`` block as ``r`` outer
  products in fp32 registers. Nothing is saved for backward but the ids: the output is the
  only thing written.
* Backward: ``dA[i_1] = sum_t G_t B[i_2(t)]^T`` and ``dB[i_2] = sum_t A[i_1(t)]^T G_t`` with
  ``G_t`` the output gradient of token ``t`` viewed as ``d_1 x d_2``. One program takes
  ``BLOCK_T`` tokens, reads their ``G_t`` once and computes both contributions with batched
  ``tl.dot``. Many tokens share a slice (the ``v_2`` ids with the same ``i_1``, and frequent
  tokens: with Zipf-distributed ids two thirds of the tokens of a batch can share ``i_1 = 0``),
  so adding every token's contribution with atomics would pile thousands of adds onto the same
  few hundred addresses. The program first merges the tokens of its block that share a digit,
  with one more small matrix product (``same[j, i] = [digit_i == digit_j]`` times the
  contributions), and only the first token of each digit adds the sum: a slice receives at
  most one add per block that uses it. No sort and no second pass, so the backward is one
  zero-fill and one launch (at 16,384 tokens the GPU work is tens of microseconds, and every
  extra host-side operation shows up in the time).

Accumulation is in fp32; the atomics make the order of the additions, and so the last bits of
the gradients, vary from run to run (like ``index_add_`` on CUDA).
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from labkit.backend import interpret_mode, patch_triton_interpreter

if interpret_mode():
    patch_triton_interpreter()


def _forward_configs():
    if interpret_mode():
        return [triton.Config({"BLOCK_T": 2}, num_warps=4)]
    return [triton.Config({"BLOCK_T": t}, num_warps=w) for t in (1, 2, 4, 8) for w in (2, 4, 8)]


def _backward_configs():
    if interpret_mode():
        return [triton.Config({"BLOCK_T": 16}, num_warps=4)]
    return [triton.Config({"BLOCK_T": t}, num_warps=w) for t, w in BACKWARD_SHAPES]


# (BLOCK_T, num_warps) of the backward's GPU configurations. BLOCK_T >= 16: tl.dot's smallest
# tile (the kernel multiplies (T, T) by (T, X*Y)).
BACKWARD_SHAPES = ((16, 4), (16, 8), (16, 16), (32, 8))


# Per token the backward holds the tiles G (d_1 x d_2), B^T (d_2 x r) and A^T (r x d_1) and the
# two products of their sizes, so its register demand grows with BLOCK_T (d_1 d_2 + d_2 r + r d_1)
# values per 32 num_warps threads. Above about 256 of them per thread, ptxas spends long on it
# (compiled for sm_90 with Triton 3.6 at d_model 1,024: rank 16 took 1-4 s per configuration;
# rank 32 with 4 warps 12 s; rank 64 with 16 tokens and 4 warps 42 s, with 32 tokens and 8 warps
# 96 s and more shared memory than an H100 has, with 16 tokens and 16 warps 3.7 s), so a
# notebook that builds a few ranks would spend minutes compiling configurations that lose anyway.
_MAX_VALUES_PER_THREAD = 256


def backward_shared_bytes(block_t: int, block_d1: int, block_d2: int, block_r: int) -> int:
    """Shared memory the backward needs at ``BLOCK_T`` tokens: both operands of its larger ``tl.dot``.

    The dots stage their fp32 operands in shared memory: ``G`` with ``B^T`` (T x d_1 x d_2 and
    T x d_2 x r) for core 1 and ``A^T`` with ``G`` for core 2, one after the other. Checked on an
    H100 at d_model 1,280 (d_1 = 32, d_2 = 40 -> tile 64), rank 32, 16 tokens: this gives 262,144
    bytes and Triton asked for 263,168, over the card's 232,448.
    """
    per_token = max(block_d1 * block_d2 + block_d2 * block_r, block_r * block_d1 + block_d1 * block_d2)
    return 4 * block_t * per_token


def _shared_limit() -> int:
    """Shared memory one program may use on the current GPU (no limit in the interpreter)."""
    if interpret_mode() or not torch.cuda.is_available():
        return 1 << 62
    return _device_shared_limit(torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _device_shared_limit(index: int) -> int:
    # Cached: the backward asks on every call, and the property query is host time in a loop
    # whose GPU work is tens of microseconds.
    props = torch.cuda.get_device_properties(index)
    return getattr(props, "shared_memory_per_block_optin", 0) or 48 * 1024


def backward_fits(modes: dict) -> bool:
    """Whether the fused backward fits the GPU at its smallest token block (else PyTorch does it)."""
    smallest = min(t for t, _ in BACKWARD_SHAPES)
    return backward_shared_bytes(smallest, modes["BLOCK_D1"], modes["BLOCK_D2"], modes["BLOCK_R"]) <= _shared_limit()


def _prune_backward(configs, named_args, **kwargs):
    """Keep the backward configurations that fit in shared memory and within ``_MAX_VALUES_PER_THREAD``.

    If none is within the register budget, the least loaded one that fits.
    (``tt2_backward`` checks :func:`backward_fits` first, so at least one fits.)
    """
    d1, d2, r = kwargs["BLOCK_D1"], kwargs["BLOCK_D2"], kwargs["BLOCK_R"]
    limit = _shared_limit()
    configs = [c for c in configs if backward_shared_bytes(c.kwargs["BLOCK_T"], d1, d2, r) <= limit] or configs
    per_token = d1 * d2 + d2 * r + r * d1
    per_thread = lambda c: c.kwargs["BLOCK_T"] * per_token / (32 * c.num_warps)  # noqa: E731
    kept = [c for c in configs if per_thread(c) <= _MAX_VALUES_PER_THREAD]
    return kept or [min(configs, key=per_thread)]


@triton.jit
def _block_tokens(ids_ptr, N, V2: tl.constexpr, BLOCK_T: tl.constexpr):
    """This program's ``BLOCK_T`` token positions, which of them exist, and their two digits."""
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    valid = offs_t < N
    tok = tl.load(ids_ptr + offs_t, mask=valid, other=0).to(tl.int64)
    return offs_t, valid, tok // V2, tok % V2


# The cores are contiguous (the wrappers make sure), so their strides follow from the modes:
# A[i, 0, p, a] sits at i*D1*R + p*R + a and B[i, a, q, 0] at i*R*D2 + a*D2 + q. The model's
# sizes are compile-time constants; only the pointers and the token count are passed at run time
# (each run-time argument adds to Triton's per-launch host cost).
@triton.autotune(configs=_forward_configs(), key=["D1", "D2", "R", "D", "V2"])
@triton.jit(do_not_specialize=["N"])
def _tt2_forward_kernel(
    ids_ptr, a_ptr, b_ptr, out_ptr, N,
    D: tl.constexpr, V2: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr, R: tl.constexpr,
    BLOCK_D1: tl.constexpr, BLOCK_D2: tl.constexpr, BLOCK_T: tl.constexpr,
):
    offs_t, t_mask, i1, i2 = _block_tokens(ids_ptr, N, V2, BLOCK_T)
    p = tl.arange(0, BLOCK_D1)
    q = tl.arange(0, BLOCK_D2)
    a_mask = t_mask[:, None] & (p < D1)[None, :]
    b_mask = t_mask[:, None] & (q < D2)[None, :]
    acc = tl.zeros((BLOCK_T, BLOCK_D1, BLOCK_D2), dtype=tl.float32)
    for a in range(R):  # r outer products of A[i_1][:, a] and B[i_2][a, :]
        a_col = tl.load(a_ptr + i1[:, None] * (D1 * R) + p[None, :] * R + a, mask=a_mask, other=0.0)
        b_row = tl.load(b_ptr + i2[:, None] * (R * D2) + a * D2 + q[None, :], mask=b_mask, other=0.0)
        acc += a_col.to(tl.float32)[:, :, None] * b_row.to(tl.float32)[:, None, :]
    col = p[:, None] * D2 + q[None, :]  # flat column of (p, q) in the row
    col_mask = (p < D1)[:, None] & (q < D2)[None, :] & (col < D)
    ptrs = out_ptr + offs_t.to(tl.int64)[:, None, None] * D + col[None, :, :]
    tl.store(ptrs, acc.to(out_ptr.dtype.element_ty), mask=t_mask[:, None, None] & col_mask[None, :, :])


@triton.jit
def _merged_atomic_add(grad_ptr, digit, valid, contrib, X: tl.constexpr, Y: tl.constexpr,
                       BLOCK_X: tl.constexpr, BLOCK_Y: tl.constexpr, BLOCK_T: tl.constexpr):
    """``grad[digit[t]] += contrib[t]`` for the block's tokens, one add per distinct digit.

    ``contrib`` is ``(BLOCK_T, BLOCK_X, BLOCK_Y)``; a slice ``grad[v]`` is ``X x Y`` contiguous.
    ``same @ contrib`` gives every token the sum over the tokens with its digit; the first of
    them (in block order) adds it.
    """
    j = tl.arange(0, BLOCK_T)
    key = tl.where(valid, digit, -1)
    same = (key[:, None] == key[None, :]) & valid[:, None]  # (T, T)
    summed = tl.dot(same.to(tl.float32), tl.reshape(contrib, (BLOCK_T, BLOCK_X * BLOCK_Y)),
                    input_precision="ieee")  # (T, X*Y)
    earlier = tl.sum((same & (j[None, :] < j[:, None])).to(tl.int32), axis=1)
    first = valid & (earlier == 0)
    c = tl.arange(0, BLOCK_X * BLOCK_Y)
    x, y = c // BLOCK_Y, c % BLOCK_Y
    ptrs = grad_ptr + digit[:, None] * (X * Y) + (x * Y + y)[None, :]
    tl.atomic_add(ptrs, summed, mask=first[:, None] & ((x < X) & (y < Y))[None, :])


@triton.autotune(configs=_backward_configs(), key=["D1", "D2", "R", "D", "V2"],
                 reset_to_zero=["grad_a_ptr", "grad_b_ptr"], prune_configs_by={"early_config_prune": _prune_backward})
@triton.jit(do_not_specialize=["N"])
def _tt2_backward_kernel(
    ids_ptr, dout_ptr, a_ptr, b_ptr, grad_a_ptr, grad_b_ptr, N,
    D: tl.constexpr, V2: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr, R: tl.constexpr,
    BLOCK_D1: tl.constexpr, BLOCK_D2: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """Both cores' gradients from ``BLOCK_T`` tokens: ``G`` is read once for both."""
    offs_t, valid, i1, i2 = _block_tokens(ids_ptr, N, V2, BLOCK_T)
    p = tl.arange(0, BLOCK_D1)
    q = tl.arange(0, BLOCK_D2)
    a = tl.arange(0, BLOCK_R)
    col = p[:, None] * D2 + q[None, :]
    g_mask = (p < D1)[:, None] & (q < D2)[None, :] & (col < D)
    g = tl.load(dout_ptr + offs_t.to(tl.int64)[:, None, None] * D + col[None, :, :],
                mask=valid[:, None, None] & g_mask[None, :, :], other=0.0).to(tl.float32)  # (T, d_1, d_2)
    # Core 1: dA[i_1] += G B[i_2]^T, with B[i_2]^T gathered as (T, d_2, r).
    b_t = tl.load(b_ptr + i2[:, None, None] * (R * D2) + a[None, None, :] * D2 + q[None, :, None],
                  mask=valid[:, None, None] & ((q < D2)[:, None] & (a < R)[None, :])[None, :, :],
                  other=0.0).to(tl.float32)
    _merged_atomic_add(grad_a_ptr, i1, valid, tl.dot(g, b_t, input_precision="ieee"), D1, R,
                       BLOCK_D1, BLOCK_R, BLOCK_T)
    # Core 2: dB[i_2] += A[i_1]^T G, with A[i_1]^T gathered as (T, r, d_1).
    a_t = tl.load(a_ptr + i1[:, None, None] * (D1 * R) + p[None, None, :] * R + a[None, :, None],
                  mask=valid[:, None, None] & ((a < R)[:, None] & (p < D1)[None, :])[None, :, :],
                  other=0.0).to(tl.float32)
    _merged_atomic_add(grad_b_ptr, i2, valid, tl.dot(a_t, g, input_precision="ieee"), R, D2,
                       BLOCK_R, BLOCK_D2, BLOCK_T)


_TUNED: dict = {}  # key -> (best config, {(dtype, aligned) of the tensor arguments: compiled kernel})


def _launch(kernel, grid, key, *args, **meta):
    """Launch an autotuned kernel with as little Python per call as we can get away with.

    At 16,384 tokens each kernel runs for tens of microseconds, and a plain ``kernel[grid](...)``
    spends about as long in Python (the autotuner's wrapper, then Triton's argument binding,
    specialisation and cache lookup), so in a training loop the lookup would be host-bound. After
    the first call for ``key`` (tuning and compiling) we keep the compiled kernel and call its
    launcher directly. What Triton would specialise on has to match: the token count is marked
    ``do_not_specialize``, the model's sizes are compile-time constants in ``key``, and the
    tensors' dtypes and pointer alignment (16 bytes or not) key the compiled kernels here. In the
    interpreter there is no compiled kernel, so it goes through Triton every time.
    """
    entry = _TUNED.get(key)
    if entry is None or interpret_mode():
        kernel[grid](*args, **meta)
        if entry is None and not interpret_mode():
            _TUNED[key] = (kernel.best_config, {})
        return
    config, compiled = entry
    signature = tuple((a.dtype, a.data_ptr() % 16 == 0) for a in args if isinstance(a, torch.Tensor))
    launch = compiled.get(signature)
    if launch is None:  # first call with this alignment: let Triton bind, compile and launch
        constants = {**meta, **config.kwargs}
        binary = kernel.fn.run(*args, **meta, **config.all_kwargs(), grid=grid(constants), warmup=False)
        trailing = tuple(constants[name] for name in kernel.fn.arg_names[len(args):])
        compiled[signature] = (binary, trailing)
        return
    binary, trailing = launch
    blocks = grid(config.kwargs)
    stream = torch._C._cuda_getCurrentRawStream(args[0].device.index)
    # The launcher's arguments in Triton 3.x: grid, stream, function, packed metadata, launch
    # metadata and the two launch hooks (profilers only; None here), then every argument of the
    # signature in order, constexprs included.
    binary.run(blocks[0], 1, 1, stream, binary.function, binary.packed_metadata, None, None, None, *args, *trailing)


@functools.lru_cache(maxsize=64)
def _modes(a_shape: torch.Size, b_shape: torch.Size, d_model: int, backward: bool) -> dict:
    """The compile-time sizes; tiles are powers of two, at least 16 (``tl.dot``'s smallest)."""
    d1, r, d2 = a_shape[2], a_shape[3], b_shape[2]
    tile = lambda n: max(16, triton.next_power_of_2(n))  # noqa: E731
    modes = dict(D=d_model, V2=b_shape[0], D1=d1, D2=d2, R=r, BLOCK_D1=tile(d1), BLOCK_D2=tile(d2))
    if backward:
        modes["BLOCK_R"] = tile(r)
    return modes


def tt2_forward(ids: torch.Tensor, a: torch.Tensor, b: torch.Tensor, d_model: int) -> torch.Tensor:
    """Rows of the two-core TT for flat ``ids``: ``(N, d_model)`` in the cores' dtype.

    ``a`` and ``b`` must be contiguous (``tt_lookup`` makes them so).
    """
    n = ids.numel()
    out = torch.empty(n, d_model, device=a.device, dtype=a.dtype)
    if n:
        modes = _modes(a.shape, b.shape, d_model, False)
        _launch(_tt2_forward_kernel, lambda meta: (triton.cdiv(n, meta["BLOCK_T"]),),
                ("fwd", a.dtype, a.shape, b.shape, d_model), ids, a, b, out, n, **modes)
    return out


def backward_modes_fit(a: torch.Tensor, b: torch.Tensor, d_model: int) -> bool:
    """:func:`backward_fits` for these cores (their modes are cached; so is the device's limit)."""
    return backward_fits(_modes(a.shape, b.shape, d_model, True))


def tt2_backward(ids: torch.Tensor, a: torch.Tensor, b: torch.Tensor, dout: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of both cores (fp32 accumulation, returned in the cores' dtypes).

    ``a``, ``b`` and ``dout`` must be contiguous. One zero-fill serves both gradients.
    """
    n = ids.numel()
    grads = torch.zeros(a.numel() + b.numel(), device=a.device, dtype=torch.float32)
    grad_a, grad_b = grads[:a.numel()].view(a.shape), grads[a.numel():].view(b.shape)
    if n:
        modes = _modes(a.shape, b.shape, dout.shape[1], True)
        _launch(_tt2_backward_kernel, lambda meta: (triton.cdiv(n, meta["BLOCK_T"]),),
                ("bwd", a.dtype, a.shape, b.shape, dout.shape[1]), ids, dout, a, b, grad_a, grad_b, n, **modes)
    return grad_a.to(a.dtype), grad_b.to(b.dtype)
