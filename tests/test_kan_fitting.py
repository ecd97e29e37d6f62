"""Tests of labkit.kan.fitting: datasets, slope fitting, and the quick grid-extension run."""
from __future__ import annotations

import math

import pytest
import torch

from labkit.kan import fitting


@pytest.fixture(autouse=True)
def small_problem_settings(monkeypatch):
    # Speed: the reference path, not the Triton interpreter, and one thread: these tensors
    # are tiny, and on a busy 2-core machine two threads were 40x slower (3.7 vs 144 ms a step).
    monkeypatch.setenv("LABKIT_BACKEND", "torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(fitting.TOY_FUNCTIONS))
def test_make_dataset_shapes_range_and_seed(name):
    target = fitting.TOY_FUNCTIONS[name]
    data = fitting.make_dataset(name, n_train=100, n_test=50, seed=3, dtype=torch.float32)
    assert data.train_x.shape == (100, target.dim) and data.train_y.shape == (100, 1)
    assert data.test_x.shape == (50, target.dim) and data.test_y.shape == (50, 1)
    assert data.train_x.dtype == torch.float32
    assert data.train_x.min() >= -1 and data.train_x.max() <= 1
    torch.testing.assert_close(data.train_y[:, 0], target.fn(data.train_x.double()).float())
    again = fitting.make_dataset(name, n_train=100, n_test=50, seed=3, dtype=torch.float32)
    assert torch.equal(again.test_x, data.test_x)
    assert not torch.equal(fitting.make_dataset(name, 100, 50, seed=4).train_x.float(), data.train_x)


def test_toy_function_values():
    x = torch.tensor([[0.5, 1.0]], dtype=torch.float64)
    assert fitting.TOY_FUNCTIONS["exp_sin"].fn(x).item() == pytest.approx(math.exp(2.0))
    assert fitting.TOY_FUNCTIONS["xy"].fn(x).item() == pytest.approx(0.5)
    assert fitting.TOY_FUNCTIONS["bessel"].fn(torch.zeros(1, 1)).item() == pytest.approx(1.0)
    with pytest.raises(KeyError, match="unknown toy function"):
        fitting.make_dataset("sinc")


def test_fit_slope_on_synthetic_power_laws():
    grids = [3, 5, 10, 20, 50]
    assert fitting.fit_slope(grids, [2.0 * g**-4 for g in grids]) == pytest.approx(-4.0)
    torch.manual_seed(0)
    noisy = [g**-3 * math.exp(0.1 * torch.randn(()).item()) for g in grids]
    assert fitting.fit_slope(grids, noisy) == pytest.approx(-3.0, abs=0.2)
    with pytest.raises(ValueError, match="two or more"):
        fitting.fit_slope([5], [1e-3])


def test_quick_grid_extension_reaches_its_target():
    """The quick profile: [2, 1, 1] on exp(sin(pi x) + y^2), grids 3 -> 5 -> 10, 20 LBFGS steps each."""
    data = fitting.make_dataset("exp_sin", 1000, 1000, seed=0)
    result = fitting.grid_extension([2, 1, 1], (3, 5, 10), 20, data, progress=False)
    assert [row["G"] for row in result.rows] == [3, 5, 10]
    assert [row["params"] for row in result.rows] == [24, 30, 45]  # 3 edges x (G + k + 2)
    assert len(result.train_curve) == len(result.test_curve) == 60 and result.grid_starts == [0, 20, 40]
    test_rmse = [row["test_rmse"] for row in result.rows]
    assert test_rmse[-1] <= 2e-3  # measured 4.6e-4 (pykan's docs: 3.3e-4)
    assert test_rmse[0] > test_rmse[1] > test_rmse[2]  # the staircase goes down
    # The float64 fit needs float64 knots: the grid follows the model's cast to float64.
    assert all(layer.grid.dtype == torch.float64 for layer in result.model.layers)


def test_baselines_build_and_train():
    data = fitting.make_dataset("exp_sin", 200, 200, seed=0)
    widths = fitting.mlp_matching(100, d_in=2)
    mlp = fitting.make_mlp(widths).double()
    assert abs(fitting.n_params(mlp) - 100) <= 20
    history = fitting.fit_adam(mlp, data, steps=30, lr=1e-2, progress=False)
    assert len(history.train_rmse) == 30 and history.train_rmse[-1] < history.train_rmse[0]

    rows, histories = fitting.chebykan_degree_sweep([2, 1, 1], [2, 4], 3, data, progress=False)
    assert [row["degree"] for row in rows] == [2, 4]
    assert [row["params"] for row in rows] == [2 * 3 + 3, 2 * 5 + 5]
    assert all(math.isfinite(r) for h in histories.values() for r in h.test_rmse)
    assert histories[4].train_rmse[-1] < fitting.rmse(
        fitting.make_chebykan([2, 1, 1], 4).double(), data.train_x, data.train_y
    )
