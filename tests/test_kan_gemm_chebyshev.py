"""The split-GEMM Chebyshev-KAN path (feature kernels + cuBLAS) against the float64 reference.

The same cases as ``test_kan_triton_chebyshev.py``, with 19 inputs in one block (the layer's
usual case: the bias added by the first GEMM) and in blocks of 16 and 3 (the block offsets into
x and coeffs, the bias's fp32 sum across blocks).
"""
import pytest
import torch

from labkit.backend import interpret_mode, triton_available
from labkit.kan.checks import relative_error

from test_kan_triton_chebyshev import DEVICES, TOLERANCE, _make_inputs, _reference_with_grads

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton is not installed")


def _gemm_with_grads(x, coeffs, dy, **kwargs):
    from labkit.kan.gemm_chebyshev import chebykan_gemm

    x = x.detach().requires_grad_()
    coeffs = coeffs.detach().requires_grad_()
    y = chebykan_gemm(x, coeffs, **kwargs)
    dx, dc = torch.autograd.grad(y, (x, coeffs), dy)
    return y.detach(), dx, dc


@pytest.fixture(params=["one block", "blocks of 16", "blocks of 16, 3xTF32 cross terms"])
def blocks(request, monkeypatch):
    from labkit.kan import split_gemm

    if request.param.startswith("blocks of 16"):  # every dtype and degree: 19 inputs as 16 + 3
        monkeypatch.setattr(split_gemm, "inputs_per_block", lambda *args, **kwargs: 16)
    if request.param.endswith("3xTF32 cross terms"):  # not the default; fp32 cases only, 16-bit ones are unchanged
        monkeypatch.setattr(split_gemm, "FP32_CROSS_TERMS", "tf32")
    return request.param


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("degree", [0, 1, 3, 5])
def test_forward_and_gradients_match_float64_reference(device, dtype, degree, blocks):
    x, coeffs, dy = _make_inputs(37, 19, 23, degree, dtype, device)
    y, dx, dc = _gemm_with_grads(x, coeffs, dy)
    y_ref, dx_ref, dc_ref = _reference_with_grads(x, coeffs, dy)
    assert y.dtype == dx.dtype == dc.dtype == dtype
    errors = {"y": relative_error(y, y_ref), "dx": relative_error(dx, dx_ref), "dcoeffs": relative_error(dc, dc_ref)}
    assert errors["y"] < TOLERANCE[dtype] and errors["dcoeffs"] < TOLERANCE[dtype], errors
    if degree == 0:
        assert torch.count_nonzero(dx) == 0
    else:
        assert errors["dx"] < TOLERANCE[dtype], errors


@pytest.mark.parametrize("device", DEVICES)
def test_saturated_tanh_strides_compute_dtype_and_empty_batch(device, blocks):
    x, coeffs, dy = _make_inputs(16, 19, 12, 4, torch.float32, device)
    x[:, :6] = torch.tensor([50.0, -50.0, 1e4, -1e4, 3e38, -3e38], device=device)
    got = _gemm_with_grads(x, coeffs, dy)
    want = _reference_with_grads(x, coeffs, dy)
    assert all(torch.isfinite(g).all() for g in got)
    assert all(relative_error(g, w) < TOLERANCE[torch.float32] for g, w in zip(got, want))
    # column-major x and coeffs in another layout: the same numbers
    strided = _gemm_with_grads(x.t().contiguous().t(), coeffs.permute(2, 0, 1).contiguous().permute(1, 2, 0), dy)
    for g, s in zip(got, strided):
        torch.testing.assert_close(s, g, rtol=1e-6, atol=1e-7)
    # fp32 tensors computed in bf16 (autocast through labkit.kan.ops): y bf16, gradients fp32
    y, dx, dc = _gemm_with_grads(x, coeffs, dy.bfloat16(), compute_dtype=torch.bfloat16)
    assert y.dtype == torch.bfloat16 and dx.dtype == dc.dtype == torch.float32
    assert relative_error(y, want[0]) < TOLERANCE[torch.bfloat16]
    y, dx, dc = _gemm_with_grads(*_make_inputs(0, 5, 7, 2, torch.float32, device))
    assert y.shape == (0, 7) and dx.shape == (0, 5) and torch.count_nonzero(dc) == 0


@pytest.mark.skipif(not interpret_mode(), reason="CPU tensors through the Triton backend need the interpreter")
def test_dispatcher_path_and_bench_case():
    from labkit.kan import bench, ops

    x = torch.randn(40, 19)
    outputs = {}
    for impl in ("cheby_labkit", "cheby_labkit_gemm"):
        torch.manual_seed(0)
        forward, _ = bench.make_case(impl, 40, 19, 23, torch.device("cpu"))
        outputs[impl] = forward(x)
    torch.testing.assert_close(outputs["cheby_labkit_gemm"], outputs["cheby_labkit"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="path must be one of"):
        ops.chebykan(x, torch.zeros(19, 23, 4), backend="triton", path="cublas")


def test_benchmark_shape_runs_as_one_block():
    """At the chapter's benchmark shape (4096 x 768, degree 3) both dtypes fit one block, so the
    step issues each launch once (fp32: TF32 part plus two bf16 planes, 8 bytes per feature)."""
    from labkit.kan import gemm_chebyshev, split_gemm

    for element_bytes in (8, 2):
        assert split_gemm.input_blocks(4096, 768, 3, element_bytes, gemm_chebyshev.BUFFER_SHARE) == [(0, 768)]
    assert len(split_gemm.input_blocks(16384, 768, 3, 8, gemm_chebyshev.BUFFER_SHARE)) == 3  # 4x the rows: 336 a block


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("wanted", ["dx only", "dcoeffs only"])
def test_one_gradient_at_a_time(device, dtype, wanted, blocks):
    """Backward makes dx and the weight gradient's features in one launch when it needs both;
    each alone must come out the same."""
    from labkit.kan.gemm_chebyshev import chebykan_gemm

    x, coeffs, dy = _make_inputs(37, 19, 23, 3, dtype, device)
    _, dx_ref, dc_ref = _reference_with_grads(x, coeffs, dy)
    x.requires_grad_(wanted == "dx only")
    coeffs.requires_grad_(wanted == "dcoeffs only")
    (grad,) = torch.autograd.grad(chebykan_gemm(x, coeffs), x if wanted == "dx only" else coeffs, dy)
    assert relative_error(grad, dx_ref if wanted == "dx only" else dc_ref) < TOLERANCE[dtype]
