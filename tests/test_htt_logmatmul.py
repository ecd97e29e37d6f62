"""Log-domain matmul: values and gradients against float64, ``-inf``, tails, the slow paths, the HMM.

The Triton kernels run in the interpreter on CPU (``TRITON_INTERPRET=1``, set by conftest) at
small sizes, or on the GPU when there is one; the PyTorch implementation of the same algorithm
is checked alongside. The oracle is float64: ``torch.logsumexp`` of the broadcast sum for ``C``
and the explicit sums ``dA_ik = sum_j G_ij exp(A_ik + B_kj - C_ij)`` for the gradients (itself
checked against float64 autograd of the reference).
"""
import math

import pytest
import torch

from labkit.backend import use_triton
from labkit.htt.logmatmul import (hmm_forward_log, hmm_forward_scaled, log_matmul, log_matmul_maxonly,
                                  log_matmul_reference)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(not use_triton(torch.empty(0, device=DEVICE)),
                                  reason="needs CUDA or TRITON_INTERPRET=1")
BACKENDS = ["torch", pytest.param("triton", marks=needs_triton)]
INF = float("inf")

# The interpreter evaluates masked lanes too (log 0, -inf - -inf, later discarded by where).
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def oracle(A, B, G):
    """``C``, ``dA``, ``dB`` in float64 by explicit sums (``P = 0`` where ``C = -inf``)."""
    A, B, G = A.double().cpu(), B.double().cpu(), G.double().cpu()
    C = torch.logsumexp(A[..., :, :, None] + B[..., None, :, :], dim=-2)
    P = torch.exp(A[..., :, :, None] + B[..., None, :, :] - C[..., :, None, :])
    P = torch.nan_to_num(torch.where(C[..., :, None, :] > -INF, P, 0.0), nan=0.0)
    W = G[..., :, None, :] * P
    return C, W.sum(-1), W.sum(-3), P


def run(A, B, G, backend, **kw):
    a = A.detach().clone().to(DEVICE).requires_grad_()
    b = B.detach().clone().to(DEVICE).requires_grad_()
    C = log_matmul(a, b, backend=backend, **kw)
    C.backward(G.to(DEVICE))
    return C.detach().cpu(), a.grad.cpu(), b.grad.cpu()


def check(A, B, backend, c_tol=2e-6, g_tol=1e-5, seed=0, **kw):
    """Compare with the oracle: ``C`` to ``c_tol * max(1, |C|)``; a gradient entry to ``g_tol``
    times its natural scale ``sum_j |G_ij| P_ijk`` (the error bound of the docstring) plus
    ``1e-9 sum_j |G_ij|`` (underflow). Returns the results for further checks."""
    G = torch.randn(*A.shape[:-1], B.shape[-1], generator=torch.Generator().manual_seed(seed))
    C, dA, dB = run(A, B, G, backend, **kw)
    C64, dA64, dB64, P = oracle(A, B, G)
    assert not C.isnan().any() and not dA.isnan().any() and not dB.isnan().any()
    assert torch.equal(torch.isinf(C), torch.isinf(C64)) and (C < INF).all()
    fin = torch.isfinite(C64)
    err = (C.double() - C64).abs()[fin]
    assert (err <= c_tol * C64.abs()[fin].clamp_min(1)).all(), f"C error {err.max():.3g}"
    absG = G.double().abs()[..., :, None, :]
    scale_a = (absG * P).sum(-1) * g_tol + 1e-9 * absG.sum(-1)
    scale_b = (absG * P).sum(-3) * g_tol + 1e-9 * absG.sum(-3)
    assert ((dA.double() - dA64).abs() <= scale_a).all(), f"dA error {((dA.double() - dA64).abs() / scale_a).max():.3g}"
    assert ((dB.double() - dB64).abs() <= scale_b).all(), f"dB error {((dB.double() - dB64).abs() / scale_b).max():.3g}"
    return C, dA, dB


