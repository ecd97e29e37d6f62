"""KAN layers as ``torch.nn`` modules: the B-spline ``KANLinear``/``KAN`` and ``ChebyKANLayer``.

``KANLinear`` follows efficient-kan's formulation and parameter names: every edge
``i -> o`` carries ``phi(x) = w_b * silu(x) + s * sum_j c_j B_j(x)`` with

* ``base_weight``   (out, in)          ``w_b``
* ``spline_weight`` (out, in, G + k)   ``c_j`` (unscaled)
* ``spline_scaler`` (out, in) or None  ``s`` (absent when not standalone)
* buffer ``grid``   (in, G + 2k + 1)   knots, one row per input feature; float32 even in a
  16-bit layer (see ``KANLinear._apply``), float64 in a float64 layer

Differences from efficient-kan, each for a measured reason (see the tests):

* ``update_grid`` refits the *unscaled* spline, so the scaler is not applied twice
  (efficient-kan's version changes the layer output by ~100%).
* every least-squares fit runs in float64 on the CPU with the rank-revealing ``gelsd``
  driver; CUDA's ``gels`` returns garbage when a knot interval holds no sample.
* ``extend_grid`` implements the KAN paper's grid extension (efficient-kan has none).
* the entropy term of ``regularization_loss`` is finite when an edge's weights are 0.

The forward pass goes through :mod:`labkit.kan.ops`, which picks the Triton kernels or
the PyTorch reference (``layer.backend = "auto" | "triton" | "torch"``) and, for Triton, the
fused or the split-GEMM path by the layer's size (:data:`labkit.kan.ops.GEMM_MIN_MACS`).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from labkit.kan import ops, reference

HALF_DTYPES = (torch.float16, torch.bfloat16)  # too coarse for knots: a 16-bit layer keeps float32 ones


def check_layer_input(x: torch.Tensor, in_features: int, like: torch.Tensor, check_finite: bool) -> None:
    """Reject inputs a KAN layer cannot use, with a message that names the fix.

    ``like`` is one of the layer's parameters: ``x`` must live on its device. The
    non-finite check reads the whole tensor back to the host (a GPU sync); layers
    skip it when their ``check_inputs`` attribute is False.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (..., {in_features}), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}; convert it with x.float()")
    if x.dim() == 0 or x.shape[-1] != in_features:
        raise ValueError(
            f"x must have shape (..., {in_features}) (last dim = the layer's in_features), "
            f"got {tuple(x.shape)}; reshape x or build the layer with in_features={x.shape[-1] if x.dim() else 1}"
        )
    if x.device != like.device:
        raise ValueError(
            f"x is on {x.device} but the layer's parameters are on {like.device}; "
            f"move one of them, e.g. x.to('{like.device}') or layer.to('{x.device}')"
        )
    autocast = x.device.type in ("cuda", "cpu") and torch.is_autocast_enabled(x.device.type)
    if x.dtype != like.dtype and not autocast:
        raise TypeError(
            f"x has dtype {x.dtype} but the layer's parameters are {like.dtype}; "
            f"use x.to({like.dtype}) or layer.to({x.dtype}) (or run under torch.autocast)"
        )
    if check_finite and not torch.isfinite(x).all():
        raise ValueError(
            "x contains NaN or inf; fix the values upstream (set layer.check_inputs = False to skip "
            "this check, which costs a GPU sync)"
        )


