"""Tests of labkit.kan.layers: shapes, the math, grid update/extension, least squares, input checks."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from labkit.kan import reference
from labkit.kan.layers import KAN, ChebyKANLayer, KANLinear, robust_lstsq


def torch_layer(*args, **kwargs) -> KANLinear:
    layer = KANLinear(*args, **kwargs)
    layer.backend = "torch"
    return layer


def rel_change(new: torch.Tensor, old: torch.Tensor) -> float:
    return ((new - old).norm() / old.norm()).item()


def trained_like_layer(seed: int = 0, **kwargs) -> KANLinear:
    """A layer whose splines matter as much as after training (the init keeps them ~0)."""
    torch.manual_seed(seed)
    layer = torch_layer(4, 3, **kwargs)
    with torch.no_grad():
        layer.spline_weight.normal_()
    return layer


# ------------------------------------------------------------------ KANLinear
def test_kanlinear_shapes_and_grid():
    layer = KANLinear(4, 3, grid_size=5, spline_order=3, grid_range=(-1, 1))
    assert layer.base_weight.shape == (3, 4)
    assert layer.spline_weight.shape == (3, 4, 8)
    assert layer.spline_scaler.shape == (3, 4)
    assert layer.grid.shape == (4, 12)
    # Uniform knots of step 0.4, k = 3 of them outside [-1, 1] on each side.
    expected = torch.linspace(-2.2, 2.2, 12)
    torch.testing.assert_close(layer.grid, expected.expand(4, -1))
    assert KANLinear(4, 3, enable_standalone_scale_spline=False).spline_scaler is None


def test_init_splines_are_near_zero():
    torch.manual_seed(0)
    layer = torch_layer(4, 3, grid_size=5)
    x = torch.rand(512, 4) * 2 - 1
    spline = layer._edge_splines(x, layer.spline_weight)
    # Noise of amplitude 0.1 / G / 2 = 0.01 fitted at the knots: the splines stay that small.
    assert spline.abs().max() < 0.05


@pytest.mark.parametrize("lead", [(), (7,), (2, 3, 5)])
def test_forward_matches_reference_for_any_leading_shape(lead):
    torch.manual_seed(0)
    layer = torch_layer(4, 3)
    x = torch.randn(*lead, 4)
    y = layer(x)
    assert y.shape == (*lead, 3)
    flat = reference.bspline_kan_reference(
        x.reshape(-1, 4), layer.grid, layer.base_weight, layer.spline_weight, layer.spline_scaler, 3
    )
    torch.testing.assert_close(y.reshape(-1, 3), flat)


def test_forward_with_another_base_activation():
    torch.manual_seed(0)
    layer = torch_layer(4, 3, base_activation=nn.Tanh)
    x = torch.randn(10, 4)
    basis = reference.bspline_basis(x, layer.grid, 3)  # (10, 4, 8)
    expected = torch.tanh(x) @ layer.base_weight.T + torch.einsum("bij,oij->bo", basis, layer.scaled_spline_weight)
    torch.testing.assert_close(layer(x), expected)


def test_curve2coeff_recovers_known_coefficients():
    torch.manual_seed(0)
    layer = torch_layer(2, 3, grid_size=6).double()
    coeff = torch.randn(3, 2, 9, dtype=torch.float64)
    x = torch.rand(400, 2, dtype=torch.float64) * 2 - 1
    y = torch.einsum("bij,oij->bio", layer.b_splines(x), coeff)
    torch.testing.assert_close(layer.curve2coeff(x, y), coeff)


def test_update_grid_keeps_the_output():
    layer = trained_like_layer()
    x = torch.rand(2048, 4) * 1.6 - 0.8
    before = layer(x)
    layer.update_grid(x)
    assert rel_change(layer(x), before) < 0.05
    # The knots now follow the data: the first interior knot blends min(x) (weight 0.98)
    # with min(x) - margin (weight grid_eps = 0.02).
    torch.testing.assert_close(layer.grid[:, 3], x.min(0).values - 0.02 * 0.01)
    torch.testing.assert_close(layer.grid[:, -4], x.max(0).values + 0.02 * 0.01)


def test_efficient_kan_update_grid_formula_fails_the_same_check():
    """efficient-kan fits the *scaled* splines, stores them unscaled, and scales them again."""
    layer = trained_like_layer()
    x = torch.rand(2048, 4) * 1.6 - 0.8
    before = layer(x)
    with torch.no_grad():
        scaled_target = layer._edge_splines(x, layer.scaled_spline_weight)
        layer.update_grid(x)  # moves the knots the same way
        layer.spline_weight.copy_(layer.curve2coeff(x, scaled_target))  # the buggy refit
    assert rel_change(layer(x), before) > 0.5


def test_update_grid_without_standalone_scaler():
    layer = trained_like_layer(enable_standalone_scale_spline=False)
    x = torch.rand(2048, 4) * 1.6 - 0.8
    before = layer(x)
    layer.update_grid(x)
    assert rel_change(layer(x), before) < 0.05


@pytest.mark.parametrize("new_grid_size", [10, 7, 23])
def test_extend_grid_keeps_the_function(new_grid_size):
    layer = trained_like_layer().double()
    x = torch.rand(2000, 4, dtype=torch.float64) * 1.6 - 0.8
    layer.update_grid(x)  # an adapted (non-uniform) grid, as during training
    before = layer(x)
    old_weight = layer.spline_weight
    layer.extend_grid(new_grid_size, x)
    assert layer.grid_size == new_grid_size
    assert layer.grid.shape == (4, new_grid_size + 7)
    assert layer.spline_weight.shape == (3, 4, new_grid_size + 3)
    assert layer.spline_weight is not old_weight and isinstance(layer.spline_weight, nn.Parameter)
    assert rel_change(layer(x), before) < 0.01


def test_robust_lstsq_on_a_rank_deficient_basis():
    """All samples in one knot interval: only k + 1 = 4 of the G + k = 13 bases are non-zero."""
    layer = torch_layer(1, 1, grid_size=10).double()
    x = torch.linspace(0.01, 0.19, 50, dtype=torch.float64)[:, None]  # inside [0, 0.2)
    basis = layer.b_splines(x)[:, 0]  # (50, 13)
    assert torch.linalg.matrix_rank(basis).item() == 4
    y = torch.sin(3 * x)[:, :, None]  # (50, 1, 1)
    coeff = layer.curve2coeff(x, y)
    assert torch.isfinite(coeff).all()
    fitted = torch.einsum("bj,j->b", basis, coeff[0, 0])
    assert (fitted - y[:, 0, 0]).abs().max() < 1e-4  # a cubic fits sin on a short interval
    # Minimum-norm solution: bases that see no sample get coefficient 0.
    unused = basis.abs().sum(0) == 0
    assert coeff[0, 0, unused].abs().max() < 1e-10
    # The solver hands back the dtype and device of the targets.
    assert robust_lstsq(basis[None].float(), y[None, :, 0].float()).dtype == torch.float32


def test_regularization_loss_is_finite_with_zero_weights():
    layer = torch_layer(4, 3)
    with torch.no_grad():
        layer.spline_weight.zero_()
        layer.spline_weight[0, 0] = 1.0  # one active edge: entropy 0, L1 = mean |w| = 1
    loss = layer.regularization_loss()
    loss.backward()
    assert loss.item() == pytest.approx(1.0)
    assert torch.isfinite(layer.spline_weight.grad).all()
    with torch.no_grad():
        layer.spline_weight.zero_()
    assert layer.regularization_loss().item() == 0.0


def test_regularization_loss_uniform_edges():
    layer = torch_layer(4, 3)
    with torch.no_grad():
        layer.spline_weight.fill_(0.5)
    # 12 edges with mean |w| = 0.5: L1 = 6, entropy of a uniform p over 12 = log 12.
    assert layer.regularization_loss(1.0, 2.0).item() == pytest.approx(6 + 2 * math.log(12))


# ------------------------------------------------------------------------ KAN
def test_kan_forward_update_grid_and_extend():
    torch.manual_seed(0)
    model = KAN([2, 5, 1], grid_size=5).double()
    for layer in model.layers:
        layer.backend = "torch"
    x = torch.rand(1000, 2, dtype=torch.float64) * 2 - 1
    assert model(x).shape == (1000, 1)
    before = model(x)
    model(x, update_grid=True)
    # The hidden layer's grid now follows its own input, not [-1, 1].
    hidden = model.layers[0](x)
    torch.testing.assert_close(model.layers[1].grid[:, 3], hidden.min(0).values - 0.02 * 0.01)
    after_update = model(x)
    assert rel_change(after_update, before) < 0.05
    model.extend_grid(10, x)
    assert all(layer.grid_size == 10 for layer in model.layers)
    assert rel_change(model(x), after_update) < 0.01
    assert torch.isfinite(model.regularization_loss())


# ------------------------------------------------------------------ ChebyKAN
def test_chebykan_shapes_init_and_forward():
    torch.manual_seed(0)
    layer = ChebyKANLayer(64, 32, degree=4)
    layer.backend = "torch"
    assert layer.cheby_coeffs.shape == (64, 32, 5)
    assert layer.cheby_coeffs.std().item() == pytest.approx(1 / (64 * 5), rel=0.05)
    x = torch.randn(2, 3, 64)
    y = layer(x)
    assert y.shape == (2, 3, 32)
    torch.testing.assert_close(y, reference.chebykan_seed_formulation(x, layer.cheby_coeffs), atol=1e-5, rtol=1e-4)


EXTREME_INPUTS = [0.0, 5.0, 9.5, 20.0, 1e4, -1e4]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_chebykan_gradients_finite_where_tanh_saturates(dtype):
    torch.manual_seed(0)
    layer = ChebyKANLayer(6, 3, degree=5).to(dtype)
    layer.backend = "torch"
    x = torch.tensor([EXTREME_INPUTS], dtype=dtype, requires_grad=True)
    try:
        layer(x).sum().backward()
    except RuntimeError as err:  # an op without a CPU kernel for this dtype
        pytest.skip(f"{dtype} not supported on CPU here: {err}")
    assert torch.isfinite(x.grad).all() and torch.isfinite(layer.cheby_coeffs.grad).all()

    # The seed's cos(n acos(tanh x)) gives NaN as soon as tanh rounds to exactly 1.
    x_seed = x.detach().clone().requires_grad_(True)
    reference.chebykan_seed_formulation(x_seed, layer.cheby_coeffs.detach()).sum().backward()
    assert torch.isnan(x_seed.grad[0, 3:]).all()  # 20, 1e4, -1e4 saturate in every dtype


# -------------------------------------------------------------- input checks
LAYERS = [lambda: torch_layer(4, 3), lambda: ChebyKANLayer(4, 3, degree=3)]


@pytest.mark.parametrize("make", LAYERS, ids=["KANLinear", "ChebyKANLayer"])
def test_bad_inputs_are_rejected_with_a_fix(make):
    layer = make()
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 4\)"):
        layer(torch.randn(8, 5))
    with pytest.raises(TypeError, match="floating-point.*x.float"):
        layer(torch.ones(8, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"dtype torch.float64.*layer.to"):
        layer(torch.randn(8, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="NaN or inf.*check_inputs = False"):
        layer(torch.tensor([[0.0, float("nan"), 0.0, 0.0]]))
    # A second device without a GPU: the meta device (shapes only, no data).
    with pytest.raises(ValueError, match=r"x is on meta.*parameters are on cpu.*\.to\("):
        layer(torch.randn(8, 4, device="meta"))


@pytest.mark.parametrize("make", LAYERS, ids=["KANLinear", "ChebyKANLayer"])
def test_check_inputs_switch_skips_the_finite_check(make):
    layer = make()
    layer.check_inputs = False
    y = layer(torch.tensor([[0.0, float("inf"), 0.0, 0.0]]))  # no error; the value is the caller's problem
    assert y.shape == (1, 3)


# -------------------------------------------- the Triton kernels, when present
@pytest.mark.parametrize("kind", ["bspline", "chebyshev"])
def test_triton_backend_matches_torch(kind):
    from labkit.backend import interpret_mode, triton_available

    if not triton_available() or not (torch.cuda.is_available() or interpret_mode()):
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    pytest.importorskip(f"labkit.kan.triton_{kind}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    layer = (KANLinear(8, 4) if kind == "bspline" else ChebyKANLayer(8, 4, degree=4)).to(device)
    x = torch.randn(16, 8, device=device)
    layer.backend = "torch"
    expected = layer(x)
    layer.backend = "triton"
    torch.testing.assert_close(layer(x), expected, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------ dtype of the knots
HALF_DTYPES = [torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=["bf16", "fp16"])
def test_16_bit_layer_keeps_float32_knots(dtype):
    torch.manual_seed(0)
    layer = KANLinear(4, 3, grid_size=5, spline_order=3)
    knots = layer.grid.clone()
    half = KANLinear(4, 3)
    half.load_state_dict(layer.state_dict())
    half.to(dtype)
    assert half.base_weight.dtype == half.spline_weight.dtype == half.spline_scaler.dtype == dtype
    assert half.grid.dtype == torch.float32 and torch.equal(half.grid, knots)
    # Rounded to 16 bits, the same knots would move: that is what the float32 buffer avoids.
    assert not torch.equal(knots.to(dtype).float(), knots)
    # Through .half() / .bfloat16() as well, and in a KAN (children are cast through the same hook).
    assert KANLinear(4, 3).bfloat16().grid.dtype == KANLinear(4, 3).half().grid.dtype == torch.float32
    assert all(lay.grid.dtype == torch.float32 for lay in KAN([2, 3, 1]).to(dtype).layers)


def test_float64_layer_has_float64_knots_from_the_unrounded_ones():
    layer = KANLinear(4, 3)
    knots = layer.grid.clone()
    assert layer.double().grid.dtype == torch.float64
    # float32 -> bf16 -> float64: the knots come back exact, they never went through 16 bits.
    round_trip = KANLinear(4, 3).bfloat16().double()
    assert round_trip.grid.dtype == torch.float64 and torch.equal(round_trip.grid, knots.double())
    assert round_trip.float().grid.dtype == torch.float32


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=["bf16", "fp16"])
def test_16_bit_layer_computes_like_the_float32_layer(dtype, backend):
    """Forward and backward of a 16-bit layer (float32 knots): output in 16 bits, close to fp32.

    ``auto`` is the Triton kernel under TRITON_INTERPRET=1 (or on CUDA), the PyTorch path otherwise.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    layer = KANLinear(8, 4).to(device)
    with torch.no_grad():
        layer.spline_weight.normal_()  # make the splines matter, as after training
    half = KANLinear(8, 4).to(device)
    half.load_state_dict(layer.state_dict())
    half.to(dtype)
    half.backend = layer.backend = backend
    x = torch.rand(32, 8, device=device) * 2 - 1
    y = half(x.to(dtype))
    assert y.dtype == dtype
    expected = layer(x)
    assert rel_change(y.float(), expected) < 2e-2
    y.float().square().sum().backward()
    for p in (half.base_weight, half.spline_weight, half.spline_scaler):
        assert p.grad.dtype == dtype and torch.isfinite(p.grad.float()).all()
    assert half.grid.grad is None and half.grid.dtype == torch.float32


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=["bf16", "fp16"])
def test_16_bit_layer_state_dict_round_trips(dtype):
    torch.manual_seed(0)
    half = KANLinear(4, 3).to(dtype)
    state = half.state_dict()
    assert state["grid"].dtype == torch.float32
    again = KANLinear(4, 3).to(dtype)
    again.load_state_dict(state)
    for name, value in again.state_dict().items():
        assert value.dtype == state[name].dtype and torch.equal(value, state[name]), name
    x = (torch.rand(16, 4) * 2 - 1).to(dtype)
    again.backend = half.backend = "torch"
    assert torch.equal(again(x), half(x))
    # Into a float32 layer: the knots arrive exact.
    full = KANLinear(4, 3)
    full.load_state_dict(state)
    assert torch.equal(full.grid, state["grid"])


