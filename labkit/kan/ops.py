"""Functional entry points of the KAN layers: pick the Triton kernel or the PyTorch reference.

Both functions take ``x`` of any leading shape ``(..., in)``. Under autocast the
operands are cast to the autocast dtype here, once, so that the kernels only ever see
one dtype; the kernels accumulate in fp32 either way.
"""
from __future__ import annotations

import torch

from labkit.backend import resolve_backend
from labkit.kan import reference


# The kernels compute in fp32/fp16/bf16; float64 (used for high-accuracy function
# fitting, where fp32 bottoms out near 1e-6 RMSE) always takes the PyTorch path.
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

#: Each layer's two Triton paths: "fused" (labkit.kan.triton_bspline / triton_chebyshev: features
#: made inside the GEMM loop) and "gemm" (labkit.kan.gemm_bspline / gemm_chebyshev: feature
#: kernels around cuBLAS). ``path="auto"`` picks one of them by size (:func:`resolve_path`).
PATHS = ("fused", "gemm")
#: ``"auto"`` takes the split-GEMM path from this many multiply-adds of the equivalent Linear
#: (rows x in x out) up, the fused kernels below. Why there: in the ``kan-sweeps`` suite (H100,
#: bf16, one forward + backward call, 2026-12-06) the fused kernels were faster at 4096 x 192 -> 768
#: (0.6e9: ChebyKAN 0.57 against 0.69 ms, B-spline 0.96 against 1.00 ms), the two tied at
#: 4096 x 384 -> 1536 (2.4e9: 0.61 / 0.62 and 0.89 / 0.84 ms), and from 4096 x 768 -> 3072 (9.7e9)
#: up the split-GEMM path won (0.67 against 0.99 ms, 1.19 against 2.50 ms). Small layers are
#: bound by the host, where the fused path's fewer launches win; large ones by the GEMMs, which
#: cuBLAS runs faster than the fused kernels' tl.dot.
GEMM_MIN_MACS = 2 * 10**9
#: The path ``bspline_kan`` / ``chebykan`` takes when none is named.
DEFAULT_BSPLINE_PATH = "auto"
DEFAULT_CHEBYSHEV_PATH = "auto"


def resolve_path(path: str | None, default: str, x: torch.Tensor, d_in: int, d_out: int) -> str:
    """``"fused"`` or ``"gemm"`` for a layer ``d_in -> d_out`` applied to ``x`` (..., d_in).

    ``path`` None means ``default``; ``"auto"`` compares the layer's multiply-adds with
    :data:`GEMM_MIN_MACS`.
    """
    path = default if path is None else path
    if path == "auto":
        rows = x.numel() // d_in if d_in else 0
        return "gemm" if rows * d_in * d_out >= GEMM_MIN_MACS else "fused"
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, 'auto' or None, got {path!r}")
    return path


def _backend(backend: str, x: torch.Tensor, *tensors: torch.Tensor) -> str:
    if backend == "auto" and x.dtype not in KERNEL_DTYPES:
        return "torch"
    return resolve_backend(backend, x, *tensors)


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    device_type = x.device.type
    if device_type in ("cuda", "cpu") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _flatten(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...] | None]:
    """``x`` as (rows, in) and its leading shape; None for a 2-D ``x``, which needs no reshape
    either way (each reshape is a few microseconds of host time per call)."""
    if x.dim() == 2:
        return x, None
    return x.reshape(-1, x.shape[-1]), x.shape[:-1]


def _unflatten(y: torch.Tensor, lead: tuple[int, ...] | None) -> torch.Tensor:
    return y if lead is None else y.reshape(*lead, y.shape[-1])


def chebykan(x: torch.Tensor, coeffs: torch.Tensor, backend: str = "auto", path: str | None = None) -> torch.Tensor:
    """Chebyshev-KAN layer: ``sum_{i,d} T_d(tanh x_i) coeffs[i, o, d]``.

    ``path`` picks the Triton implementation (:data:`PATHS`, or ``"auto"``: by size; None:
    :data:`DEFAULT_CHEBYSHEV_PATH`).
    """
    path = resolve_path(path, DEFAULT_CHEBYSHEV_PATH, x, coeffs.shape[0], coeffs.shape[1])
    if _backend(backend, x, coeffs) == "torch":
        return reference.chebykan_reference(x, coeffs)
    if path == "gemm":
        from labkit.kan.gemm_chebyshev import chebykan_gemm as chebykan_triton
    else:
        from labkit.kan.triton_chebyshev import chebykan_triton

    dtype = _autocast_dtype(x)
    x2d, lead = _flatten(x)
    if dtype is not None:
        # No casts: the kernels read x and coeffs as they are and compute in ``dtype``; the
        # gradients come back in the dtypes of x and coeffs.
        with torch.autocast(x.device.type, enabled=False):
            y = chebykan_triton(x2d, coeffs, compute_dtype=dtype)
    else:
        y = chebykan_triton(x2d, coeffs)
    return _unflatten(y, lead)


def bspline_kan(
    x: torch.Tensor,
    grid: torch.Tensor,
    base_weight: torch.Tensor,
    spline_weight: torch.Tensor,
    spline_scaler: torch.Tensor | None,
    spline_order: int,
    backend: str = "auto",
    path: str | None = None,
) -> torch.Tensor:
    """B-spline KAN layer with a SiLU base branch (efficient-kan semantics).

    ``path`` picks the Triton implementation (:data:`PATHS`, or ``"auto"``: by size; None:
    :data:`DEFAULT_BSPLINE_PATH`).
    """
    path = resolve_path(path, DEFAULT_BSPLINE_PATH, x, base_weight.shape[1], base_weight.shape[0])
    tensors = [grid, base_weight, spline_weight] + ([spline_scaler] if spline_scaler is not None else [])
    if _backend(backend, x, *tensors) == "torch":
        return reference.bspline_kan_reference(x, grid, base_weight, spline_weight, spline_scaler, spline_order)
    if path == "gemm":
        from labkit.kan.gemm_bspline import bspline_kan_gemm as bspline_kan_triton
    else:
        from labkit.kan.triton_bspline import bspline_kan_triton

    dtype = _autocast_dtype(x)
    x2d, lead = _flatten(x)
    if dtype is not None:
        # No casts here: the kernels read x and the weights in their own dtypes, compute in
        # ``dtype`` and return the gradients in the dtypes of x and the weights (fewer passes
        # over memory than casting first). The knots stay fp32: bf16 knots would move by 0.4%.
        with torch.autocast(x.device.type, enabled=False):
            weights = (base_weight, spline_weight, spline_scaler)
            if len({t.dtype for t in weights if t is not None}) > 1:  # mixed weight dtypes: unify first
                weights = tuple(None if t is None else t.to(dtype) for t in weights)
            y = bspline_kan_triton(x2d, grid, *weights, spline_order, compute_dtype=dtype)
    else:
        y = bspline_kan_triton(x2d, grid, base_weight, spline_weight, spline_scaler, spline_order)
    return _unflatten(y, lead)