def uniform(*shape, span=80.0, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 * span - span


def normal(*shape, scale=3.0, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


# --------------------------------------------------------------------------- the oracles
def test_reference_is_chunked_logsumexp():
    A, B = normal(2, 13, 9).double(), normal(2, 9, 11, seed=1).double()
    full = torch.logsumexp(A[:, :, :, None] + B[:, None], dim=2)
    for chunk in (1, 5, 13, None):
        assert torch.allclose(log_matmul_reference(A, B, chunk=chunk), full, rtol=0, atol=1e-12)
    assert torch.allclose(log_matmul_reference(A[0], B[0], chunk=4), full[0], rtol=0, atol=1e-12)


def test_gradient_oracle_matches_float64_autograd():
    A, B = normal(7, 9).double().requires_grad_(), normal(9, 5, seed=1).double().requires_grad_()
    G = normal(7, 5, seed=2, scale=1.0).double()
    dA, dB = torch.autograd.grad(log_matmul_reference(A, B), (A, B), G)
    _, oA, oB, _ = oracle(A.detach(), B.detach(), G)
    assert torch.allclose(dA, oA, rtol=1e-12, atol=1e-14) and torch.allclose(dB, oB, rtol=1e-12, atol=1e-14)


def test_torch_backend_passes_gradcheck_in_float64():
    A = normal(5, 7, scale=2.0).double().requires_grad_()
    B = normal(7, 4, scale=2.0, seed=1).double().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: log_matmul(a, b, backend="torch"), (A, B))
    assert torch.allclose(log_matmul(A, B, backend="torch"), log_matmul_reference(A, B), rtol=0, atol=1e-13)


# --------------------------------------------------------------------------- values and gradients
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_float64_with_tails(backend):
    """40 x 70 x 50: no dimension a multiple of the block (masked tails everywhere), several K-blocks."""
    check(normal(40, 70), normal(70, 50, seed=1), backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 1, 5), (33, 17, 2)])