def test_16_bit_layer_grid_changes_keep_float32_knots():
    torch.manual_seed(0)
    layer = torch_layer(4, 3).to(torch.bfloat16)
    x = (torch.rand(256, 4) * 1.6 - 0.8).to(torch.bfloat16)
    layer.update_grid(x)
    assert layer.grid.dtype == torch.float32
    # The outer knots sit at min - margin * grid_eps, computed in float32 (0.01 * 0.02 is below bf16's resolution).
    torch.testing.assert_close(layer.grid[:, 3], x.float().min(0).values - 0.02 * 0.01)
    layer.extend_grid(8, x)
    assert layer.grid.dtype == torch.float32 and layer.grid.shape == (4, 8 + 7)
    assert layer.spline_weight.dtype == torch.bfloat16
    assert layer(x).dtype == torch.bfloat16


# ------------------------------------------------ kernel accuracy check
def test_kernel_errors_are_small_and_complete():
    from labkit.backend import interpret_mode, triton_available
    from labkit.kan import checks

    if not triton_available() or not (torch.cuda.is_available() or interpret_mode()):
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = checks.kernel_errors(device, rows=20, d_in=6, d_out=10)  # tiny: the interpreter runs programs in NumPy
    assert [(r.layer, r.path, r.dtype) for r in rows] == [
        (layer, path, dtype) for dtype in ("float32", "bfloat16") for layer in ("B-spline", "Chebyshev")
        for path in ("fused", "gemm")
    ]
    for r in rows:
        tol = 1e-5 if r.dtype == "float32" else 2e-2
        # Above 0: the kernels are really compared with something that differs (float64 vs fp32/bf16).
        assert 0 < r.output < tol and 0 < r.worst_gradient < tol, r


