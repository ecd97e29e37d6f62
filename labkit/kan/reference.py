"""Plain-PyTorch formulations of the two KAN layers.

These functions are the *specification* the Triton kernels are tested against.
They are written for clarity, not speed: every intermediate is materialised.

Shapes used throughout
----------------------
x        (..., in)                       activations, any leading shape
grid     (in, G + 2k + 1)                per-input knot vector (k = spline order)
basis    (..., in, G + k)                B-spline bases B_j(x_i)
base_weight   (out, in)                  weight of the SiLU branch
spline_weight (out, in, G + k)           B-spline coefficients
spline_scaler (out, in) or None          standalone per-edge scale
coeffs   (in, out, degree + 1)           Chebyshev coefficients
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def uniform_knots(
    in_features: int,
    grid_size: int,
    spline_order: int,
    grid_range: tuple[float, float] = (-1.0, 1.0),
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Knot vectors (in_features, G + 2k + 1): G uniform intervals on ``grid_range``, extended
    by k knots on each side so that every point of the range is covered by k + 1 full bases."""
    lo, hi = grid_range
    step = (hi - lo) / grid_size
    index = torch.arange(-spline_order, grid_size + spline_order + 1, dtype=dtype or torch.get_default_dtype(),
                         device=device)
    return (lo + step * index).expand(in_features, -1).contiguous()


def bspline_basis(x: torch.Tensor, grid: torch.Tensor, spline_order: int) -> torch.Tensor:
    """B-spline bases of order ``spline_order`` on a per-input knot vector.

    Cox-de Boor recursion. Order-0 bases use half-open intervals ``[t_j, t_{j+1})``,
    so a point on the last knot (or outside the extended grid) has all bases 0.
    The recursion runs in the wider of x's and the knots' dtypes (a 16-bit layer keeps
    float32 knots) and the result is rounded once, to x's dtype.
    """
    dtype = x.dtype
    x = x.unsqueeze(-1)  # (..., in, 1) broadcasts against grid rows (in, n_knots)
    bases = ((x >= grid[:, :-1]) & (x < grid[:, 1:])).to(x.dtype)
    for k in range(1, spline_order + 1):
        lo, hi = grid[:, : -(k + 1)], grid[:, k + 1 :]
        rising = (x - lo) / (grid[:, k:-1] - lo)
        falling = (hi - x) / (hi - grid[:, 1:-k])
        bases = rising * bases[..., :-1] + falling * bases[..., 1:]
    return bases.to(dtype)


def scaled_spline_weight(spline_weight: torch.Tensor, spline_scaler: torch.Tensor | None) -> torch.Tensor:
    """Spline coefficients with the standalone scaler folded in: (out, in, G + k)."""
    if spline_scaler is None:
        return spline_weight
    return spline_weight * spline_scaler.unsqueeze(-1)


def bspline_kan_reference(
    x: torch.Tensor,
    grid: torch.Tensor,
    base_weight: torch.Tensor,
    spline_weight: torch.Tensor,
    spline_scaler: torch.Tensor | None,
    spline_order: int,
) -> torch.Tensor:
    """``silu(x) @ base_weight.T + B(x).flatten @ (spline_weight * scaler).T``, x of shape (..., in)."""
    out_features = base_weight.shape[0]
    base = F.linear(F.silu(x), base_weight)
    basis = bspline_basis(x, grid, spline_order)  # (..., in, G+k)
    w = scaled_spline_weight(spline_weight, spline_scaler).reshape(out_features, -1)
    spline = F.linear(basis.flatten(-2), w)
    return base + spline


def chebyshev_basis(x: torch.Tensor, degree: int) -> torch.Tensor:
    """``T_0..T_degree`` of ``tanh(x)``, stacked on a new last axis: (..., in, degree + 1).

    Uses the three-term recurrence ``T_n = 2 t T_{n-1} - T_{n-2}`` instead of the
    seed's ``cos(n * acos(t))``. Both are the same polynomials, but ``acos`` has an
    infinite derivative at ``t = +-1`` and ``tanh`` rounds to exactly 1 for
    ``|x| >= 9.01`` in fp32 (``>= 3.46`` in bf16), which turns the gradient into NaN.
    The recurrence only multiplies and adds, so its gradient is finite everywhere.
    """
    t = torch.tanh(x)
    terms = [torch.ones_like(t)]
    if degree >= 1:
        terms.append(t)
    for _ in range(2, degree + 1):
        terms.append(2 * t * terms[-1] - terms[-2])
    return torch.stack(terms, dim=-1)


def chebykan_reference(x: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """``y[..., o] = sum_{i,d} T_d(tanh x_i) * coeffs[i, o, d]`` for x of shape (..., in)."""
    degree = coeffs.shape[-1] - 1
    basis = chebyshev_basis(x, degree)  # (..., in, D+1)
    return torch.einsum("...id,iod->...o", basis, coeffs)


def chebykan_seed_formulation(x: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """The seed's ``cos(arange * acos(tanh x))`` form, kept only as a benchmark baseline.

    Its gradient is NaN once ``tanh`` saturates (see :func:`chebyshev_basis`).
    """
    degree = coeffs.shape[-1] - 1
    arange = torch.arange(degree + 1, device=x.device, dtype=x.dtype)
    theta = torch.tanh(x).unsqueeze(-1).expand(*x.shape, degree + 1).acos()
    return torch.einsum("...id,iod->...o", (theta * arange).cos(), coeffs)
