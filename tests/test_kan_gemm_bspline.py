"""The split-GEMM B-spline KAN path (feature kernels + cuBLAS) against the float64 reference.

Same cases as ``test_kan_triton_bspline.py`` (odd sizes, inputs on knots and outside the
grid). ``FEATURE_BUFFER_BYTES`` is shrunk so that the 19 inputs are processed in blocks of
16 and 3: the block offsets into x, the knot table and the parameters are exercised.
"""
import pytest
import torch

from labkit.backend import cublas_allows_tf32, cublas_tf32, interpret_mode, triton_available
from labkit.kan.checks import relative_error

from test_kan_triton_bspline import DEVICES, TOLERANCE, _make_case, _reference_with_grads, _triton_with_grads
from test_kan_triton_bspline import _assert_matches_reference as _assert_fused_matches_reference

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton is not installed")


def _gemm():
    from labkit.kan import gemm_bspline

    return gemm_bspline


@pytest.fixture(params=["one block", "blocks of 16", "blocks of 16, stacked forward", "blocks of 16, 3xTF32 cross terms"])
def blocks(request, monkeypatch):
    if request.param.endswith("stacked forward"):
        monkeypatch.setattr(_gemm(), "STACKED_FORWARD", True)
    if request.param.endswith("3xTF32 cross terms"):  # not the default; fp32 cases only, 16-bit ones are unchanged
        from labkit.kan import split_gemm

        monkeypatch.setattr(split_gemm, "FP32_CROSS_TERMS", "tf32")
    if request.param.startswith("blocks of 16"):
        # 37 rows x 9 features x 8 bytes (fp32, both halves) per input: room for 16 inputs
        from labkit.kan import split_gemm

        monkeypatch.setattr(split_gemm, "FEATURE_BUFFER_BYTES", 16 * 37 * 9 * 8)
    return request.param


def _gemm_with_grads(args, dy):
    return _triton_with_grads(args, dy, _gemm().bspline_kan_gemm)


def _assert_matches_reference(args, dy, tol):
    _assert_fused_matches_reference(args, dy, tol, layer=_gemm().bspline_kan_gemm)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("uniform", [False, True])