def test_kernel_errors_default_size_compiles_one_config():
    """The defaults stay below the size where the B-spline kernels start to autotune, and the
    Chebyshev kernels' autotuning is off inside the check, and restored afterwards (even on an error)."""
    import inspect

    pytest.importorskip("triton")
    from labkit.kan import checks, triton_bspline, triton_chebyshev

    defaults = {k: v.default for k, v in inspect.signature(checks.kernel_errors).parameters.items()}
    features = defaults["grid_size"] + defaults["spline_order"] + 1  # SiLU + G + k B-splines per input
    macs = defaults["rows"] * defaults["d_in"] * defaults["d_out"] * features
    assert macs < triton_bspline._SMALL_PROBLEM_MACS

    before = triton_chebyshev.AUTOTUNE
    with pytest.raises(RuntimeError, match="inside"):
        with checks._chebyshev_without_autotuning():
            assert triton_chebyshev.AUTOTUNE is False
            raise RuntimeError("inside")
    assert triton_chebyshev.AUTOTUNE == before


def test_kernel_errors_rejects_empty_sizes():
    from labkit.kan import checks

    with pytest.raises(ValueError, match="rows, d_in and d_out must be >= 1"):
        checks.kernel_errors("cpu", rows=0)
    with pytest.raises(ValueError, match="paths must be"):
        checks.kernel_errors("cpu", paths=("split",))