def test_tiny_and_thin_shapes(backend, shape):
    m, k, n = shape
    check(normal(m, k), normal(k, n, seed=1), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inputs_spanning_80(backend):
    """Uniform in [-80, 80]: float32 relative error <= 1e-5 (the issue's target) and gradients.

    At small K many tiles have row and column maxima at different k and take the slow paths."""
    A, B = uniform(40, 70), uniform(70, 50, seed=1)
    C, _, _ = check(A, B, backend)
    C64 = oracle(A, B, torch.zeros(40, 50))[0]
    assert ((C.double() - C64).abs() / C64.abs()).max() <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_adversarial_inputs_take_the_exact_path(backend):
    """Every term is ~0 while every row and column maximum is ~80: the factorisation with the
    global maxima underflows to 0 (so does the per-block one); the result must still be exact."""
    k = torch.arange(40)
    sign = torch.where(k % 2 == 0, 1.0, -1.0)
    A = 80 * sign[None, :] + normal(24, 40, scale=1.0)
    B = -80 * sign[:, None] + normal(40, 20, scale=1.0, seed=1)
    ra, rb = A.amax(1, keepdim=True), B.amax(0, keepdim=True)
    naive = ra + rb + torch.log(torch.exp(A - ra) @ torch.exp(B - rb))
    assert torch.isinf(naive).all()  # the fast path alone would give -inf everywhere
    check(A, B, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pattern", ["blocks", "blocks+exact"])
def test_global_maxima_underflow_but_block_maxima_do_not(backend, pattern):
    """The factorisation with the global maxima underflows to 0 (even with subnormals) everywhere.

    ``blocks``: the first 32 k have ``A ~ 150`` and ``B ~ -150``, the rest ``A, B ~ 0``: each
    K-block factorises with its own maxima (the kernel's block path). ``blocks+exact``: one huge
    ``A[:, 0]`` meets a tiny ``B[0, :]``: the first K-block needs the term-by-term path too."""
    A, B = normal(20, 45, scale=2.0), normal(45, 18, scale=2.0, seed=1)
    if pattern == "blocks":
        A[:, :32] += 150.0
        B[:32, :] -= 150.0
    else:
        A[:, 0], B[0, :] = 150.0, -150.0
    ra, rb = A.amax(1, keepdim=True), B.amax(0, keepdim=True)
    assert (torch.exp(A - ra) @ torch.exp(B - rb) == 0).all()
    check(A, B, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_and_broadcast(backend):
    check(normal(2, 20, 30), normal(2, 30, 25, seed=1), backend)
    # a 2-D operand broadcasts over the batch, and its gradient is summed over it
    A, B = normal(2, 20, 30), normal(30, 25, seed=1)
    G = torch.randn(2, 20, 25)
    C, dA, dB = run(A, B, G, backend)
    C64, dA64, dB64, _ = oracle(A, B.expand(2, -1, -1), G)
    assert torch.allclose(C.double(), C64, rtol=1e-6, atol=1e-5)
    assert dB.shape == B.shape and torch.allclose(dB.double(), dB64.sum(0), rtol=1e-4, atol=1e-5)
    assert torch.allclose(dA.double(), dA64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_inputs(backend):
    """Transposed and sliced operands go to the kernels with their strides, uncopied."""
    A = normal(50, 40).T  # (40, 50), column-major
    B = normal(30, 100, seed=1)[:, ::2].T  # (50, 30), strides (2, 100)
    assert not A.is_contiguous() and not B.is_contiguous()
    check(A, B, backend)


# --------------------------------------------------------------------------- -inf
@pytest.mark.parametrize("backend", BACKENDS)
def test_minus_inf_entries_rows_and_columns(backend):
    g = torch.Generator().manual_seed(3)
    A, B = normal(40, 70), normal(70, 50, seed=1)
    A[torch.rand(40, 70, generator=g) < 0.3] = -INF
    B[torch.rand(70, 50, generator=g) < 0.3] = -INF
    A[3] = -INF  # a whole row of A: row 3 of C is -inf, its gradient 0
    B[:, 7] = -INF  # a whole column of B
    A[5, :35], B[35:, 9] = -INF, -INF  # disjoint supports: C[5, 9] = -inf with finite maxima
    C, dA, dB = check(A, B, backend)
    assert torch.isneginf(C[3]).all() and torch.isneginf(C[:, 7]).all() and C[5, 9] == -INF
    assert (dA[3] == 0).all() and (dB[:, 7] == 0).all()
    assert (dA[A == -INF] == 0).all() and (dB[B == -INF] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_minus_inf(backend):
    A, B = torch.full((20, 33), -INF), normal(33, 17)
    C, dA, dB = run(A, B, torch.randn(20, 17), backend)
    assert torch.isneginf(C).all() and (dA == 0).all() and (dB == 0).all()


def test_empty_inner_dimension_is_log_zero():
    A, B = torch.zeros(3, 0, requires_grad=True), torch.zeros(0, 4, requires_grad=True)
    C = log_matmul(A, B)
    assert C.shape == (3, 4) and torch.isneginf(C).all()
    C.sum().backward()
    assert A.grad.shape == (3, 0) and B.grad.shape == (0, 4)
    assert log_matmul(torch.zeros(0, 5), torch.zeros(5, 4)).shape == (0, 4)


# --------------------------------------------------------------------------- dtypes and options
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_accumulate_in_fp32(backend, dtype):
    A, B = normal(20, 40).to(dtype), normal(40, 30, seed=1).to(dtype)
    a, b = A.to(DEVICE).requires_grad_(), B.to(DEVICE).requires_grad_()
    C = log_matmul(a, b, backend=backend)
    C.backward(torch.ones_like(C))
    assert C.dtype == dtype and a.grad.dtype == dtype and b.grad.dtype == dtype
    C64, dA64, dB64, _ = oracle(A, B, torch.ones(20, 30))  # the rounded inputs, exactly
    eps = torch.finfo(dtype).eps
    assert ((C.cpu().double() - C64).abs() <= eps * C64.abs().clamp_min(1)).all()  # one rounding of C
    assert torch.allclose(a.grad.cpu().double(), dA64, rtol=2 * eps, atol=1e-6)
    assert torch.allclose(b.grad.cpu().double(), dB64, rtol=2 * eps, atol=1e-6)


def test_float64_uses_the_torch_path():
    A, B = uniform(30, 50).double(), uniform(50, 20, seed=1).double()
    C64 = oracle(A, B, torch.zeros(30, 20))[0]
    assert (log_matmul(A, B) - C64).abs().max() < 1e-12  # auto picks torch for float64
    with pytest.raises(ValueError, match="backend='torch' for float64"):
        log_matmul(A, B, backend="triton")


@needs_triton
def test_tf32x3_precision():
    check(normal(40, 70), normal(70, 50, seed=1), "triton", c_tol=1e-5, g_tol=2e-5, precision="tf32x3")


def test_max_only_is_a_lower_bound_within_log_k():
    A, B = normal(9, 64), normal(64, 7, seed=1)
    exact, approx = log_matmul_reference(A.double(), B.double()), log_matmul_maxonly(A.double(), B.double())
    assert (approx <= exact + 1e-12).all() and (exact - approx <= math.log(64) + 1e-12).all()
    equal = torch.zeros(3, 64)  # K equal terms: the worst case, off by exactly log K
    assert torch.allclose(log_matmul_reference(equal, equal.T) - log_matmul_maxonly(equal, equal.T),
                          torch.full((3, 3), math.log(64)))


# --------------------------------------------------------------------------- HMM forward algorithm
def random_hmm(states, steps, batch, seed=0, left_to_right=False):
    g = torch.Generator().manual_seed(seed)
    trans = torch.rand(states, states, generator=g, dtype=torch.float64) ** 4  # peaked rows
    if left_to_right:  # state i may only stay or move to i + 1, i + 2: -inf elsewhere in log space
        i = torch.arange(states)
        trans = trans * ((i[None, :] >= i[:, None]) & (i[None, :] <= i[:, None] + 2))
    trans = trans / trans.sum(1, keepdim=True)
    pi = torch.rand(states, generator=g, dtype=torch.float64)
    if left_to_right:
        pi = torch.nn.functional.one_hot(torch.tensor(0), states).double()
    pi = pi / pi.sum()
    emit = torch.rand(states, 6, generator=g, dtype=torch.float64) ** 3
    emit = emit / emit.sum(1, keepdim=True)
    obs = torch.randint(0, 6, (batch, steps), generator=g)
    return pi, trans, emit[:, obs].permute(1, 2, 0)  # (batch, T, S): p(x_t | z_t = s)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("left_to_right", [False, True])
def test_hmm_forward_matches_scaled_float64(backend, left_to_right):
    pi, trans, b_obs = random_hmm(12, 30, 3, left_to_right=left_to_right)
    ll64, la64 = hmm_forward_scaled(pi, trans, b_obs)
    log_b = b_obs.log().float().to(DEVICE).requires_grad_()
    ll, la = hmm_forward_log(pi.log().float().to(DEVICE), trans.log().float().to(DEVICE), log_b, backend=backend)
    assert ll.shape == (3,) and la.shape == (3, 30, 12)
    assert (ll64 < -30).all()  # far below what a probability-space forward without scaling holds well
    assert torch.allclose(ll.detach().cpu().double(), ll64, rtol=1e-5, atol=0)
    la = la.detach().cpu().double()
    assert torch.equal(torch.isinf(la), torch.isinf(la64))
    fin = torch.isfinite(la64)
    assert torch.allclose(la[fin], la64[fin], rtol=1e-5, atol=1e-4)
    # d log p(x) / d log b_t(s) is the posterior p(z_t = s | x): compare with float64 autograd
    # of the scaled forward (b dlogp/db), and check that the posteriors sum to 1 at every step
    post = torch.autograd.grad(ll.sum(), log_b)[0].cpu().double()
    b64 = b_obs.clone().requires_grad_()
    ref = b_obs * torch.autograd.grad(hmm_forward_scaled(pi, trans, b64)[0].sum(), b64)[0]
    assert torch.allclose(post, ref, rtol=0, atol=1e-5)
    assert torch.allclose(post.sum(-1), torch.ones(3, 30, dtype=torch.float64), atol=1e-5)


def test_hmm_single_sequence_shapes():
    pi, trans, b_obs = random_hmm(5, 7, 1)
    ll, la = hmm_forward_log(pi.log(), trans.log(), b_obs[0].log(), backend="torch")
    ll64, la64 = hmm_forward_scaled(pi, trans, b_obs[0])
    assert ll.shape == () and la.shape == (7, 5) and torch.allclose(ll, ll64, rtol=1e-12)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("A, B, error, match", [
    (torch.zeros(3), torch.zeros(3, 4), ValueError, "A must be .* unsqueeze"),
    (torch.zeros(2, 3, 4, 5), torch.zeros(5, 4), ValueError, "A must be .* flatten"),
    (torch.zeros(3, 4), torch.zeros(5, 6), ValueError, "inner dimensions differ"),
    (torch.zeros(3, 4, dtype=torch.long), torch.zeros(4, 5, dtype=torch.long), TypeError, r"A\.float\(\)"),
    (torch.zeros(3, 4), torch.zeros(4, 5, dtype=torch.float16), TypeError, r"B\.to\(A\.dtype\)"),
    (torch.zeros(3, 4), torch.zeros(4, 5, device="meta"), ValueError, "same device|one device"),
    (torch.zeros(2, 3, 4), torch.zeros(3, 4, 5), ValueError, "batch sizes differ"),
    ([[0.0]], torch.zeros(1, 1), TypeError, "A must be a torch.Tensor"),
])
def test_bad_inputs(A, B, error, match):
    with pytest.raises(error, match=match):
        log_matmul(A, B)


def test_bad_options_and_hmm_shapes():
    A, B = torch.zeros(3, 4), torch.zeros(4, 5)
    with pytest.raises(ValueError, match="backend must be"):
        log_matmul(A, B, backend="cuda")
    with pytest.raises(ValueError, match="precision must be"):
        log_matmul(A, B, precision="tf32")
    with pytest.raises(ValueError, match="chunk must be"):
        log_matmul_reference(A, B, chunk=0)
    with pytest.raises(ValueError, match="log_A must be a square"):
        hmm_forward_log(torch.zeros(3), torch.zeros(3, 4), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="log_B_obs must be"):
        hmm_forward_log(torch.zeros(3), torch.zeros(3, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="log_pi must be"):
        hmm_forward_log(torch.zeros(4), torch.zeros(3, 3), torch.zeros(5, 3))


@needs_triton
@pytest.mark.parametrize("adversarial", [False, True])
def test_large_problems_take_the_library_backward_unless_tiles_are_flagged(monkeypatch, adversarial):
    """Above LIBRARY_BACKWARD_MIN_MACS the Triton forward pairs with the PyTorch backward, with the
    same gradients; tiles flagged for the exact path keep the Triton backward."""
    import labkit.htt.logmatmul as lm
    import labkit.htt.triton_logmatmul as tlm

    monkeypatch.setattr(lm, "LIBRARY_BACKWARD_MIN_MACS", 1)  # every problem counts as large
    calls = []
    original = tlm.log_matmul_bwd
    monkeypatch.setattr(tlm, "log_matmul_bwd", lambda *args, **kw: calls.append(1) or original(*args, **kw))
    if adversarial:
        sign = torch.where(torch.arange(40) % 2 == 0, 1.0, -1.0)
        A = 80 * sign[None, :] + normal(24, 40, scale=1.0)
        B = -80 * sign[:, None] + normal(40, 20, scale=1.0, seed=1)
    else:  # moderate values: nothing underflows (uniform +-80 at K = 40 would flag some tiles)
        A, B = normal(24, 40), normal(40, 20, seed=1)
    check(A, B, "triton")
    assert calls == ([1] if adversarial else [])