@pytest.mark.parametrize("grid_size, order", [(5, 3), (3, 2), (4, 1)])
def test_forward_and_gradients_match_reference(device, dtype, uniform, grid_size, order, blocks):
    args, dy = _make_case(dtype, device, grid_size=grid_size, order=order, uniform=uniform)
    _assert_matches_reference(args, dy, TOLERANCE[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_without_scaler_float16_and_compute_dtype(device, blocks):
    args, dy = _make_case(torch.float32, device, scaler=False)
    _assert_matches_reference(args, dy, TOLERANCE[torch.float32])
    args, dy = _make_case(torch.float16, device, uniform=True)
    _assert_matches_reference(args, dy, TOLERANCE[torch.float16])
    # fp32 x and weights computed in bf16 (what labkit.kan.ops does under autocast): y in bf16,
    # gradients back in fp32
    args, dy = _make_case(torch.float32, device, uniform=True)
    y, grads = _gemm_with_grads({**args, "compute_dtype": torch.bfloat16}, dy.bfloat16())
    y_ref, grads_ref = _reference_with_grads(args, dy)
    assert y.dtype == torch.bfloat16 and all(g.dtype == torch.float32 for g in grads.values())
    assert relative_error(y, y_ref) < TOLERANCE[torch.bfloat16]
    assert all(relative_error(grads[k], grads_ref[k]) < TOLERANCE[torch.bfloat16] for k in grads)


@pytest.mark.parametrize("device", DEVICES)
def test_agrees_with_the_fused_kernels(device, blocks):
    from labkit.kan.triton_bspline import bspline_kan_triton

    args, dy = _make_case(torch.float32, device, uniform=True, seed=3)
    y = _gemm().bspline_kan_gemm(**args)
    # Both are 3xTF32 sums in another order: they agree to fp32 rounding of terms of the
    # outputs' scale (|y| up to 4.6 here), so atol is ~2e-6 of that scale. An H100 run showed
    # 1.5e-6 at y = 0.016, a near cancellation, with the stacked forward.
    torch.testing.assert_close(y, bspline_kan_triton(**args), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_only_some_inputs_need_gradients(device, blocks):
    args, dy = _make_case(torch.float32, device, uniform=True)
    _, want = _reference_with_grads(args, dy)
    x = args["x"].clone().requires_grad_()
    (dx,) = torch.autograd.grad(_gemm().bspline_kan_gemm(**{**args, "x": x}), [x], dy)
    assert relative_error(dx, want["x"]) < TOLERANCE[torch.float32]
    w = args["spline_weight"].clone().requires_grad_()
    (dw,) = torch.autograd.grad(_gemm().bspline_kan_gemm(**{**args, "spline_weight": w}), [w], dy)
    assert relative_error(dw, want["spline_weight"]) < TOLERANCE[torch.float32]


@pytest.mark.parametrize("device", DEVICES)
def test_split_tf32_is_exact_and_tf32_representable(device):
    t = torch.randn(1000, device=device) * torch.logspace(-30, 30, 1000, device=device)
    t[:4] = torch.tensor([0.0, -0.0, 1.0, -3.0])
    from labkit.kan.split_gemm import split_tf32

    hi, lo = split_tf32(t)
    assert torch.equal(hi + lo, t)
    assert torch.all(hi.view(torch.int32) & 0x1FFF == 0)  # the 13 bits TF32 drops are 0
    assert torch.all(lo.abs() <= 2.0**-10 * t.abs())


@pytest.mark.parametrize("device", DEVICES)
def test_split_with_bf16_planes(device, monkeypatch):
    from labkit.kan.split_gemm import Product, split_tf32

    t = torch.randn(37, 19, device=device) * torch.logspace(-3, 3, 19, device=device)
    hi, planes = split_tf32(t, mixed=True)
    assert planes.shape == (2, 37, 19) and planes.dtype == torch.bfloat16
    assert torch.equal(hi, split_tf32(t)[0])
    # bf16 keeps 8 significant bits: within 2^-8 rounded to nearest (the GPU) and 2^-7 truncated
    # (Triton's interpreter truncates whatever rounding the kernel asks for)
    for plane, want in ((planes[0], t), (planes[1], t - hi)):
        assert torch.all((plane.float() - want).abs() <= 2.0**-7 * want.abs())
    # The three products of a mixed split against float64: each cross term is off by ~2^-20 of
    # |a||b| per element (2^-19 with the interpreter's truncation), so the result is within the
    # layer tests' fp32 tolerance (1e-5 of its largest entry); 3xTF32 is ~1e-7
    a, b = torch.rand(37, 300, device=device), torch.randn(300, 23, device=device)
    from labkit.kan import split_gemm

    monkeypatch.setattr(split_gemm, "FP32_CROSS_TERMS", "bf16")
    product = Product("interpreter" if interpret_mode() else "tf32x3", torch.float32)
    got = product(product.parts(a), product.parts(b))
    exact = a.double() @ b.double()
    assert product.mixed and (got.double() - exact).abs().max() < 1e-5 * exact.abs().max()


def test_cross_terms_setting_is_checked(monkeypatch):
    from labkit.kan import split_gemm

    monkeypatch.setattr(split_gemm, "FP32_CROSS_TERMS", "fp16")
    with pytest.raises(ValueError, match="FP32_CROSS_TERMS must be 'tf32' or 'bf16'"):
        split_gemm.Product("tf32x3", torch.float32)


def test_block_size_and_tf32_switch():
    from labkit.kan import split_gemm as gemm

    # 4096 rows, 9 features, fp32 halves: 448 inputs (a multiple of 16) fill the 128 MiB buffer
    assert gemm.FEATURE_BUFFER_BYTES == 128 * 2**20
    assert gemm.inputs_per_block(4096, 768, 9, 8) == 448
    assert gemm.inputs_per_block(4096, 768, 9, 2) == 768  # bf16: one block
    assert gemm.input_blocks(4096, 768, 9, 8) == [(0, 448), (448, 768)]
    assert gemm.inputs_per_block(10, 19, 9, 8) == 19  # small problems: one block
    assert [gemm.ceil_div(a, 16) for a in (0, 1, 16, 17, 4096)] == [0, 1, 1, 2, 256]  # grid sizes
    assert [gemm.next_power_of_2(n) for n in (1, 2, 3, 4, 9, 16)] == [1, 2, 4, 4, 16, 16]  # block sizes
    before = cublas_allows_tf32()
    with cublas_tf32():
        assert cublas_allows_tf32()
    assert cublas_allows_tf32() == before


@pytest.mark.skipif(not interpret_mode(), reason="CPU tensors through the Triton backend need the interpreter")
def test_dispatcher_path_and_bench_case():
    from labkit.kan import bench, ops, split_gemm

    x = torch.rand(40, 19) * 2 - 1
    outputs = {}
    for impl in ("bspline_labkit", "bspline_labkit_gemm"):
        torch.manual_seed(0)  # the same parameters for both cases
        forward, params = bench.make_case(impl, 40, 19, 23, torch.device("cpu"))
        outputs[impl] = forward(x)
    # the default's cross terms are bf16 products (~2^-20 of |a||b|): 1e-5 absolute at outputs of ~1
    torch.testing.assert_close(outputs["bspline_labkit_gemm"], outputs["bspline_labkit"], rtol=1e-5, atol=1e-5)
    torch.manual_seed(0)
    forward, params = bench.make_case("bspline_labkit_gemm_3xtf32", 40, 19, 23, torch.device("cpu"))
    y = forward(x)
    torch.autograd.grad(y.sum(), params)  # the backward runs with the forward's cross terms
    torch.testing.assert_close(y, outputs["bspline_labkit"], rtol=1e-5, atol=1e-6)
    assert split_gemm.FP32_CROSS_TERMS == "bf16"  # the default, restored after the call
    args, _ = _make_case(torch.float32, "cpu")
    args.pop("spline_order")
    with pytest.raises(ValueError, match="path must be one of"):
        ops.bspline_kan(*args.values(), 3, backend="triton", path="cublas")


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch_and_saved_tensors(device):
    args, dy = _make_case(torch.float32, device, rows=4)
    args = {**args, "x": args["x"][:0]}
    y, grads = _gemm_with_grads(args, dy[:0])
    assert y.shape == (0, 23) and grads["x"].shape == (0, 19)
    assert all(torch.count_nonzero(g) == 0 for g in grads.values())
    # nothing of size rows x in x (G + k + 1) is kept for the backward: x and the parameters only
    args, dy = _make_case(torch.float32, device)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        _gemm_with_grads(args, dy)
    assert sorted(saved) == sorted([(37, 19), (23, 19), (23, 19, 8), (23, 19)])
