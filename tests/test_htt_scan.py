"""``linear_scan`` (issue 8) against the sequential loop, differentiated in float64.

Both implementations are tested: the PyTorch fallback everywhere, the Triton kernels on CUDA
or, on a CPU-only machine, in Triton's interpreter (``TRITON_INTERPRET=1``, set by conftest).
The interpreter runs ``tl.associative_scan`` one element at a time in Python (about 0.1 ms an
element), so the sizes are small and the long sequences go through an explicit kernel
configuration with longer chunks. Under the interpreter the autotuned kernel has a single
configuration with chunks of 16 and 2 rows per program, so every length here that is not a
multiple of 16 ends in a partial chunk, and odd row counts end in a partial row block.

The reference is :func:`linear_scan_reference` run in float64 on the *same rounded* inputs,
with autograd giving the gradients of ``a``, ``b`` and ``h0``. Tolerances are on the relative
error ``||got - want|| / ||want||``: fp32 only accumulates rounding (1e-5 allowed); bf16
outputs and gradients are rounded to 8 significant bits (2**-9 relative, so 1e-2 allowed).
"""
import pytest
import torch

from labkit.backend import interpret_mode, triton_available, use_triton
from labkit.htt.scan import linear_scan, linear_scan_reference, scan_torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
HAS_TRITON = triton_available() and use_triton(torch.empty(0, device=DEVICE))
BACKENDS = ["torch"] + (["triton"] if HAS_TRITON else [])
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="needs CUDA, or triton under TRITON_INTERPRET=1")
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float64: 1e-12}


def _rel(got, want):
    got, want = got.double(), want.double()
    return ((got - want).norm() / want.norm().clamp_min(1e-30)).item()


def _gates(shape, kind, gen):
    """``a`` of a kind: decay in (0, 1), 1 (a plain cumulative sum), 0 (h = b), or a mix of all three."""
    if kind == "decay":
        return torch.rand(shape, generator=gen) * 0.98 + 0.01
    if kind == "one":
        return torch.ones(shape)
    if kind == "zero":
        return torch.zeros(shape)
    assert kind == "mixed"
    pick = torch.randint(0, 3, shape, generator=gen)
    return torch.where(pick == 0, 0.0, torch.where(pick == 1, 1.0, torch.rand(shape, generator=gen)))


def _case(shape, dtype, kind="decay", with_h0=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = _gates(shape, kind, gen)
    b = torch.randn(shape, generator=gen)
    h0 = torch.randn(shape[:-1], generator=gen) if with_h0 else None
    dh = torch.randn(shape, generator=gen)
    cast = lambda t: None if t is None else t.to(DEVICE, dtype)  # noqa: E731
    return cast(a), cast(b), cast(h0), cast(dh)


def _reference(a, b, h0, dh):
    """Output and gradients (a, b, h0) of the float64 sequential loop on the same inputs."""
    leaves = [t.detach().double().requires_grad_(True) for t in (a, b)]
    h0d = None if h0 is None else h0.detach().double().requires_grad_(True)
    h = linear_scan_reference(*leaves, h0d)
    grads = torch.autograd.grad(h, leaves + ([h0d] if h0d is not None else []), dh.double())
    return h.detach(), grads


def _run(a, b, h0, dh, backend):
    leaves = [t.detach().clone().requires_grad_(True) for t in (a, b)]
    h0l = None if h0 is None else h0.detach().clone().requires_grad_(True)
    h = linear_scan(*leaves, h0l, backend=backend)
    grads = torch.autograd.grad(h, leaves + ([h0l] if h0l is not None else []), dh)
    return h, grads


def _check(a, b, h0, dh, backend, tol):
    h, grads = _run(a, b, h0, dh, backend)
    assert h.dtype == b.dtype and h.shape == b.shape and h.device == b.device
    want_h, want_grads = _reference(a, b, h0, dh)
    assert _rel(h, want_h) < tol, ("h", _rel(h, want_h))
    for name, got, want, leaf in zip(("da", "db", "dh0"), grads, want_grads, (a, b, h0)):
        assert got.shape == leaf.shape and got.dtype == leaf.dtype, name
        assert _rel(got, want) < tol, (name, _rel(got, want))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(7,), (3, 33), (2, 3, 40)])
