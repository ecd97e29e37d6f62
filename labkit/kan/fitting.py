"""Function fitting with KANs, after the KAN paper (Liu et al. 2024, sections 2.4 and 3.1).

* :data:`TOY_FUNCTIONS` and :func:`make_dataset`: the paper's toy targets, inputs uniform on [-1, 1]^d.
* :func:`fit_lbfgs` / :func:`fit_adam`: full-batch training that records train/test RMSE per step.
* :func:`grid_extension`: train a KAN at the first grid size, then refine the grid
  (``KAN.extend_grid``) and keep training; the loss curve is the paper's staircase.
* :func:`fit_slope`: the scaling exponent, the slope of log RMSE against log G (theory: -(k+1) = -4).
* :func:`chebykan_degree_sweep`, :func:`make_mlp`, :func:`mlp_matching`: the baselines.

One LBFGS "step" is one ``optimizer.step(closure)`` call, i.e. up to ``max_iter`` (20)
LBFGS iterations, as in pykan; the paper's "200 steps per grid" counts these.

These problems are tiny (1000 points, tens of parameters): on a CPU, one thread
(``torch.set_num_threads(1)``) is as fast as several, and much faster when the cores are
shared (measured on a busy 2-core machine: 3.7 ms against 144 ms per loss evaluation).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from labkit.kan.layers import KAN, ChebyKANLayer


# ------------------------------------------------------------------ the targets
@dataclass(frozen=True)
class ToyFunction:
    """A target ``fn``: x (n, dim) -> (n,), with the ``formula`` and the KAN ``shape`` that represents it."""

    dim: int
    fn: Callable[[torch.Tensor], torch.Tensor]
    formula: str
    shape: tuple[int, ...]


TOY_FUNCTIONS: dict[str, ToyFunction] = {
    "bessel": ToyFunction(1, lambda x: torch.special.bessel_j0(20 * x[:, 0]), "J0(20 x)", (1, 1)),
    "exp_sin": ToyFunction(
        2, lambda x: torch.exp(torch.sin(math.pi * x[:, 0]) + x[:, 1] ** 2), "exp(sin(pi x) + y^2)", (2, 1, 1)
    ),
    "xy": ToyFunction(2, lambda x: x[:, 0] * x[:, 1], "x y", (2, 2, 1)),
    "exp_sin_4d": ToyFunction(
        4,
        lambda x: torch.exp(
            0.5 * (torch.sin(math.pi * (x[:, 0] ** 2 + x[:, 1] ** 2))
                   + torch.sin(math.pi * (x[:, 2] ** 2 + x[:, 3] ** 2)))
        ),
        "exp((sin(pi (x1^2 + x2^2)) + sin(pi (x3^2 + x4^2))) / 2)",
        (4, 2, 1, 1),
    ),
}


@dataclass
class RegressionData:
    """Train and test split: inputs (n, dim), targets (n, 1)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def to(self, *args, **kwargs) -> "RegressionData":
        return RegressionData(*(t.to(*args, **kwargs) for t in (self.train_x, self.train_y, self.test_x, self.test_y)))