def robust_lstsq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched least squares ``argmin_z |a z - b|``, safe for rank-deficient ``a``.

    a (batch, m, n), b (batch, m, p) -> (batch, n, p), on ``b``'s device and dtype.
    Solved in float64 on the CPU through the SVD-based pseudo-inverse: the minimum-norm
    solution when some B-spline bases see no sample (CUDA's ``lstsq`` only offers ``gels``,
    which assumes full rank and fails silently otherwise). ``pinv(a) @ b`` gives what LAPACK's
    ``gelsd`` gives (to 1e-14 here) but factors each small ``a`` once for all ``p``
    right-hand sides: a 768 -> 3072 layer's spline initialisation takes 0.14 s instead of
    2.1 s with ``gelsd`` on one thread, and 85 s with ``gelsd`` on two busy cores, where its
    threads oversubscribe the CPU.
    """
    solution = torch.linalg.pinv(a.detach().double().cpu()) @ b.detach().double().cpu()
    return solution.to(device=b.device, dtype=b.dtype)


class KANLinear(nn.Module):
    """B-spline KAN layer, (..., in_features) -> (..., out_features).

    ``grid_size`` G intervals on ``grid_range``, splines of order k = ``spline_order``.
    Attributes ``backend`` ("auto", "triton", "torch"), ``path`` (the Triton path: "fused",
    "gemm", "auto" or None for :data:`labkit.kan.ops.DEFAULT_BSPLINE_PATH`, which is "auto": by
    size) and ``check_inputs`` (False skips the NaN/inf check of every input, which costs a GPU
    sync) can be set at any time.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        grid_size: int = 5,
        spline_order: int = 3,
        scale_noise: float = 0.1,
        scale_base: float = 1.0,
        scale_spline: float = 1.0,
        enable_standalone_scale_spline: bool = True,
        base_activation: type[nn.Module] = nn.SiLU,
        grid_eps: float = 0.02,
        grid_range: Sequence[float] = (-1, 1),
    ):
        super().__init__()
        if grid_size < 1 or spline_order < 0:
            raise ValueError(f"need grid_size >= 1 and spline_order >= 0, got {grid_size}, {spline_order}")
        self.in_features, self.out_features = in_features, out_features
        self.grid_size, self.spline_order = grid_size, spline_order
        self.grid_eps = grid_eps
        self.backend = "auto"
        self.path = None
        self.check_inputs = True

        self.register_buffer("grid", reference.uniform_knots(in_features, grid_size, spline_order, tuple(grid_range)))

        self.base_weight = nn.Parameter(torch.empty(out_features, in_features))
        self.spline_weight = nn.Parameter(torch.empty(out_features, in_features, grid_size + spline_order))
        self.spline_scaler = (
            nn.Parameter(torch.empty(out_features, in_features)) if enable_standalone_scale_spline else None
        )
        self.base_activation = base_activation()
        self._reset_parameters(scale_noise, scale_base, scale_spline)

    def _reset_parameters(self, scale_noise: float, scale_base: float, scale_spline: float) -> None:
        nn.init.kaiming_uniform_(self.base_weight, a=math.sqrt(5) * scale_base)
        with torch.no_grad():
            # The KAN paper starts every spline near zero: fit small uniform noise at the
            # G + 1 interior knots (underdetermined: robust_lstsq returns the minimum-norm fit).
            k = self.spline_order
            points = self.grid.T[k:-k]  # (G+1, in)
            noise = torch.rand(points.shape[0], self.in_features, self.out_features) - 0.5
            noise *= scale_noise / self.grid_size
            coeff = self.curve2coeff(points, noise)
            self.spline_weight.copy_(coeff if self.spline_scaler is not None else coeff * scale_spline)
        if self.spline_scaler is not None:
            nn.init.kaiming_uniform_(self.spline_scaler, a=math.sqrt(5) * scale_spline)

    # ------------------------------------------------------------ dtype of the knots
    def _apply(self, fn, recurse=True):
        """Keep the knots in float32 when the layer is cast to 16 bits.

        Every ``.to()``, ``.half()``, ``.bfloat16()``, ``.cuda()`` ... goes through ``_apply``.
        The knots follow the layer's device, and float32 or float64 like the parameters, but
        bf16 would move them by up to 0.4% (bf16 keeps 8 significant bits): the splines would
        sit on a different grid than the one they were fitted on. The Triton kernels take the
        knots in float32 whatever the activations' dtype.
        """
        knots = self.grid
        super()._apply(fn, recurse)
        if self.grid.dtype in HALF_DTYPES:
            self.grid = knots.to(device=self.grid.device, dtype=torch.float32)  # from the unrounded knots
        return self

    # ----------------------------------------------------------------- the math
    def b_splines(self, x: torch.Tensor) -> torch.Tensor:
        """B-spline bases of x: (..., in) -> (..., in, G + k), in x's dtype."""
        check_layer_input(x, self.in_features, self.base_weight, self.check_inputs)
        return reference.bspline_basis(x, self.grid, self.spline_order)

    def curve2coeff(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Coefficients whose splines pass closest to the samples, per edge.

        x (B, in), y (B, in, out) -> (out, in, G + k), in ``y``'s dtype and device.
        """
        if x.dim() != 2 or y.shape != (x.shape[0], self.in_features, self.out_features):
            raise ValueError(
                f"curve2coeff needs x (B, {self.in_features}) and y (B, {self.in_features}, {self.out_features}), "
                f"got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        basis = self.b_splines(x).transpose(0, 1)  # (in, B, G+k): one least-squares problem per input
        solution = robust_lstsq(basis, y.transpose(0, 1))  # (in, G+k, out)
        return solution.permute(2, 0, 1).contiguous()

    @property
    def scaled_spline_weight(self) -> torch.Tensor:
        """``spline_weight * spline_scaler``: (out, in, G + k)."""
        return reference.scaled_spline_weight(self.spline_weight, self.spline_scaler)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out)."""
        check_layer_input(x, self.in_features, self.base_weight, self.check_inputs)
        if isinstance(self.base_activation, nn.SiLU):  # the formula the kernels implement
            return ops.bspline_kan(
                x, self.grid, self.base_weight, self.spline_weight, self.spline_scaler,
                self.spline_order, backend=self.backend, path=self.path,
            )
        basis = reference.bspline_basis(x, self.grid, self.spline_order).flatten(-2)
        spline = F.linear(basis, self.scaled_spline_weight.reshape(self.out_features, -1))
        return F.linear(self.base_activation(x), self.base_weight) + spline

    def _edge_splines(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Each edge's spline ``sum_j weight[o,i,j] B_j(x_i)``: x (B, in) -> (B, in, out)."""
        return torch.einsum("bij,oij->bio", self.b_splines(x), weight)

    def _flat_input(self, x: torch.Tensor) -> torch.Tensor:
        check_layer_input(x, self.in_features, self.base_weight, self.check_inputs)
        return x.detach().reshape(-1, self.in_features)

    # ------------------------------------------------------------ grid changes
    @torch.no_grad()
    def update_grid(self, x: torch.Tensor, margin: float = 0.01) -> None:
        """Move the knots to the data and refit the splines so the layer's output is kept.

        x (..., in). The new interior knots blend sample quantiles (weight
        ``1 - grid_eps``) with a uniform grid over ``[min - margin, max + margin]``.

        The refit targets the *unscaled* splines ``sum_j c_j B_j``: since least squares
        is linear, that equals fitting the scaled output and dividing by
        ``spline_scaler``, without dividing by scalers that may be ~0.
        """
        x = self._flat_input(x)
        target = self._edge_splines(x, self.spline_weight)  # (B, in, out)

        # The knots are computed in the grid's dtype (float32 in a 16-bit layer), not rounded to x's.
        x_sorted = torch.sort(x.to(self.grid.dtype), dim=0).values
        quantile_rows = torch.linspace(0, x.shape[0] - 1, self.grid_size + 1, device=x.device).long()
        adaptive = x_sorted[quantile_rows]  # (G+1, in)
        step = (x_sorted[-1] - x_sorted[0] + 2 * margin) / self.grid_size  # (in,)
        knot_index = torch.arange(self.grid_size + 1, device=x.device, dtype=x_sorted.dtype)[:, None]
        uniform = x_sorted[0] - margin + step * knot_index
        interior = self.grid_eps * uniform + (1 - self.grid_eps) * adaptive
        self.grid.copy_(self._extend_knots(interior.T, step))
        self.spline_weight.copy_(self.curve2coeff(x, target))

    def _extend_knots(self, interior: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """Add k knots spaced ``step`` (in,) on each side: (in, G+1) -> (in, G+2k+1)."""
        k = self.spline_order
        offsets = step[:, None] * torch.arange(1, k + 1, device=step.device, dtype=step.dtype)
        return torch.cat([interior[:, :1] - offsets.flip(1), interior, interior[:, -1:] + offsets], dim=1)

    @torch.no_grad()
    def extend_grid(self, new_grid_size: int, x: torch.Tensor) -> None:
        """Grid extension (KAN paper eq. 2.16): refine to ``new_grid_size`` intervals, same function.

        x (..., in): the samples on which the old splines are fitted by the new ones.
        The new interior knots interpolate the old ones linearly (so an adapted grid
        stays adapted, and when ``new_grid_size`` is a multiple of ``grid_size`` the old
        spline space is contained in the new one and the fit is exact).

        ``spline_weight`` becomes a new Parameter of shape (out, in, new_grid_size + k):
        rebuild any optimizer that held the old one.
        """
        if new_grid_size < 1:
            raise ValueError(f"new_grid_size must be >= 1, got {new_grid_size}")
        x = self._flat_input(x)
        target = self._edge_splines(x, self.spline_weight)  # (B, in, out), unscaled

        old = self.grid[:, self.spline_order : -self.spline_order]  # (in, G+1) interior knots
        position = torch.linspace(0, self.grid_size, new_grid_size + 1, device=old.device, dtype=torch.float64)
        left = position.floor().long().clamp(max=self.grid_size - 1)
        frac = (position - left).to(old.dtype)
        interior = old[:, left] * (1 - frac) + old[:, left + 1] * frac  # (in, G'+1)
        step = (interior[:, -1] - interior[:, 0]) / new_grid_size

        self.grid = self._extend_knots(interior, step)  # a buffer of the new shape
        self.grid_size = new_grid_size
        self.spline_weight = nn.Parameter(self.curve2coeff(x, target))

    # ---------------------------------------------------------- regularisation
    def regularization_loss(self, regularize_activation: float = 1.0, regularize_entropy: float = 1.0) -> torch.Tensor:
        """efficient-kan's cheap *proxy* of the KAN paper's sparsity penalty (a scalar).

        The paper penalises ``|phi|_1`` = mean over samples of |phi(x_s)| per edge, plus
        the entropy of those norms. This proxy uses the mean |spline_weight| per edge
        instead: no data needed, but it ignores the base branch and the scaler. The
        entropy is computed with ``log(p)`` clamped, so edges with all-zero weights
        (p = 0) give 0, not NaN.
        """
        l1_per_edge = self.spline_weight.abs().mean(-1)  # (out, in)
        l1 = l1_per_edge.sum()
        p = l1_per_edge / l1.clamp_min(torch.finfo(l1.dtype).tiny)
        entropy = -(p * p.clamp_min(1e-12).log()).sum()
        return regularize_activation * l1 + regularize_entropy * entropy

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, grid_size={self.grid_size}, "
            f"spline_order={self.spline_order}, standalone_scaler={self.spline_scaler is not None}"
        )


class KAN(nn.Module):
    """A stack of ``KANLinear`` layers of widths ``layers_hidden``, e.g. [2, 5, 1].

    The keyword arguments are passed to every ``KANLinear``.
    """

    def __init__(self, layers_hidden: Sequence[int], grid_size: int = 5, spline_order: int = 3, **layer_kwargs):
        super().__init__()
        if len(layers_hidden) < 2:
            raise ValueError(f"layers_hidden needs at least an input and an output width, got {layers_hidden}")
        self.layers = nn.ModuleList(
            KANLinear(n_in, n_out, grid_size=grid_size, spline_order=spline_order, **layer_kwargs)
            for n_in, n_out in zip(layers_hidden[:-1], layers_hidden[1:])
        )

    def forward(self, x: torch.Tensor, update_grid: bool = False) -> torch.Tensor:
        """(..., in) -> (..., out). ``update_grid=True`` first fits each layer's grid to its own input."""
        for layer in self.layers:
            if update_grid:
                layer.update_grid(x)
            x = layer(x)
        return x

    @torch.no_grad()
    def extend_grid(self, new_grid_size: int, x: torch.Tensor) -> None:
        """Grid extension of every layer, each on its own input; rebuild optimizers afterwards."""
        for layer in self.layers:
            layer.extend_grid(new_grid_size, x)
            x = layer(x)

    def regularization_loss(self, regularize_activation: float = 1.0, regularize_entropy: float = 1.0) -> torch.Tensor:
        """Sum of the layers' proxy penalties (see ``KANLinear.regularization_loss``)."""
        return sum(layer.regularization_loss(regularize_activation, regularize_entropy) for layer in self.layers)


class ChebyKANLayer(nn.Module):
    """Chebyshev KAN layer: ``y[..., o] = sum_{i,d} T_d(tanh x_i) cheby_coeffs[i, o, d]``.

    x (..., input_dim) -> (..., output_dim). ``tanh`` maps the input into [-1, 1], the
    domain of the Chebyshev polynomials; inputs of more than a few units saturate it
    (zero gradient), so normalise the inputs of a stack (LayerNorm, or scale the data).
    The PyTorch path uses the recurrence ``T_n = 2t T_{n-1} - T_{n-2}``: finite gradients
    everywhere, unlike ``cos(n acos(tanh x))``. Attributes ``backend``, ``path`` (None:
    :data:`labkit.kan.ops.DEFAULT_CHEBYSHEV_PATH`) and ``check_inputs`` work as in :class:`KANLinear`.
    """

    def __init__(self, input_dim: int, output_dim: int, degree: int):
        super().__init__()
        if degree < 0:
            raise ValueError(f"degree must be >= 0, got {degree}")
        self.input_dim, self.output_dim, self.degree = input_dim, output_dim, degree
        self.backend = "auto"
        self.path = None
        self.check_inputs = True
        self.cheby_coeffs = nn.Parameter(torch.empty(input_dim, output_dim, degree + 1))
        nn.init.normal_(self.cheby_coeffs, mean=0.0, std=1 / (input_dim * (degree + 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_layer_input(x, self.input_dim, self.cheby_coeffs, self.check_inputs)
        return ops.chebykan(x, self.cheby_coeffs, backend=self.backend, path=self.path)

    def extra_repr(self) -> str:
        return f"input_dim={self.input_dim}, output_dim={self.output_dim}, degree={self.degree}"