@pytest.mark.parametrize("kind", ["decay", "one", "zero", "mixed"])
def test_matches_reference(backend, dtype, shape, kind):
    with_h0 = kind in ("decay", "mixed")
    _check(*_case(shape, dtype, kind, with_h0), backend, TOL[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("length", [1, 16, 17, 1000])
def test_lengths(backend, length):
    """One step, exactly one chunk, one past it, and many chunks (63 under the interpreter)."""
    _check(*_case((2, length), torch.float32, "decay"), backend, TOL[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_sequence_cumsum(backend):
    """a = 1 over 5000 steps: a running sum whose size grows, the hard case for rounding."""
    if backend == "triton" and interpret_mode():
        pytest.skip("covered by test_kernel_long_sequence (a longer chunk keeps the interpreter fast)")
    _check(*_case((2, 5000), torch.float32, "one"), backend, TOL[torch.float32])


@needs_triton
@pytest.mark.parametrize("length, kind", [(1000, "one"), (5000, "decay"), (5000, "one")])
def test_kernel_long_sequence(length, kind):
    """The kernels alone on long rows, with chunks of 256 (not a divisor of either length)."""
    from labkit.htt.triton_scan import scan_backward, scan_forward

    a, b, h0, dh = _case((1, length), torch.float32, kind)
    config = dict(BLOCK_R=1, CHUNK=256, PREFETCH=True)
    h = scan_forward(a, b, h0, config=config)
    da, db, dh0 = scan_backward(a, h, dh, h0, need_da=True, need_dh0=True, config=config)
    want_h, (want_da, want_db, want_dh0) = _reference(a, b, h0, dh)
    for got, want in ((h, want_h), (da, want_da), (db, want_db), (dh0, want_dh0)):
        assert _rel(got, want) < TOL[torch.float32]


@needs_triton
@pytest.mark.parametrize("config", [dict(BLOCK_R=1, CHUNK=8, PREFETCH=False),
                                    dict(BLOCK_R=2, CHUNK=16, PREFETCH=True, num_warps=1),
                                    dict(BLOCK_R=4, CHUNK=32, PREFETCH=False, num_warps=2)])
@pytest.mark.parametrize("length", [1, 7, 8, 33])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_configs(config, length, dtype):
    """Every kernel variant (rows per program, chunk, prefetch on/off) on 3 rows."""
    from labkit.htt.triton_scan import scan_backward, scan_forward

    a, b, h0, dh = _case((3, length), dtype, "mixed")
    h0 = h0.float()
    h = scan_forward(a, b, h0, config=config)
    want_h, (want_da, want_db, want_dh0) = _reference(a, b, h0, dh)
    assert h.dtype == dtype and _rel(h, want_h) < TOL[dtype]
    da, db, dh0 = scan_backward(a, h, dh, h0, need_da=True, need_dh0=True, config=config)
    for got, want in ((da, want_da), (db, want_db), (dh0, want_dh0)):
        assert _rel(got, want) < TOL[dtype]
    # Without da (a needs no gradient) the kernel skips h; db must not change.
    none_da, db2, none_dh0 = scan_backward(a, h, dh, None, need_da=False, need_dh0=False, config=config)
    assert none_da is None and none_dh0 is None and torch.equal(db2, db)


@pytest.mark.parametrize("backend", BACKENDS)
def test_noncontiguous_inputs(backend):
    gen = torch.Generator().manual_seed(1)
    a = (torch.rand(20, 3, 2, generator=gen) * 0.9).to(DEVICE).permute(1, 2, 0)  # (3, 2, 20), time not contiguous
    b = torch.randn(3, 2, 40, generator=gen).to(DEVICE)[..., ::2]  # stride 2 along time
    h0 = torch.randn(2, 3, generator=gen).to(DEVICE).t()  # transposed
    dh = torch.randn(3, 2, 21, generator=gen).to(DEVICE)[..., :20]
    assert not (a.is_contiguous() or b.is_contiguous() or h0.is_contiguous() or dh.is_contiguous())
    _check(a, b, h0, dh, backend, TOL[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
def test_broadcast_gates_and_h0(backend):
    """One gate per channel ``(D, 1)`` against ``b`` of ``(B, D, L)``; gradients sum back to the gate's shape."""
    gen = torch.Generator().manual_seed(2)
    a = (torch.rand(3, 1, generator=gen) * 0.9).to(DEVICE).requires_grad_(True)
    b = torch.randn(2, 3, 19, generator=gen).to(DEVICE).requires_grad_(True)
    h0 = torch.randn(3, generator=gen).to(DEVICE).requires_grad_(True)  # broadcast over the batch
    dh = torch.randn(2, 3, 19, generator=gen).to(DEVICE)
    h = linear_scan(a, b, h0, backend=backend)
    grads = torch.autograd.grad(h, (a, b, h0), dh)
    assert [g.shape for g in grads] == [a.shape, b.shape, h0.shape]
    leaves = [t.detach().double().requires_grad_(True) for t in (a, b, h0)]
    want = linear_scan_reference(leaves[0].expand(2, 3, 19), leaves[1], leaves[2].expand(2, 3))
    want_grads = torch.autograd.grad(want, leaves, dh.double())
    assert _rel(h, want) < 1e-5
    for got, w in zip(grads, want_grads):
        assert _rel(got, w) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_accumulates_in_fp32(backend, dtype):
    """a = b = 1: a bf16 running sum would stall at 256 (256 + 1 rounds to 256); fp32 does not.

    The output is the exact count rounded once to the output dtype. Triton's interpreter
    converts fp32 to bf16 by truncation (the GPU rounds to nearest even), so there the result
    may be one bf16 step below; a stalled bf16 sum would be off by more than half.
    """
    ones = torch.ones(2, 600, device=DEVICE, dtype=dtype)
    h = linear_scan(ones, ones, backend=backend)
    exact = torch.arange(1, 601, device=DEVICE, dtype=torch.float32).expand(2, 600)
    assert h.dtype == dtype
    if backend == "triton" and interpret_mode() and dtype == torch.bfloat16:
        assert ((exact - h.float()) / exact).max() < 2**-7 and (h.float() <= exact).all()
    else:
        assert torch.equal(h, exact.to(dtype))


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_cases(backend):
    """a = 1 with integer b is an exact cumulative sum; a = 0 gives b back, bit for bit."""
    gen = torch.Generator().manual_seed(3)
    b = torch.randint(-50, 50, (3, 45), generator=gen).float().to(DEVICE)
    ones, zeros = torch.ones_like(b), torch.zeros_like(b)
    assert torch.equal(linear_scan(ones, b, backend=backend), torch.cumsum(b, -1))
    b = torch.randn(3, 45, generator=gen).to(DEVICE)
    assert torch.equal(linear_scan(zeros, b, torch.randn(3, device=DEVICE), backend=backend), b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_b_needs_grad(backend):
    a, b, h0, dh = _case((2, 21), torch.float32, "decay")
    b = b.requires_grad_(True)
    (db,) = torch.autograd.grad(linear_scan(a, b, h0, backend=backend), (b,), dh)
    want = _reference(a, b, h0, dh)[1][1]
    assert _rel(db, want) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(0,), (2, 0), (0, 5)])
def test_empty(backend, shape):
    a = torch.rand(shape, device=DEVICE, requires_grad=True)
    b = torch.rand(shape, device=DEVICE, requires_grad=True)
    h0 = torch.rand(shape[:-1], device=DEVICE, requires_grad=True)
    h = linear_scan(a, b, h0, backend=backend)
    assert h.shape == shape
    grads = torch.autograd.grad(h.sum(), (a, b, h0), allow_unused=True)
    for g, t in zip(grads, (a, b, h0)):
        assert g is None or (g.shape == t.shape and not g.any())


def test_torch_gradcheck_float64():
    gen = torch.Generator().manual_seed(4)
    a = (torch.rand(2, 70, generator=gen, dtype=torch.float64) * 0.9).requires_grad_(True)  # > one torch chunk
    b = torch.randn(2, 70, generator=gen, dtype=torch.float64).requires_grad_(True)
    h0 = torch.randn(2, generator=gen, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda *t: linear_scan(*t, backend="torch"), (a, b, h0))


def test_auto_sends_float64_to_torch():
    a = torch.rand(2, 9, dtype=torch.float64, device=DEVICE)
    b = torch.randn(2, 9, dtype=torch.float64, device=DEVICE)
    h = linear_scan(a, b)
    assert h.dtype == torch.float64 and _rel(h, linear_scan_reference(a, b)) < 1e-14


def test_mixed_dtypes_promote():
    a = torch.rand(2, 9, device=DEVICE, dtype=torch.bfloat16)
    b = torch.randn(2, 9, device=DEVICE)
    h = linear_scan(a, b)
    assert h.dtype == torch.float32
    assert _rel(h, linear_scan_reference(a.double(), b.double())) < 1e-5


def test_torch_chunked_scan_lengths():
    """The fallback's chunking and recursion: lengths around its chunk of 64 and its square."""
    gen = torch.Generator().manual_seed(5)
    for length in (1, 63, 64, 65, 4095, 4097):
        a = torch.rand(2, length, generator=gen, dtype=torch.float64)
        b = torch.randn(2, length, generator=gen, dtype=torch.float64)
        h0 = torch.randn(2, generator=gen, dtype=torch.float64)
        assert _rel(scan_torch(a, b, h0), linear_scan_reference(a, b, h0)) < 1e-13


@pytest.mark.parametrize("call, error, match", [
    (lambda: linear_scan(torch.ones(3, dtype=torch.int64), torch.ones(3)), TypeError, "floating point"),
    (lambda: linear_scan(torch.ones(3, dtype=torch.complex64), torch.ones(3)), TypeError, "floating point"),
    (lambda: linear_scan([1.0, 2.0], torch.ones(2)), TypeError, "torch.Tensor"),
    (lambda: linear_scan(torch.ones(3, 4), torch.ones(3, 5)), ValueError, "do not broadcast"),
    (lambda: linear_scan(torch.tensor(0.5), torch.tensor(1.0)), ValueError, "0-dimensional"),
    (lambda: linear_scan(torch.ones(2, 4), torch.ones(2, 4), torch.ones(3)), ValueError, "h0"),
    (lambda: linear_scan(torch.ones(2, 4), torch.ones(2, 4), torch.ones(2, 4)), ValueError, "h0"),
    (lambda: linear_scan(torch.ones(2, 4), torch.ones(2, 4), torch.ones(2, dtype=torch.int32)), TypeError, "h0"),
    (lambda: linear_scan(torch.ones(4), torch.ones(4, device="meta")), ValueError, "one device"),
    (lambda: linear_scan(torch.ones(4), torch.ones(4), backend="cuda"), ValueError, "backend"),
])
def test_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


@needs_triton
def test_triton_rejects_float64():
    x = torch.ones(2, 4, dtype=torch.float64, device=DEVICE)
    with pytest.raises(TypeError, match="backend='torch'"):
        linear_scan(x, x, backend="triton")
