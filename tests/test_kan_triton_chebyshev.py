"""The fused Triton Chebyshev-KAN kernels against the float64 reference.

On a CPU-only machine the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``,
set by conftest.py); with CUDA they run on the GPU. Sizes are odd on purpose (37 x 19 ->
23): no dimension is a multiple of any block size, so every mask is exercised.
"""
import pytest
import torch

from labkit.backend import interpret_mode, triton_available
from labkit.kan.checks import relative_error
from labkit.kan.reference import chebykan_reference

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton is not installed")

DEVICES = (["cpu"] if interpret_mode() else []) + (["cuda"] if torch.cuda.is_available() else [])

# Relative error ||got - want|| / ||want|| allowed against the float64 reference that is
# computed from the *same rounded* inputs. fp32 with near-exact products (the default
# "tf32x3", or "ieee") only accumulates rounding over K = in * degree terms: below 1e-6
# measured, 1e-5 allowed. bf16 rounds every feature and the output to 8 significant bits
# (2**-8 ~ 4e-3): 1e-2 allowed; ~5e-3 measured in the interpreter, whose fp32 -> bf16 cast
# truncates instead of rounding. (The interpreter ignores input_precision: NumPy products.)
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


@pytest.fixture(autouse=True)
def _one_config_per_kernel(monkeypatch):
    """These tests check results, not speed: on CUDA, compile one config per kernel instead
    of autotuning over all of them (the interpreter has a single config anyway)."""
    import labkit.kan.triton_chebyshev as module

    monkeypatch.setattr(module, "AUTOTUNE", False)


def _chebykan_triton():
    # Imported lazily so that collecting this file does not import triton on its own.
    from labkit.kan.triton_chebyshev import chebykan_triton

    return chebykan_triton