def make_dataset(
    name: str, n_train: int = 1000, n_test: int = 1000, seed: int = 0, dtype: torch.dtype = torch.float64
) -> RegressionData:
    """Inputs uniform on [-1, 1]^dim, targets from ``TOY_FUNCTIONS[name]``, drawn from a private generator."""
    if name not in TOY_FUNCTIONS:
        raise KeyError(f"unknown toy function {name!r}; choose one of {sorted(TOY_FUNCTIONS)}")
    target = TOY_FUNCTIONS[name]
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n_train + n_test, target.dim, generator=gen, dtype=torch.float64) * 2 - 1
    y = target.fn(x)[:, None]  # evaluated in float64, then cast
    x, y = x.to(dtype), y.to(dtype)
    return RegressionData(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


# ------------------------------------------------------------------- training
@dataclass
class FitHistory:
    """RMSE after each step (train and test), and the wall time of the run in seconds."""

    train_rmse: list[float] = field(default_factory=list)
    test_rmse: list[float] = field(default_factory=list)
    seconds: float = 0.0


@torch.no_grad()
def rmse(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return torch.sqrt(torch.mean((model(x) - y) ** 2)).item()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _record(history: FitHistory, model: nn.Module, data: RegressionData, bar) -> None:
    history.train_rmse.append(rmse(model, data.train_x, data.train_y))
    history.test_rmse.append(rmse(model, data.test_x, data.test_y))
    bar.set_postfix(train=f"{history.train_rmse[-1]:.2e}", test=f"{history.test_rmse[-1]:.2e}")


def fit_lbfgs(
    model: nn.Module,
    data: RegressionData,
    steps: int,
    lr: float = 1.0,
    max_iter: int = 20,
    history_size: int = 10,
    grid_update_every: int = 5,
    stop_grid_update_step: int = 50,
    reg: float = 0.0,
    progress: bool = True,
) -> FitHistory:
    """Full-batch LBFGS on the mean squared error (strong-Wolfe line search).

    For a :class:`KAN`, the grids follow the data during the first steps (as pykan does):
    every ``grid_update_every`` steps before ``stop_grid_update_step`` the model runs
    ``model(train_x, update_grid=True)``; the LBFGS memory is then reset, because the
    grid update changes what the parameters mean. ``reg`` weights
    ``model.regularization_loss()`` when the model has one.

    The loss is divided by its own value at the last (re)start of the optimizer, which
    restarts whenever the loss has dropped 100-fold. Why: ``torch.optim.LBFGS`` only keeps
    a curvature pair when ``y.s > 1e-10``, an absolute threshold; at RMSE ~1e-5 the MSE
    is ~1e-10, no pair is ever kept and LBFGS degrades to gradient descent (pykan ships
    its own LBFGS with that threshold lowered for the same reason).
    """
    params = list(model.parameters())
    can_update_grid = isinstance(model, KAN)

    def new_optimizer():
        # Tolerances at 0: stop on ``steps``, never on a tiny gradient (we want the float64 floor).
        return torch.optim.LBFGS(
            params, lr=lr, max_iter=max_iter, history_size=history_size, line_search_fn="strong_wolfe",
            tolerance_grad=0.0, tolerance_change=0.0,
        )

    def closure():
        optimizer.zero_grad()
        loss = torch.mean((model(data.train_x) - data.train_y) ** 2)
        if reg:
            loss = loss + reg * model.regularization_loss()
        loss = loss / loss_scale
        loss.backward()
        return loss

    history, start = FitHistory(), time.perf_counter()
    train_mse = rmse(model, data.train_x, data.train_y) ** 2
    loss_scale, optimizer = max(train_mse, 1e-300), new_optimizer()
    bar = tqdm(range(steps), desc="LBFGS", disable=not progress, leave=False)
    for step in bar:
        restart = train_mse < 1e-2 * loss_scale
        if can_update_grid and step % grid_update_every == 0 and step < stop_grid_update_step:
            with torch.no_grad():
                model(data.train_x, update_grid=True)
            train_mse, restart = rmse(model, data.train_x, data.train_y) ** 2, True
        if restart:
            loss_scale, optimizer = max(train_mse, 1e-300), new_optimizer()
        optimizer.step(closure)
        _record(history, model, data, bar)
        train_mse = history.train_rmse[-1] ** 2
    history.seconds = time.perf_counter() - start
    return history


def fit_adam(
    model: nn.Module, data: RegressionData, steps: int, lr: float = 1e-3, progress: bool = True
) -> FitHistory:
    """Full-batch Adam on the mean squared error, one gradient step per recorded step."""
    optimizer, history, start = torch.optim.Adam(model.parameters(), lr=lr), FitHistory(), time.perf_counter()
    bar = tqdm(range(steps), desc="Adam", disable=not progress, leave=False)
    for _ in bar:
        optimizer.zero_grad()
        torch.mean((model(data.train_x) - data.train_y) ** 2).backward()
        optimizer.step()
        _record(history, model, data, bar)
    history.seconds = time.perf_counter() - start
    return history


# -------------------------------------------------------------- grid extension
@torch.no_grad()
def init_like_pykan(model: KAN, noise: float = 0.1) -> KAN:
    """pykan's start for function fitting: base weights ``1/sqrt(in) + U(-noise, noise)``
    (all positive), ``spline_scaler = 1``; the splines keep their near-zero init.

    Why: with efficient-kan's kaiming init (random signs), a ``[2, 1, 1]`` KAN on
    exp(sin(pi x) + y^2) stalls at test RMSE ~0.6 for 3 of 4 seeds; with this init all
    seeds reach ~1.5e-2 at G = 3 in 20 LBFGS steps, pykan's documented value.
    """
    for layer in model.layers:
        layer.base_weight.uniform_(-noise, noise).add_(1 / math.sqrt(layer.in_features))
        if layer.spline_scaler is not None:
            layer.spline_scaler.fill_(1.0)
    return model


@dataclass
class GridExtensionResult:
    """One row per grid size, the concatenated curves, the step where each grid starts, the model."""

    rows: list[dict]  # {"G", "params", "train_rmse", "test_rmse", "seconds"}
    train_curve: list[float]
    test_curve: list[float]
    grid_starts: list[int]
    model: KAN


def grid_extension(
    model_widths: Sequence[int],
    grids: Sequence[int],
    steps_per_grid: int,
    data: RegressionData,
    seed: int = 0,
    spline_order: int = 3,
    grid_eps: float = 1.0,
    pykan_init: bool = True,
    later_stop_grid_update_step: int = 1,
    progress: bool = True,
    **fit_kwargs,
) -> GridExtensionResult:
    """Train a KAN at ``grids[0]``, then for each next G: ``extend_grid(G)`` and train again.

    ``fit_kwargs`` go to :func:`fit_lbfgs`. At the first grid the knots follow the data
    every few steps (``stop_grid_update_step``, default 50); after each extension they are
    updated during the first ``later_stop_grid_update_step`` steps only (1: once, right
    away, which re-centres the grid on layer inputs that drifted; 0: never).
    ``grid_eps=1.0`` makes the knots uniform on the data range (KANLinear's default, 0.02,
    puts them at sample quantiles). Both choices were measured on [2, 1, 1] with
    exp(sin(pi x) + y^2), grids 3 -> 20, 200 steps (test RMSE at G = 20):

    ========================================  ========
    quantile knots, update for 50 steps        1.4e-4
    quantile knots, no update after G = 3      2.5e-4  (inputs drift off the grid)
    uniform knots, update for 50 steps         3.9e-5
    uniform knots, update once per extension   2.1e-5  (the default)
    ========================================  ========

    ``pykan_init`` applies :func:`init_like_pykan`. The model takes the data's dtype and
    device, and the layers' default ``backend="auto"``.
    """
    torch.manual_seed(seed)
    model = KAN(model_widths, grid_size=grids[0], spline_order=spline_order, grid_eps=grid_eps)
    if pykan_init:
        init_like_pykan(model)
    model.to(device=data.train_x.device, dtype=data.train_x.dtype)
    rows, train_curve, test_curve, grid_starts = [], [], [], []
    for i, g in enumerate(grids):
        kwargs = dict(fit_kwargs)
        if i > 0:
            model.extend_grid(g, data.train_x)
            kwargs["stop_grid_update_step"] = later_stop_grid_update_step
        grid_starts.append(len(train_curve))
        history = fit_lbfgs(model, data, steps_per_grid, progress=progress, **kwargs)
        train_curve += history.train_rmse
        test_curve += history.test_rmse
        rows.append(dict(G=g, params=n_params(model), train_rmse=history.train_rmse[-1],
                         test_rmse=history.test_rmse[-1], seconds=history.seconds))
    return GridExtensionResult(rows, train_curve, test_curve, grid_starts, model)


def fit_slope(grids: Sequence[float], rmses: Sequence[float]) -> float:
    """Least-squares slope of log(RMSE) against log(G); about -(k+1) = -4 when the KAN theory holds."""
    if len(grids) != len(rmses) or len(grids) < 2:
        raise ValueError(f"need two or more (G, RMSE) pairs of equal length, got {len(grids)} and {len(rmses)}")
    log_g = torch.log(torch.as_tensor(grids, dtype=torch.float64))
    log_r = torch.log(torch.as_tensor(rmses, dtype=torch.float64))
    log_g = log_g - log_g.mean()
    return float((log_g * (log_r - log_r.mean())).sum() / (log_g**2).sum())


# ------------------------------------------------------------------ baselines
def make_chebykan(widths: Sequence[int], degree: int, input_scale: float = 1.0) -> nn.Sequential:
    """A stack of :class:`ChebyKANLayer`. With ``input_scale`` the data in [-1, 1] is stretched
    first so that ``tanh`` uses more of the Chebyshev domain [-1, 1] (tanh(1) is only 0.76)."""
    layers: list[nn.Module] = [_Scale(input_scale)] if input_scale != 1.0 else []
    layers += [ChebyKANLayer(a, b, degree) for a, b in zip(widths[:-1], widths[1:])]
    return nn.Sequential(*layers)


class _Scale(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def chebykan_degree_sweep(
    widths: Sequence[int],
    degrees: Sequence[int],
    steps: int,
    data: RegressionData,
    seed: int = 0,
    input_scale: float = 1.0,
    progress: bool = True,
    **fit_kwargs,
) -> tuple[list[dict], dict[int, FitHistory]]:
    """One ChebyKAN per degree, each trained from scratch with LBFGS: (rows, histories by degree)."""
    rows, histories = [], {}
    for degree in degrees:
        torch.manual_seed(seed)
        model = make_chebykan(widths, degree, input_scale).to(device=data.train_x.device, dtype=data.train_x.dtype)
        history = fit_lbfgs(model, data, steps, progress=progress, **fit_kwargs)
        histories[degree] = history
        rows.append(dict(degree=degree, params=n_params(model), train_rmse=history.train_rmse[-1],
                         test_rmse=history.test_rmse[-1], seconds=history.seconds))
    return rows, histories


def make_mlp(widths: Sequence[int], activation: type[nn.Module] = nn.SiLU) -> nn.Sequential:
    """Linear layers of the given widths with ``activation`` between them."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def mlp_matching(n_target: int, d_in: int, d_out: int = 1, depth: int = 2) -> list[int]:
    """Widths ``[d_in, h, ..., h, d_out]`` (``depth`` hidden layers), parameter count closest to ``n_target``."""
    def count(h: int) -> int:
        return (d_in + 1) * h + (depth - 1) * (h + 1) * h + (h + 1) * d_out

    best = min(range(1, 4096), key=lambda h: abs(count(h) - n_target))
    return [d_in] + [best] * depth + [d_out]
