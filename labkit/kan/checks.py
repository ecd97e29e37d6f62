"""Accuracy check of the Triton kernels against the float64 PyTorch reference.

:func:`kernel_errors` runs both KAN layers forward and backward through each Triton path
(:data:`labkit.kan.ops.PATHS`: the fused kernels and the split-GEMM kernels, in fp32 and in
bf16) and once through :mod:`labkit.kan.reference` in float64, and reports the relative error
of the output and of the worst gradient.

The default sizes are chosen to compile *one* kernel configuration per kernel: above
``triton_bspline._SMALL_PROBLEM_MACS`` multiply-adds the B-spline kernels autotune (tens of
seconds of compiling on an H100), and the Chebyshev kernels autotune at every size unless
their ``AUTOTUNE`` switch is off, which :func:`kernel_errors` does for its own calls.
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch

from labkit.kan import ops
from labkit.kan.layers import ChebyKANLayer, KANLinear


class KernelError(NamedTuple):
    """One row of :func:`kernel_errors`: relative errors (L2 norm of the difference / norm of the reference)."""

    layer: str  # "B-spline" or "Chebyshev"
    path: str  # "fused" or "gemm" (labkit.kan.ops.PATHS)
    dtype: str  # "float32" or "bfloat16": the dtype the kernels computed in
    output: float  # error of the layer output
    worst_gradient: float  # largest error among the gradients of x and of every weight


@contextlib.contextmanager
def _chebyshev_without_autotuning():
    """Let the Chebyshev kernels compile only the first config that fits (``LABKIT_AUTOTUNE=0``).

    The switch is read when a new problem shape is first launched, so flipping it here
    affects exactly the shapes first seen inside the block.
    """
    from labkit.kan import triton_chebyshev

    previous = triton_chebyshev.AUTOTUNE  # an AttributeError here means the switch was renamed
    triton_chebyshev.AUTOTUNE = False
    try:
        yield
    finally:
        triton_chebyshev.AUTOTUNE = previous


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want|| in float64 (the kernels' tests and self-check use this one measure)."""
    return ((got.double() - want).norm() / want.norm().clamp_min(1e-30)).item()


def _errors_of(fn, x: torch.Tensor, params: list[torch.Tensor], dtype: torch.dtype) -> tuple[float, float]:
    """Run ``fn(x, params, backend)`` on the kernels in ``dtype`` and on the float64 reference.

    ``x`` is already in ``dtype`` (the reference sees the same rounded values); the weights are
    cast from fp32, so their rounding to 16 bits counts as kernel error, as it would in a model.
    Returns (output error, worst gradient error).
    """
    results = {}
    for backend, cast in (("triton", dtype), ("torch", torch.float64)):
        xx = x.detach().to(cast).requires_grad_()
        pp = [p.detach().to(cast).requires_grad_() for p in params]
        y = fn(xx, pp, backend)
        y.backward(torch.ones_like(y))
        results[backend] = [y, xx.grad, *(p.grad for p in pp)]
    errors = [relative_error(got, want) for got, want in zip(results["triton"], results["torch"])]
    return errors[0], max(errors[1:])


def kernel_errors(
    device: torch.device | str,
    rows: int = 256,
    d_in: int = 96,
    d_out: int = 160,
    grid_size: int = 5,
    spline_order: int = 3,
    degree: int = 3,
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16),
    seed: int = 1,
    paths: tuple[str, ...] = ops.PATHS,
) -> list[KernelError]:
    """Max relative error of the Triton kernels against the float64 reference: output and every gradient.

    Inputs ``x`` (rows, d_in) are uniform on [-1.2, 1.2] (inside the B-spline grid [-1, 1]
    and a little beyond); the weights are those of freshly initialised ``KANLinear(d_in, d_out)``
    and ``ChebyKANLayer(d_in, d_out, degree)``. The backward pass uses ``dy = 1``.

    ``device`` must be CUDA, or CPU with ``TRITON_INTERPRET=1`` set before triton was imported
    (then keep the sizes tiny: the interpreter runs every program in NumPy).
    Returns one :class:`KernelError` per (dtype, layer, path), dtypes in the outer loop, paths
    in the inner one.
    """
    device = torch.device(device)
    if min(rows, d_in, d_out) < 1:
        raise ValueError(f"rows, d_in and d_out must be >= 1, got {rows}, {d_in}, {d_out}")
    unknown = [p for p in paths if p not in ops.PATHS]
    if unknown or not paths:
        raise ValueError(f"paths must be a non-empty tuple of {ops.PATHS}, got {paths!r}")
    results = []
    with _chebyshev_without_autotuning():
        for dtype in dtypes:
            torch.manual_seed(seed)
            x = (torch.rand(rows, d_in, device=device) * 2.4 - 1.2).to(dtype)
            kan_layer = KANLinear(d_in, d_out, grid_size=grid_size, spline_order=spline_order).to(device)
            cheb_layer = ChebyKANLayer(d_in, d_out, degree).to(device)

            def bspline(xx, p, backend, path):
                # The kernels take float32 knots whatever the dtype; the reference computes in float64.
                knots = kan_layer.grid if backend == "triton" else kan_layer.grid.double()
                return ops.bspline_kan(xx, knots, *p, spline_order, backend=backend, path=path)

            def chebyshev(xx, p, backend, path):
                return ops.chebykan(xx, *p, backend=backend, path=path)

            cases = {
                "B-spline": (bspline, [kan_layer.base_weight, kan_layer.spline_weight, kan_layer.spline_scaler]),
                "Chebyshev": (chebyshev, [cheb_layer.cheby_coeffs]),
            }
            for name, (fn, params) in cases.items():
                for path in paths:
                    e_out, e_grad = _errors_of(lambda xx, pp, backend: fn(xx, pp, backend, path), x, params, dtype)
                    results.append(KernelError(name, path, str(dtype).removeprefix("torch."), e_out, e_grad))
    return results