# ------------------------------------------------ which Triton path a call takes
def test_auto_path_picks_by_size():
    """``path="auto"`` (the default) takes the fused kernels for small layers, the split-GEMM path
    for large ones (the threshold is the kan-sweeps crossover), and keeps explicit choices."""
    from labkit.kan import ops

    assert ops.DEFAULT_BSPLINE_PATH == ops.DEFAULT_CHEBYSHEV_PATH == "auto"
    small = torch.empty(128, 50, 192, device="meta")  # chapter 2's ViT: 6,400 tokens, 192 -> 193
    large = torch.empty(4096, 768, device="meta")  # the kan suite's headline shape, 768 -> 3072
    assert ops.resolve_path(None, "auto", small, 192, 193) == "fused"
    assert ops.resolve_path(None, "auto", large, 768, 3072) == "gemm"
    rows = ops.GEMM_MIN_MACS // (768 * 3072) + 1  # just above the threshold
    assert ops.resolve_path("auto", "fused", torch.empty(rows, 768, device="meta"), 768, 3072) == "gemm"
    assert ops.resolve_path("auto", "fused", torch.empty(rows - 2, 768, device="meta"), 768, 3072) == "fused"
    assert ops.resolve_path("auto", "fused", torch.empty(0, 768, device="meta"), 768, 3072) == "fused"
    assert ops.resolve_path("fused", "auto", large, 768, 3072) == "fused"
    assert ops.resolve_path(None, "gemm", small, 192, 193) == "gemm"
    with pytest.raises(ValueError, match="path must be one of"):
        ops.resolve_path("cublas", "auto", small, 192, 193)


def test_layers_pass_their_path_attribute():
    """``layer.path`` reaches labkit.kan.ops (a wrong name fails there, before any kernel runs)."""
    from labkit.kan import ChebyKANLayer, KANLinear

    for layer in (KANLinear(3, 2), ChebyKANLayer(3, 2, 3)):
        assert layer.path is None
        layer(torch.rand(4, 3))
        layer.path = "fused"
        layer(torch.rand(4, 3))  # on the CPU the reference runs whatever the path
        layer.path = "cublas"
        with pytest.raises(ValueError, match="path must be one of"):
            layer(torch.rand(4, 3))
