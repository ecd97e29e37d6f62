"""The fused Triton B-spline KAN kernels against the float64 reference.

On a CPU-only machine the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``);
with CUDA they run on the GPU. Sizes are odd on purpose (37 x 19 -> 23): no dimension
is a multiple of a block size, so every mask is exercised. Inputs are placed inside the
grid, exactly on knots, on the last knot (where every basis is 0) and outside the grid.
"""
import math

import pytest
import torch

from labkit.backend import interpret_mode, triton_available
from labkit.kan.checks import relative_error
from labkit.kan.reference import bspline_kan_reference

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton is not installed")

DEVICES = (["cpu"] if interpret_mode() else []) + (["cuda"] if torch.cuda.is_available() else [])

# Relative error ||got - want|| / ||want|| against the float64 reference computed from the
# *same rounded* inputs. fp32 with exact products only accumulates rounding (~2e-7
# measured): 1e-5 allowed. bf16 rounds every feature, weight product and output to 8
# significant bits (2**-8 ~ 4e-3): 1e-2. fp16 has 11 bits: 2e-3.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}
ROWS, N_IN, N_OUT = 37, 19, 23


def _kernels():
    # Imported lazily so that collecting this file does not import triton on its own.
    from labkit.kan import triton_bspline

    return triton_bspline


def _grid(n_in, grid_size, order, gen, uniform):
    """Per-input knot vectors (n_in, G + 2k + 1) in float32, exactly representable in bf16.

    Uniform: efficient-kan's grid on [-1, 1] extended by k knots each side. Non-uniform:
    every input gets its own range and jittered, sorted knots, like after a grid update.
    """
    n_knots = grid_size + 2 * order + 1
    steps = torch.arange(-order, grid_size + order + 1, dtype=torch.float64) / grid_size  # 0..1 inside
    if uniform:
        knots = (2 * steps - 1).expand(n_in, n_knots)
    else:
        lo = -1.5 + torch.rand(n_in, 1, generator=gen, dtype=torch.float64)
        width = 1.5 + torch.rand(n_in, 1, generator=gen, dtype=torch.float64)
        jitter = 0.35 / grid_size * (torch.rand(n_in, n_knots, generator=gen, dtype=torch.float64) - 0.5)
        knots = (lo + width * (steps + jitter)).sort(dim=1).values
    # Knots that bf16 represents exactly, so that "x on a knot" holds in every dtype.
    return knots.to(torch.bfloat16).float().contiguous()


def _inputs(grid, rows, gen):
    """x inside the grid, plus rows exactly on knots, on the last knot and outside the grid."""
    n_in, n_knots = grid.shape
    lo, hi = grid[:, 0], grid[:, -1]
    x = lo + (hi - lo) * torch.rand(rows, n_in, generator=gen)
    knot_index = torch.randint(0, n_knots, (rows, n_in), generator=gen)
    on_knot = torch.rand(rows, n_in, generator=gen) < 0.2
    x = torch.where(on_knot, grid.gather(1, knot_index.t()).t(), x)
    x[0] = grid[:, -1]  # the last knot: every basis is 0 (half-open intervals)
    x[1] = grid[:, 0]  # the first knot
    x[2] = grid[:, 0] - 0.7  # left of the grid: only the SiLU branch
    x[3] = grid[:, -1] + 0.3  # right of the grid
    return x


def _make_case(dtype, device, grid_size=5, order=3, scaler=True, uniform=False, rows=ROWS, seed=0,
               n_in=N_IN, n_out=N_OUT):
    gen = torch.Generator().manual_seed(seed)
    grid = _grid(n_in, grid_size, order, gen, uniform)
    x = _inputs(grid, rows, gen)
    base_weight = torch.randn(n_out, n_in, generator=gen) / n_in**0.5
    spline_weight = torch.randn(n_out, n_in, grid_size + order, generator=gen) * 0.5 / n_in**0.5
    spline_scaler = 1 + 0.5 * torch.randn(n_out, n_in, generator=gen) if scaler else None
    dy = torch.randn(rows, n_out, generator=gen)
    cast = lambda t: None if t is None else t.to(device, dtype)  # noqa: E731
    return dict(x=cast(x), grid=grid.to(device), base_weight=cast(base_weight), spline_weight=cast(spline_weight),
                spline_scaler=cast(spline_scaler), spline_order=order), cast(dy)


def _differentiable(args):
    return [name for name in ("x", "base_weight", "spline_weight", "spline_scaler") if args[name] is not None]