def _make_inputs(rows, n_in, n_out, degree, dtype, device, scale=1.5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = (scale * torch.randn(rows, n_in, generator=gen)).to(device, dtype)
    coeffs = (torch.randn(n_in, n_out, degree + 1, generator=gen) / (n_in * (degree + 1)) ** 0.5).to(device, dtype)
    dy = torch.randn(rows, n_out, generator=gen).to(device, dtype)
    return x, coeffs, dy


def _reference_with_grads(x, coeffs, dy):
    """y, dx, dcoeffs of the float64 reference; dx is 0 where y does not depend on x (degree 0)."""
    x64 = x.detach().double().requires_grad_()
    c64 = coeffs.detach().double().requires_grad_()
    y = chebykan_reference(x64, c64)
    dx, dc = torch.autograd.grad(y, (x64, c64), dy.double(), allow_unused=True)
    return y.detach(), torch.zeros_like(x64) if dx is None else dx, dc


def _triton_with_grads(x, coeffs, dy, **kwargs):
    x = x.detach().requires_grad_()
    coeffs = coeffs.detach().requires_grad_()
    y = _chebykan_triton()(x, coeffs, **kwargs)
    dx, dc = torch.autograd.grad(y, (x, coeffs), dy)
    return y.detach(), dx, dc


# (device, (rows, in, out)). 37 x 19 -> 23 spans two interpreter blocks (16) per dimension;
# on the GPU, whose blocks are 32 to 256, a larger odd shape also runs the multi-block loops.
SHAPES = [(device, (37, 19, 23)) for device in DEVICES] + [
    (device, (301, 157, 203)) for device in DEVICES if device == "cuda"
]


@pytest.mark.parametrize("device, shape", SHAPES, ids=[f"{d}-{'x'.join(map(str, s))}" for d, s in SHAPES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("degree", [0, 1, 3, 5])
def test_forward_and_gradients_match_float64_reference(device, shape, dtype, degree):
    x, coeffs, dy = _make_inputs(*shape, degree, dtype, device)
    y, dx, dc = _triton_with_grads(x, coeffs, dy, input_precision="tf32x3")  # the fp32 default
    y_ref, dx_ref, dc_ref = _reference_with_grads(x, coeffs, dy)

    assert y.dtype == dx.dtype == dc.dtype == dtype
    assert y.shape == y_ref.shape and dx.shape == x.shape and dc.shape == coeffs.shape
    tol = TOLERANCE[dtype]
    # All three errors in every message: a failure then says which kernels are off, and by how much.
    errors = {"y": relative_error(y, y_ref), "dx": relative_error(dx, dx_ref), "dcoeffs": relative_error(dc, dc_ref)}
    assert errors["y"] < tol, errors
    assert errors["dcoeffs"] < tol, errors
    if degree == 0:
        assert torch.count_nonzero(dx) == 0  # T_0 = 1 does not depend on x
    else:
        assert errors["dx"] < tol, errors


@pytest.mark.skipif(not interpret_mode(), reason="on CUDA the autotuner tries both dx variants")
@pytest.mark.parametrize("variant", ["one degree per pass", "all degrees at once"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_both_dx_kernel_variants_match_reference(monkeypatch, variant, dtype):
    """The dx kernel has two code paths (see its docstring); under the interpreter only one
    config exists, so each path is swapped in here in turn."""
    import labkit.kan.triton_chebyshev as module

    monkeypatch.setattr(module._chebykan_dx_kernel, "configs", module.DX_INTERPRETER_VARIANTS[variant])
    x, coeffs, dy = _make_inputs(37, 19, 23, 4, dtype, "cpu")
    _, dx, _ = _triton_with_grads(x, coeffs, dy, input_precision="ieee")
    _, dx_ref, _ = _reference_with_grads(x, coeffs, dy)
    assert relative_error(dx, dx_ref) < TOLERANCE[dtype]


@pytest.mark.skipif(not interpret_mode(), reason="on CUDA the autotuner tries both dcoeffs variants")
@pytest.mark.parametrize("variant", ["one degree per program", "all degrees at once"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_both_dcoeffs_kernel_variants_match_reference(monkeypatch, variant, dtype):
    """Like the dx test above, for the two code paths of the dcoeffs kernel."""
    import labkit.kan.triton_chebyshev as module

    monkeypatch.setattr(module._chebykan_dcoeffs_kernel, "configs", module.DW_INTERPRETER_VARIANTS[variant])
    x, coeffs, dy = _make_inputs(37, 19, 23, 4, dtype, "cpu")
    _, _, dc = _triton_with_grads(x, coeffs, dy, input_precision="ieee")
    _, _, dc_ref = _reference_with_grads(x, coeffs, dy)
    assert relative_error(dc, dc_ref) < TOLERANCE[dtype]


# exp(-2|x|) underflows to 0 on purpose for huge |x|; the interpreter's NumPy warns about it.
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_saturated_tanh_gives_finite_gradients(device, dtype):
    """|x| = 50 makes tanh round to exactly +-1, where the acos form of the layer gives NaN."""
    x, coeffs, dy = _make_inputs(16, 8, 12, 4, dtype, device)
    big = torch.tensor([50.0, -50.0, 1e4, -1e4, 3e38, -3e38, 9.5, -9.5], device=device).to(dtype)
    x[:, : big.numel()] = big
    y, dx, dc = _triton_with_grads(x, coeffs, dy, input_precision="ieee")
    y_ref, dx_ref, dc_ref = _reference_with_grads(x, coeffs, dy)

    for got in (y, dx, dc):
        assert torch.isfinite(got).all()
    assert relative_error(y, y_ref) < TOLERANCE[dtype]
    assert relative_error(dc, dc_ref) < TOLERANCE[dtype]
    # Where tanh is saturated the exact slope 1 - tanh^2 is below 1e-40: the gradient is 0.
    assert (dx[:, :6].double() - dx_ref[:, :6]).abs().max() < 1e-30
    assert relative_error(dx, dx_ref) < TOLERANCE[dtype]


@pytest.mark.parametrize("device", DEVICES)
def test_compute_dtype_keeps_input_and_weight_dtypes(device):
    """What autocast does through labkit.kan.ops: fp32 x and coeffs, bf16 products; y in
    bf16, both gradients in fp32, no cast passes."""
    rows, n_in, n_out, degree = 37, 19, 23, 3
    x, coeffs, dy = _make_inputs(rows, n_in, n_out, degree, torch.float32, device)
    x.requires_grad_()
    coeffs.requires_grad_()
    y = _chebykan_triton()(x, coeffs, compute_dtype=torch.bfloat16)
    dx, dc = torch.autograd.grad(y, [x, coeffs], dy.bfloat16())
    assert y.dtype == torch.bfloat16 and dx.dtype == torch.float32 and dc.dtype == torch.float32
    xr, cr = x.detach().double().requires_grad_(), coeffs.detach().double().requires_grad_()
    y_ref = chebykan_reference(xr, cr)
    dx_ref, dc_ref = torch.autograd.grad(y_ref, [xr, cr], dy.bfloat16().double())
    for got, want in ((y, y_ref), (dx, dx_ref), (dc, dc_ref)):
        assert relative_error(got, want) < TOLERANCE[torch.bfloat16]


@pytest.mark.parametrize("device", DEVICES)
def test_backward_saves_only_x_and_the_packed_weights(device):
    """No (rows, in, degree + 1) feature tensor may be kept alive for the backward pass:
    only x and the weights in the kernels' (D + 1, in, out) layout."""
    rows, n_in, n_out, degree = 37, 19, 23, 5
    x, coeffs, dy = _make_inputs(rows, n_in, n_out, degree, torch.float32, device)
    x.requires_grad_()
    coeffs.requires_grad_()
    saved_shapes = []

    def pack(tensor):
        saved_shapes.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        y = _chebykan_triton()(x, coeffs)
    assert sorted(saved_shapes) == sorted([(rows, n_in), (degree + 1, n_in, n_out)])
    assert all(torch.Size(s).numel() < rows * n_in * (degree + 1) for s in saved_shapes)
    y.backward(dy)  # the saved tensors are enough to run the backward
    assert x.grad.shape == x.shape and coeffs.grad.shape == coeffs.shape


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs_give_the_same_result(device):
    x, coeffs, dy = _make_inputs(21, 18, 17, 3, torch.float32, device)
    x_strided = x.t().contiguous().t()  # same values, column-major
    coeffs_strided = coeffs.permute(2, 0, 1).contiguous().permute(1, 2, 0)
    assert not x_strided.is_contiguous() and not coeffs_strided.is_contiguous()
    want = _triton_with_grads(x, coeffs, dy, input_precision="ieee")
    got = _triton_with_grads(x_strided, coeffs_strided, dy, input_precision="ieee")
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    x, coeffs, dy = _make_inputs(0, 5, 7, 2, torch.float32, device)
    y, dx, dc = _triton_with_grads(x, coeffs, dy)
    assert y.shape == (0, 7) and dx.shape == (0, 5)
    assert torch.count_nonzero(dc) == 0  # no rows, no gradient


def test_input_precision_follows_torch_tf32_switch():
    from labkit.kan.triton_chebyshev import resolve_input_precision

    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    try:
        matmul.allow_tf32 = False  # PyTorch's default: near-fp32 accuracy, on tensor cores
        assert resolve_input_precision(torch.float32) == "tf32x3"
        matmul.allow_tf32 = True
        assert resolve_input_precision(torch.float32) == "tf32"
        assert resolve_input_precision(torch.float32, "ieee") == "ieee"  # an explicit choice wins
        assert resolve_input_precision(torch.bfloat16) == "ieee"  # ignored for 16-bit operands
    finally:
        matmul.allow_tf32 = before
    with pytest.raises(ValueError, match="input_precision"):
        resolve_input_precision(torch.float32, "fp64")


_F32 = dict(dtype=torch.float32)
_BAD_INPUTS = {
    "x 1-D": (lambda: (torch.zeros(4, **_F32), torch.zeros(4, 3, 2, **_F32)), ValueError, "x must be 2-D"),
    "x 3-D": (lambda: (torch.zeros(2, 2, 4, **_F32), torch.zeros(4, 3, 2, **_F32)), ValueError, "x.reshape"),
    "coeffs 2-D": (lambda: (torch.zeros(2, 4, **_F32), torch.zeros(4, 3, **_F32)), ValueError, "coeffs must be 3-D"),
    "in mismatch": (lambda: (torch.zeros(2, 5, **_F32), torch.zeros(4, 3, 2, **_F32)), ValueError, "must match"),
    "no degree": (lambda: (torch.zeros(2, 4, **_F32), torch.zeros(4, 3, 0, **_F32)), ValueError, "degree"),
    "dtype mismatch": (
        lambda: (torch.zeros(2, 4, **_F32), torch.zeros(4, 3, 2, dtype=torch.bfloat16)), TypeError, "cast both"),
    "float64": (
        lambda: (torch.zeros(2, 4, dtype=torch.float64), torch.zeros(4, 3, 2, dtype=torch.float64)),
        TypeError, "float64"),
    "device mismatch": (
        lambda: (torch.zeros(2, 4, **_F32), torch.zeros(4, 3, 2, device="meta", **_F32)), ValueError, "one device"),
    "not a tensor": (lambda: ([[0.0] * 4], torch.zeros(4, 3, 2, **_F32)), TypeError, "torch.Tensor"),
}


@pytest.mark.parametrize("case", list(_BAD_INPUTS))
def test_bad_input_raises_a_clear_error(case):
    make_args, error, message = _BAD_INPUTS[case]
    with pytest.raises(error, match=message):
        _chebykan_triton()(*make_args())


def test_cpu_tensors_outside_the_interpreter_are_refused(monkeypatch):
    import labkit.kan.triton_chebyshev as module

    monkeypatch.setattr(module, "interpret_mode", lambda: False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        module.chebykan_triton(torch.zeros(2, 4), torch.zeros(4, 3, 2))


@pytest.mark.skipif(not interpret_mode(), reason="CPU smoke run of the GPU script; on a GPU run the script itself")
def test_gpu_selfcheck_script_runs(capsys):
    from labkit.kan.triton_chebyshev import _selfcheck

    _selfcheck(rows=12, in_features=5, out_features=7, degree=2, fp32_precisions=("tf32x3",), device="cpu")
    printed = capsys.readouterr().out
    assert printed.count("max rel err") == 2  # fp32 and bf16
    assert "Linear+GELU" in printed


@pytest.mark.skipif(not interpret_mode(), reason="CPU smoke run of the GPU script; on a GPU run the script itself")
def test_kernel_profile_script_runs(capsys):
    from labkit.kan.triton_chebyshev import profile_kernels

    profile_kernels(rows=12, in_features=5, out_features=7, degree=2, dtype=torch.float32, device="cpu")
    printed = capsys.readouterr().out
    for kernel in ("forward", "dx", "tanh", "dcoeffs"):
        assert f"{kernel}:" in printed
    assert printed.count("TFLOP/s") == 3


def test_kernels_tune_per_bucket_of_rows_not_per_row_count():
    """A training loop meets several row counts (last partial batch, evaluation): one tuning per
    power-of-two bucket, so the key holds M_BUCKET and not M."""
    from labkit.backend import tuning_bucket
    from labkit.kan import triton_chebyshev as tc

    for kernel in (tc._chebykan_forward_kernel, tc._chebykan_dx_kernel, tc._chebykan_dcoeffs_kernel):
        assert kernel.keys == ["M_BUCKET", "N_IN", "N_OUT", "D"]
    assert [tuning_bucket(m) for m in (1, 1600, 5200, 6400, 8192)] == [1, 2048, 8192, 8192, 8192]