def _triton_with_grads(args, dy, layer=None):
    """y and the gradients of ``layer`` (default: the fused kernels' bspline_kan_triton)."""
    leaves = {name: args[name].detach().clone().requires_grad_() for name in _differentiable(args)}
    y = (layer or _kernels().bspline_kan_triton)(**{**args, **leaves})
    grads = torch.autograd.grad(y, list(leaves.values()), dy)
    return y.detach(), dict(zip(leaves, grads))


def _reference_with_grads(args, dy, reference=bspline_kan_reference):
    leaves = {name: args[name].detach().double().requires_grad_() for name in _differentiable(args)}
    y = reference(**{**args, **leaves, "grid": args["grid"].double()})
    grads = torch.autograd.grad(y, list(leaves.values()), dy.double())
    return y.detach(), dict(zip(leaves, grads))


def _assert_matches_reference(args, dy, tol, reference=bspline_kan_reference, layer=None):
    y, grads = _triton_with_grads(args, dy, layer)
    y_ref, grads_ref = _reference_with_grads(args, dy, reference)
    assert y.dtype == args["x"].dtype and y.shape == (args["x"].shape[0], args["base_weight"].shape[0])
    errors = {"y": relative_error(y, y_ref)}
    for name, grad in grads.items():
        assert grad.dtype == args[name].dtype and grad.shape == args[name].shape, name
        errors["d_" + name] = relative_error(grad, grads_ref[name])
    assert all(math.isfinite(e) and e < tol for e in errors.values()), errors


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("grid_size", [3, 5])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_forward_and_gradients_match_reference(device, dtype, grid_size, order):
    args, dy = _make_case(dtype, device, grid_size, order)
    _assert_matches_reference(args, dy, TOLERANCE[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_without_spline_scaler(device, dtype):
    args, dy = _make_case(dtype, device, scaler=False)
    _assert_matches_reference(args, dy, TOLERANCE[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("order", [0, 5])
def test_uniform_grid_and_other_orders(device, order):
    # Order 0 (piecewise constant, zero slope) and order 5 (longer Cox-de Boor triangle).
    args, dy = _make_case(torch.float32, device, grid_size=2, order=order, uniform=True)
    _assert_matches_reference(args, dy, TOLERANCE[torch.float32])


def _uniform_case(dtype, device, grid_size, order, rows=ROWS, seed=0):
    """A layer's own grid (labkit.kan.reference.uniform_knots, fp32): the kernels take the
    uniform recursion there. x: inside, exactly on knots, on the ends and outside."""
    from labkit.kan.reference import uniform_knots

    args, dy = _make_case(dtype, device, grid_size, order, rows=rows, seed=seed)
    grid = uniform_knots(N_IN, grid_size, order, dtype=torch.float32).to(device)
    gen = torch.Generator().manual_seed(seed + 1)
    args["x"] = _inputs(grid.cpu(), rows, gen).to(device, dtype)
    args["grid"] = grid
    assert _kernels().knots_for(grid, order).uniform
    return args, dy


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("grid_size, order", [(5, 3), (4, 2), (10, 3), (3, 4)])
def test_uniform_knots_take_the_uniform_recursion(device, dtype, grid_size, order):
    args, dy = _uniform_case(dtype, device, grid_size, order)
    _assert_matches_reference(args, dy, TOLERANCE[dtype])


def test_uniform_step_detects_uniform_grids_only():
    from labkit.kan.reference import uniform_knots

    kernels = _kernels()
    grid = uniform_knots(6, 5, 3, grid_range=(-2.0, 3.0), dtype=torch.float32)
    assert torch.allclose(kernels.uniform_step(grid, 3), torch.ones(6, dtype=torch.float64), rtol=1e-6)  # step 1.0
    bent = grid.clone()
    bent[2, 4] += 1e-3  # one knot moved: that input is not uniform, so the grid is not
    assert kernels.uniform_step(bent, 3) is None
    assert kernels.uniform_step(grid, 1) is None  # orders 0 and 1 always take the exact recursion
    per_input = torch.stack([uniform_knots(1, 5, 3, grid_range=(-r, r), dtype=torch.float32)[0] for r in (1, 2, 3)])
    assert kernels.uniform_step(per_input, 3) is not None  # each input may have its own range


def test_knots_are_cached_until_the_grid_changes():
    from labkit.kan.reference import uniform_knots

    kernels = _kernels()
    grid = uniform_knots(4, 5, 3, dtype=torch.float32)
    first = kernels.knots_for(grid, 3)
    assert kernels.knots_for(grid, 3) is first and first.uniform
    grid[1, 3] += 0.05  # in place, as update_grid does: the version counter moves
    second = kernels.knots_for(grid, 3)
    assert second is not first and not second.uniform
    assert torch.equal(second.table[0, :, 1][: grid.shape[1]], grid[1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("uniform", [False, True])
def test_compute_dtype_keeps_input_and_weight_dtypes(device, uniform):
    """What autocast does through labkit.kan.ops: fp32 x and weights, bf16 products.
    y comes out in bf16, every gradient in its tensor's own dtype (fp32)."""
    args, dy = (_uniform_case if uniform else _make_case)(torch.float32, device, 5, 3)
    leaves = {name: args[name].detach().clone().requires_grad_() for name in _differentiable(args)}
    y = _kernels().bspline_kan_triton(**{**args, **leaves}, compute_dtype=torch.bfloat16)
    grads = dict(zip(leaves, torch.autograd.grad(y, list(leaves.values()), dy.bfloat16())))
    y_ref, grads_ref = _reference_with_grads(args, dy.bfloat16().float())
    assert y.dtype == torch.bfloat16 and relative_error(y, y_ref) < TOLERANCE[torch.bfloat16]
    for name, grad in grads.items():
        assert grad.dtype == torch.float32, name
        assert relative_error(grad, grads_ref[name]) < TOLERANCE[torch.bfloat16], name


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_through_the_dispatcher(device):
    from labkit.kan.ops import bspline_kan

    args, dy = _uniform_case(torch.float32, device, 5, 3)
    x = args["x"].clone().requires_grad_()
    weight = args["spline_weight"].clone().requires_grad_()
    with torch.autocast(device, dtype=torch.bfloat16):
        y = bspline_kan(**{**args, "x": x, "spline_weight": weight}, backend="triton", path="fused")
    assert y.dtype == torch.bfloat16
    dx, dw = torch.autograd.grad(y, [x, weight], dy.bfloat16())
    assert dx.dtype == torch.float32 and dw.dtype == torch.float32
    _, grads_ref = _reference_with_grads(args, dy.bfloat16().float())
    assert relative_error(dx, grads_ref["x"]) < TOLERANCE[torch.bfloat16]
    assert relative_error(dw, grads_ref["spline_weight"]) < TOLERANCE[torch.bfloat16]


@pytest.mark.parametrize("device", DEVICES)
def test_float16(device):
    args, dy = _make_case(torch.float16, device, grid_size=5, order=3)
    _assert_matches_reference(args, dy, TOLERANCE[torch.float16])


@pytest.mark.parametrize("device", DEVICES)
def test_many_blocks_partial_chunks_and_split_rows(device, monkeypatch):
    """Several tiles along every axis, a last chunk past the final basis, and the weight
    gradient split over row slices whose partial sums PyTorch adds."""
    kernels = _kernels()
    # 16-wide blocks: 37 rows, 19 inputs and 23 outputs span two or three blocks each.
    # CHUNK 3 with G + k = 5 bases: the second chunk runs one basis past the end.
    monkeypatch.setattr(kernels, "_INTERPRETER_CONFIG", kernels._config(16, 16, 16, 3, 1, 1))
    monkeypatch.setattr(kernels, "_grad_weight_splits", lambda *shape: 3)
    args, dy = _make_case(torch.float32, device, grid_size=3, order=2)
    _assert_matches_reference(args, dy, TOLERANCE[torch.float32])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiles every autotuning config for the GPU")
@pytest.mark.parametrize("kind", ["bf16", "fp32", "tf32", "tf32x3"])
@pytest.mark.parametrize("kernel", ["forward", "grad_input", "grad_weight"])
def test_every_autotuning_config_on_gpu(kernel, kind, monkeypatch):
    """Each config of one kernel, pinned in turn, at a shape that spans several of its tiles
    (the other two kernels run their small fixed config)."""
    kernels = _kernels()
    configs = {"forward": kernels._FORWARD_CONFIGS, "grad_input": kernels._GRAD_INPUT_CONFIGS,
               "grad_weight": kernels._GRAD_WEIGHT_CONFIGS}[kernel]
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", kind == "tf32")
    dtype = torch.bfloat16 if kind == "bf16" else torch.float32
    # "fp32": exact products on the FMA units (its own config list); "tf32x3": the fp32 default.
    monkeypatch.setenv("LABKIT_KAN_FP32_DOT", "ieee" if kind == "fp32" else "tf32x3")
    tolerance = {"bf16": TOLERANCE[torch.bfloat16], "fp32": TOLERANCE[torch.float32], "tf32": 5e-3,
                 "tf32x3": TOLERANCE[torch.float32]}[kind]
    args, dy = _make_case(dtype, "cuda", rows=300, n_in=70, n_out=150)
    from triton.runtime.errors import OutOfResources

    ran = 0
    for config in configs["fma" if kind == "fp32" else "tensor_cores"]:
        monkeypatch.setitem(kernels.PINNED_CONFIGS, kernel, config)
        try:
            _assert_matches_reference(args, dy, tolerance)
        except OutOfResources:  # e.g. a 16-bit config with fp32 tiles: the autotuner prunes it too
            continue
        except AssertionError as error:
            raise AssertionError(f"{kernel} {config}: {error}") from None
        ran += 1
    assert ran > 0, f"no {kind} config of {kernel} fits the GPU"


@pytest.mark.parametrize("device", DEVICES)
def test_only_some_inputs_need_gradients(device):
    args, dy = _make_case(torch.float32, device, grid_size=3, order=3)
    _, grads_ref = _reference_with_grads(args, dy)
    fn = _kernels().bspline_kan_triton
    weights = {n: args[n].clone().requires_grad_() for n in ("base_weight", "spline_weight", "spline_scaler")}
    y = fn(**{**args, **weights})  # x needs no gradient: grad input kernel skipped
    grads = torch.autograd.grad(y, list(weights.values()), dy)
    for name, grad in zip(weights, grads):
        assert relative_error(grad, grads_ref[name]) < TOLERANCE[torch.float32], name
    x = args["x"].clone().requires_grad_()
    (dx,) = torch.autograd.grad(fn(**{**args, "x": x}), [x], dy)  # weights frozen: grad weight kernel skipped
    assert relative_error(dx, grads_ref["x"]) < TOLERANCE[torch.float32]


@pytest.mark.parametrize("device", DEVICES)
def test_saved_for_backward_grows_only_with_x(device):
    """Doubling the batch grows what is saved for backward by exactly x: the rest is the
    parameters and the small knot table. efficient-kan's formulation (the reference) saves
    (M, in, G + k) intermediates, which the same measurement catches."""
    grid_size, order = 5, 3

    def saved_numel(fn, rows):
        args, _ = _make_case(torch.float32, device, grid_size, order, rows=rows)
        leaves = {n: args[n].clone().requires_grad_() for n in _differentiable(args)}
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            fn(**{**args, **leaves})
        return sum(sizes)

    added_rows = ROWS
    growth = saved_numel(_kernels().bspline_kan_triton, 2 * ROWS) - saved_numel(_kernels().bspline_kan_triton, ROWS)
    assert growth == added_rows * N_IN  # x itself
    reference_growth = saved_numel(bspline_kan_reference, 2 * ROWS) - saved_numel(bspline_kan_reference, ROWS)
    assert reference_growth >= added_rows * N_IN * (grid_size + order)  # the check can fail


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    args, _ = _make_case(torch.float32, device, rows=4)
    x = args["x"][:0].clone().requires_grad_()
    weight = args["spline_weight"].clone().requires_grad_()
    y = _kernels().bspline_kan_triton(**{**args, "x": x, "spline_weight": weight})
    assert y.shape == (0, N_OUT)
    dx, dw = torch.autograd.grad(y.sum(), [x, weight])
    assert dx.shape == x.shape and torch.count_nonzero(dw) == 0


def _safe_reference(x, grid, base_weight, spline_weight, spline_scaler, spline_order):
    """The reference with 0 (not 0/0 = NaN) for a knot span of zero width."""

    def ratio(num, den):
        return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))

    u = x.unsqueeze(-1)
    bases = ((u >= grid[:, :-1]) & (u < grid[:, 1:])).to(x.dtype)
    for k in range(1, spline_order + 1):
        lo, hi = grid[:, : -(k + 1)], grid[:, k + 1:]
        bases = ratio(u - lo, grid[:, k:-1] - lo) * bases[..., :-1] + ratio(hi - u, hi - grid[:, 1:-k]) * bases[..., 1:]
    scaled = spline_weight * (1 if spline_scaler is None else spline_scaler.unsqueeze(-1))
    return torch.nn.functional.silu(x) @ base_weight.t() + bases.flatten(1) @ scaled.flatten(1).t()


@pytest.mark.parametrize("device", DEVICES)
def test_repeated_knot_gives_finite_values(device):
    args, dy = _make_case(torch.float32, device, grid_size=5, order=3, uniform=True)
    grid = args["grid"].clone()
    grid[:, 6] = grid[:, 5]  # an empty span inside the grid
    args["grid"] = grid
    with torch.no_grad():
        assert not torch.isfinite(bspline_kan_reference(**args)).all()  # the plain reference gives NaN
    _assert_matches_reference(args, dy, TOLERANCE[torch.float32], reference=_safe_reference)


@pytest.mark.parametrize("device", DEVICES)
def test_through_the_dispatcher_with_leading_dimensions(device):
    from labkit.kan.ops import bspline_kan

    args, _ = _make_case(torch.float32, device, rows=12)
    x3 = args["x"].reshape(3, 4, N_IN)
    y = bspline_kan(**{**args, "x": x3}, backend="triton", path="fused")
    want = bspline_kan_reference(**{**args, "x": x3.double(), "grid": args["grid"].double(),
                                    **{n: args[n].double() for n in ("base_weight", "spline_weight", "spline_scaler")}})
    assert y.shape == (3, 4, N_OUT) and relative_error(y, want) < TOLERANCE[torch.float32]


def _bad(**changes):
    return changes


BAD_INPUTS = [
    (_bad(x=lambda a: a["x"][None]), ValueError, "x must be 2-D"),
    (_bad(x=lambda a: a["x"].double()), TypeError, "x must be float32, float16 or bfloat16"),
    (_bad(base_weight=lambda a: a["base_weight"].half()), TypeError, "base_weight has dtype"),
    (_bad(grid=lambda a: a["grid"].double()), TypeError, "grid must be float32"),
    (_bad(grid=lambda a: a["grid"][1:]), ValueError, "grid must have shape"),
    (_bad(spline_order=lambda a: 6), ValueError, "needs at least"),
    (_bad(spline_order=lambda a: -1), ValueError, "spline_order must be in"),
    (_bad(spline_order=lambda a: 2.0), TypeError, "spline_order must be an int"),
    (_bad(base_weight=lambda a: a["base_weight"][:, 1:]), ValueError, "base_weight must have shape"),
    (_bad(spline_weight=lambda a: a["spline_weight"][..., 1:]), ValueError, "spline_weight must have shape"),
    (_bad(spline_scaler=lambda a: a["spline_scaler"][1:]), ValueError, "spline_scaler must have shape"),
    (_bad(x=lambda a: a["x"].cpu().numpy()), TypeError, "x must be a torch.Tensor"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("change, error, message", BAD_INPUTS, ids=[m for _, _, m in BAD_INPUTS])
def test_bad_inputs_raise_clear_errors(device, change, error, message):
    args, _ = _make_case(torch.float32, device, grid_size=3, order=2, rows=4)
    ((name, make),) = change.items()
    with pytest.raises(error, match=message):
        _kernels().bspline_kan_triton(**{**args, name: make(args)})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_tensors_on_different_devices_raise():
    args, _ = _make_case(torch.float32, "cuda", grid_size=3, order=2, rows=4)
    with pytest.raises(ValueError, match="one device"):
        _kernels().bspline_kan_triton(**{**args, "grid": args["grid"].cpu()})


def test_kernel_supports():
    kernels = _kernels()
    assert kernels.kernel_supports(5, 3) and kernels.kernel_supports(100, 3) and kernels.kernel_supports(1, 0)
    assert kernels.kernel_supports(5, 3, torch.bfloat16) and not kernels.kernel_supports(5, 3, torch.float64)
    assert not kernels.kernel_supports(0, 3) and not kernels.kernel_supports(5, kernels.MAX_SPLINE_ORDER + 1)


def test_fp32_dot_precision_follows_the_tf32_switch(monkeypatch):
    kernels = _kernels()
    if interpret_mode():
        assert kernels._dot_precision(torch.float32) == "interpreter"
        return
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    assert kernels._dot_precision(torch.float32) == "tf32x3"  # fp32 accuracy on tensor cores
    monkeypatch.setenv("LABKIT_KAN_FP32_DOT", "ieee")
    assert kernels._dot_precision(torch.float32) == "ieee"
    monkeypatch.delenv("LABKIT_KAN_FP32_DOT")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    assert kernels._dot_precision(torch.float32) == "tf32"
    assert kernels._dot_precision(torch.bfloat16) == "ieee"  # ignored for 16-bit operands
