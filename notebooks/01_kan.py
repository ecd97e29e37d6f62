# ---
# jupyter:
#   accelerator: GPU
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: accelerator
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Kolmogorov-Arnold networks: B-splines, Chebyshev polynomials and fused kernels
#
# A multilayer perceptron puts a fixed nonlinearity on every *node* and a learnable scalar on
# every *edge*. A Kolmogorov-Arnold network (KAN) {cite}`liu2024kan` does the opposite: every
# edge $i \to j$ carries a learnable univariate function $\phi_{j,i}$ and the nodes only sum,
#
# $$
# y_j = \sum_{i=1}^{n_\text{in}} \phi_{j,i}(x_i).
# $$
#
# This chapter follows the first half of the design document `001` (Traditional Chinese in
# the original): a B-spline `KANLinear` layer in the reformulation popularised by
# *efficient-kan*, and a Chebyshev layer (`ChebyKANLayer`) that the document switches to
# "because training was still painfully slow". We build both in `labkit.kan`, fix two bugs the
# document carries over, write fused Triton kernels for both layers, measure them against the
# document's formulation and public packages, and reproduce the KAN paper's grid-extension
# scaling law.

# %%
import sys

if "google.colab" in sys.modules:  # on Colab: install the labkit version this book was built from
    # %pip install -q "labkit @ git+https://github.com/labkit-book/labkit@v0.1.0"
    pass

# %%
import labkit

P = labkit.start(seed=0)
cfg = P.kan

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
import torch

from labkit.kan import ChebyKANLayer, KAN, KANLinear, fitting, reference

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
plt.rcParams.update({"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3})

# %% [markdown]
# ## Two bases for the edge functions
#
# **B-splines.** On a knot vector $t_0 < \dots < t_{G+2k}$ ($G$ intervals on the grid range,
# extended by $k$ knots on each side) the order-$k$ B-splines follow the Cox-de Boor recursion
#
# $$
# B_{m,0}(x) = [t_m \le x < t_{m+1}], \qquad
# B_{m,k}(x) = \frac{x - t_m}{t_{m+k} - t_m} B_{m,k-1}(x) + \frac{t_{m+k+1} - x}{t_{m+k+1} - t_{m+1}} B_{m+1,k-1}(x).
# $$
#
# Each edge function is $\phi(x) = w_b\,\mathrm{silu}(x) + s \sum_{m=0}^{G+k-1} c_m B_{m,k}(x)$:
# a SiLU "base" branch plus a spline with $G + k$ coefficients and a scale $s$.
#
# **Chebyshev polynomials.** The Chebyshev layer squashes the input with $\tanh$ and uses
# $T_0, \dots, T_D$ on $[-1, 1]$: $\phi(x) = \sum_{d=0}^{D} c_d T_d(\tanh x)$, with
# $T_0 = 1$, $T_1 = t$, $T_{n} = 2t\,T_{n-1} - T_{n-2}$.
#
# B-splines are local (each $x$ touches only $k+1$ of them), Chebyshev polynomials are
# global. Both make a layer *linear in its coefficients*: the whole layer is a feature
# expansion of each input followed by one matrix product. That observation is what the fast
# implementations, ours included, are built on.

# %%
x_plot = torch.linspace(-1.5, 1.5, 601)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
G, k = 5, 3
knots = reference.uniform_knots(1, G, k)  # (1 input, G + 2k + 1 knots): G intervals on [-1, 1], k more each side
bases = reference.bspline_basis(x_plot[:, None], knots, k)[:, 0, :]
axes[0].plot(x_plot, bases)
axes[0].set_title(f"cubic B-splines, G={G}: {G + k} bases")
cheb = reference.chebyshev_basis(x_plot[:, None], 5)[:, 0, :]
axes[1].plot(x_plot, cheb)
axes[1].set_title(r"Chebyshev $T_0..T_5$ of $\tanh x$")
for ax in axes:
    ax.set_xlabel("x")
fig.tight_layout()

# %% [markdown]
# Run the notebook (Colab or Jupyter) to change grid size, spline order, degree and grid
# range interactively; the static page shows the widgets without a kernel behind them.

# %%
import ipywidgets as widgets


def show_bases(grid_size=5, spline_order=3, degree=5, grid_lo=-1.0, grid_hi=1.0):
    knots = reference.uniform_knots(1, grid_size, spline_order, (grid_lo, grid_hi))
    xs = torch.linspace(grid_lo - 0.5, grid_hi + 0.5, 500)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3))
    axes[0].plot(xs, reference.bspline_basis(xs[:, None], knots, spline_order)[:, 0, :])
    axes[0].vlines(knots[0], 0, 1, colors="grey", linestyles=":", linewidth=0.8)
    axes[0].set_title(f"B-splines: G={grid_size}, k={spline_order}")
    axes[1].plot(xs, reference.chebyshev_basis(xs[:, None], degree)[:, 0, :])
    axes[1].set_title(f"Chebyshev of tanh, degree {degree}")
    plt.show()


widgets.interact(
    show_bases,
    grid_size=widgets.IntSlider(5, 1, 20),
    spline_order=widgets.IntSlider(3, 0, 5),
    degree=widgets.IntSlider(5, 0, 12),
    grid_lo=widgets.FloatSlider(-1.0, min=-3, max=0, step=0.25),
    grid_hi=widgets.FloatSlider(1.0, min=0.25, max=3, step=0.25),
);

# %% [markdown]
# ## The layers, and what they cost in parameters
#
# `KANLinear` keeps the document's (and efficient-kan's) parameter names and shapes:
# `base_weight` (out, in), `spline_weight` (out, in, G+k), `spline_scaler` (out, in) and the
# knot buffer `grid` (in, G+2k+1). `ChebyKANLayer` has one tensor, `cheby_coeffs`
# (in, out, D+1). A B-spline edge therefore costs $G + k + 2$ numbers (10 at G=5, k=3)
# against 1 for a linear layer; a Chebyshev edge costs $D + 1$.

# %%
shape = (768, 3072)
layers = {
    "Linear": torch.nn.Linear(*shape),
    "KANLinear G=5 k=3": KANLinear(*shape, grid_size=5, spline_order=3),
    "ChebyKANLayer degree 3": ChebyKANLayer(*shape, degree=3),
}
counts = {name: sum(p.numel() for p in layer.parameters()) for name, layer in layers.items()}
for name, n in counts.items():
    print(f"{name:24s} {n:>12,d} parameters  ({n / counts['Linear']:.1f}x Linear)")

# %% [markdown]
# ## Two bugs the design document inherits
#
# **`update_grid` applies the spline scaler twice.** The document's `update_grid` (taken from
# efficient-kan) least-squares fits the *scaled* spline outputs on the new grid and stores the
# result in `spline_weight`; but `forward` multiplies `spline_weight` by `spline_scaler` again.
# With the default (Kaiming-uniform) scaler the layer computes a different function after every
# grid update. `labkit` fits the unscaled splines instead. We measure how much the layer's
# output changes across one grid update on data, for the fixed version and for the document's
# formula (the same refit, multiplied by the scaler once more).

# %%
torch.manual_seed(0)
layer = KANLinear(4, 3).double()
with torch.no_grad():  # stand-in for a trained layer: splines of order one, not the near-zero init
    layer.spline_weight.normal_()
x_data = torch.rand(2048, 4, dtype=torch.float64) * 1.6 - 0.8
before = layer(x_data)
fixed = KANLinear(4, 3).double()
fixed.load_state_dict(layer.state_dict())
fixed.update_grid(x_data)
after_fixed = fixed(x_data)
seed_formula = KANLinear(4, 3).double()
seed_formula.load_state_dict(fixed.state_dict())
with torch.no_grad():  # the document's refit stores the coefficients of the *scaled* splines
    seed_formula.spline_weight.mul_(seed_formula.spline_scaler[..., None])
after_seed = seed_formula(x_data)
rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
change_fixed, change_seed = rel(after_fixed, before), rel(after_seed, before)
print(f"relative change of the layer output after update_grid: labkit {change_fixed:.2%}, "
      f"document's formula {change_seed:.2%}")

# %% tags=["remove-cell"]
assert change_fixed < 0.05, change_fixed
assert change_seed > 0.5, change_seed

# %% [markdown]
# **`acos(tanh x)` has a NaN gradient.** The document evaluates $T_d(t) = \cos(d \arccos t)$.
# Mathematically that is the same polynomial, but $\tanh$ rounds to exactly $\pm 1$ for
# $|x| \ge 9.01$ in fp32 and $|x| \ge 3.46$ in bf16, where $\frac{d}{dt}\arccos t = -\infty$;
# autograd then multiplies $\infty$ by $\tanh' = 0$ and returns NaN, which poisons every weight
# it touches. `labkit` uses the three-term recurrence, whose gradient is a polynomial.

# %%
coeffs = torch.randn(1, 1, 4, dtype=torch.float64)
rows = []
for dtype in (torch.float32, torch.bfloat16):
    for x0 in (2.0, 5.0, 9.5, 20.0):
        grads = {}
        for name, fn in (("document (acos)", reference.chebykan_seed_formulation),
                         ("labkit (recurrence)", reference.chebykan_reference)):
            xx = torch.tensor([[x0]], dtype=dtype, requires_grad=True)
            fn(xx, coeffs.to(dtype)).sum().backward()
            grads[name] = xx.grad.item()
        rows.append((str(dtype).removeprefix("torch."), x0, *grads.values()))
print(f"{'dtype':9s} {'x':>5s} {'d/dx document (acos)':>22s} {'d/dx labkit':>14s}")
for r in rows:
    print(f"{r[0]:9s} {r[1]:5.1f} {r[2]:22.3e} {r[3]:14.3e}")

# %% tags=["remove-cell"]
assert all(math.isfinite(r[3]) for r in rows)
assert any(math.isnan(r[2]) for r in rows)

# %% [markdown]
# ## Fused Triton kernels
#
# Both layers are one matrix product $Y = F(X)\,W$ whose left operand $F(X)$, the feature
# expansion (SiLU plus $G+k$ B-splines per input, or $D+1$ Chebyshev polynomials), is
# $(G+k+1)\times$ or $(D+1)\times$ larger than $X$. The document's formulation materialises
# $F(X)$ and keeps it for the backward pass: at 4096 rows of width 768 that is 96 MiB per
# layer in fp32 for the B-spline basis alone, and the Cox-de Boor recursion keeps several
# more intermediates of that size.
#
# The kernels in `labkit/kan/triton_bspline.py` and `labkit/kan/triton_chebyshev.py` never
# store $F(X)$: each program loads a tile of $X$, builds the feature tile in registers and
# feeds it straight to `tl.dot`; the backward kernels rebuild the features (and their
# derivatives, for $\partial L/\partial X$) from $X$ the same way, and accumulate the weight
# gradient as a tiled matrix product over the batch, without atomics. Only $X$ and the weights
# are saved for the backward pass. On a CPU the same layers run the PyTorch reference; CI
# tests every kernel against it in Triton's interpreter.
#
# Each layer has a second Triton path, the split-GEMM path described with the benchmark below.
# The check here runs both paths, forward and backward, against the float64 reference.

# %%
from labkit.kan.checks import kernel_errors

# Small enough (256 x 96 -> 160) that each kernel compiles one fixed configuration, without autotuning.
if device.type == "cuda":
    errors = kernel_errors(device, rows=256, d_in=96, d_out=160)  # both paths: fused and split-GEMM
    print(f"{'layer':10s} {'path':6s} {'dtype':9s} {'output rel. err':>16s} {'worst gradient':>15s}")
    for name, path, dt, e_out, e_grad in errors:
        print(f"{name:10s} {path:6s} {dt:9s} {e_out:16.2e} {e_grad:15.2e}")
else:
    errors = None
    print("No GPU here: the layers run their PyTorch reference. The kernels are tested in CI under "
          "TRITON_INTERPRET=1 (tests/test_kan_triton_*.py).")

# %% tags=["remove-cell"]
if errors is not None:
    for name, path, dt, e_out, e_grad in errors:
        tol = 1e-4 if dt == "float32" else 2e-2
        assert e_out < tol and e_grad < tol, (name, path, dt, e_out, e_grad)

# %% [markdown]
# ### Speed and memory on an H100
#
# `python -m labkit.bench kan` times forward + backward (gradients of the input and every
# weight) of one layer at the shape the design's ViT uses, 4096 rows $\times$ 768 $\to$ 3072,
# G = 5, k = 3, degree 3, with CUDA events (median of 30 repeats after warm-up), and records the
# extra GPU memory the step needs at its peak. Every row is measured in the same run, next to
# `Linear+GELU` of the same shape, which gives the ratios. The table below is read from the
# committed result file `bench/results/<device>/kan.json`; the sweeps after it from
# `kan-sweeps.json` (`python -m labkit.bench kan-sweeps`). `bspline_labkit` runs on the layer's
# uniform grid, where the kernels use a cheaper recursion for the bases (every basis is the
# same polynomial, shifted); `bspline_labkit_adapted` moves the knots as `update_grid` would and
# measures the general Cox-de Boor path. The `_gemm` rows are labkit's second path for each layer
# (`path="gemm"` in `labkit.kan.ops`): a Triton kernel writes the features of a block of inputs to
# a buffer and cuBLAS multiplies, instead of computing the features inside the GEMM loop as the
# fused kernels do. To keep fp32 accuracy each fp32 product is split (`labkit.kan.split_gemm`):
# the operands' TF32 parts are multiplied in TF32 and the two small cross terms in bf16, which
# runs at twice TF32's rate; the `_gemm_3xtf32` rows do all three in TF32. Each row has
# three clocks: `median_ms`, one call that starts on an idle GPU (host work before and between
# the kernels counts); `loop_ms`, per call of twenty calls back to back, as in a training loop;
# and `graph_ms`, a replay from a CUDA graph, the kernels alone. The sweeps (bf16, one call each)
# vary one size at a time around the headline shape, both paths of both layers; the width sweep
# starts at 192, the width of chapter 2's small ViT.

# %%
from labkit.bench import format_table, load_results

bench = load_results("kan")
env = bench["environment"]
print(f"device: {env['device']} | torch {env['torch']} | triton {env['triton']} | commit {env['git_commit']}")
head = [r for r in bench["results"] if r["sweep"] == "headline"]
print(format_table(head, ["impl", "dtype", "median_ms", "loop_ms", "graph_ms", "time_vs_linear", "loop_vs_linear",
                         "graph_vs_linear", "peak_mib", "mem_vs_linear", "status"]))

# %%
from labkit.kan.bench import plot_sweeps

plot_sweeps(load_results("kan-sweeps"));  # time and memory against batch, width, grid size and degree (bf16)

# %% [markdown]
# ## Function fitting and grid extension
#
# The KAN paper's first experiment fits $f(x, y) = \exp(\sin(\pi x) + y^2)$ on $[-1,1]^2$ from
# 1000 samples. A `[2, 1, 1]` KAN can represent $f$ exactly (inner functions $\sin(\pi x)$ and
# $y^2$, outer function $\exp$), so the only error left is spline approximation error, which
# for cubic splines falls as $G^{-4}$ {cite}`liu2024kan`. *Grid extension* trains at a coarse
# grid, then refines the grid by least squares (the new splines are fitted to the old ones, so
# the function is kept) and continues training: the test loss drops like a staircase.
#
# These models are tiny and float64 (fp32 bottoms out around $10^{-6}$ RMSE), so they run on the
# CPU in every profile, on one thread: on a GPU each LBFGS iteration of a 2-input network would
# be dominated by kernel launches, and on a CPU extra threads only add synchronisation.

# %%
torch.set_num_threads(1)
fit_device = torch.device("cpu")
data = fitting.make_dataset("exp_sin", cfg.n_train, cfg.n_test, seed=0, dtype=getattr(torch, cfg.dtype)).to(fit_device)
results = {}
for widths in ([2, 1, 1], [2, 5, 1]):
    results[tuple(widths)] = fitting.grid_extension(widths, cfg.grids, cfg.steps_per_grid, data, seed=0)
    print(f"KAN {widths}")
    print(f"  {'G':>4s} {'params':>7s} {'train RMSE':>11s} {'test RMSE':>10s} {'seconds':>8s}")
    for row in results[tuple(widths)].rows:
        print(f"  {row['G']:4d} {row['params']:7d} {row['train_rmse']:11.2e} {row['test_rmse']:10.2e} {row['seconds']:8.1f}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for widths, res in results.items():
    g = [r["G"] for r in res.rows]
    test = [r["test_rmse"] for r in res.rows]
    axes[0].loglog(g, test, "o-", label=f"KAN {list(widths)} test")
    axes[1].semilogy(res.test_curve, label=f"KAN {list(widths)} test")
    axes[1].semilogy(res.train_curve, "--", alpha=0.6, label=f"KAN {list(widths)} train")
res211 = results[(2, 1, 1)]
g211 = [r["G"] for r in res211.rows]
t211 = [r["test_rmse"] for r in res211.rows]
fit_range = [(g, t) for g, t in zip(g211, t211) if 5 <= g <= 20]
slope = fitting.fit_slope(*zip(*fit_range)) if len(fit_range) >= 2 else float("nan")
anchor_g, anchor_t = fit_range[0] if fit_range else (g211[0], t211[0])
ref_g = np.array([min(g211), max(g211)], dtype=float)
axes[0].loglog(ref_g, anchor_t * (ref_g / anchor_g) ** -4.0, "k:", label=r"$G^{-4}$ (theory)")
pykan = {5: 6.62e-3, 10: 4.15e-4, 20: 4.51e-5, 50: 1.04e-5, 100: 8.17e-6}
axes[0].loglog(list(pykan), list(pykan.values()), "s", mfc="none", color="grey", label="pykan docs [2,1,1]")
axes[0].set_xlabel("grid size G")
axes[0].set_ylabel("test RMSE")
axes[0].set_title(f"[2,1,1]: fitted slope {slope:.2f} over G = 5..20")
axes[0].legend(fontsize=8)
for start in res211.grid_starts[1:]:
    axes[1].axvline(start, color="grey", lw=0.5)
axes[1].set_xlabel("LBFGS step (grid refined at the grey lines)")
axes[1].set_ylabel("RMSE")
axes[1].legend(fontsize=7)
fig.tight_layout()
print(f"fitted slope of log test RMSE vs log G over G=5..20: {slope:.2f} (theory: -4)")

# %% tags=["remove-cell"]
rmse_at = {r["G"]: r["test_rmse"] for r in res211.rows}
if P.name == "quick":
    assert rmse_at[10] <= 2e-3, rmse_at
else:
    assert rmse_at[20] <= 1e-4, rmse_at
    assert rmse_at[50] <= 5e-5, rmse_at  # regression guard; the full run printed above is far below it
    assert -slope >= 3.5, slope

# %% [markdown]
# Between G = 5 and G = 20 the `[2,1,1]` KAN follows the $G^{-4}$ law of the KAN theorem
# (the fitted slope is printed above the plot), and its test errors sit at or below pykan's
# documented values. The `[2,5,1]` KAN, with more parameters per grid point, stops improving
# earlier and then gets *worse* as G grows: past the interpolation threshold (parameters
# approaching the 1000 training points) it fits the training set better and the test set
# worse, the U-shape the paper reports for this network.

# %% [markdown]
# ## Chebyshev KAN and an MLP on the same task
#
# The same data, three model families: the `[2,1,1]` B-spline KAN from above, a `[2,1,1]`
# Chebyshev KAN for several degrees, and an MLP with about as many parameters as the best
# B-spline KAN. All are trained full-batch with the same LBFGS settings; the curves show test
# RMSE against LBFGS steps.

# %%
cheb_rows, cheb_hist = fitting.chebykan_degree_sweep([2, 1, 1], cfg.cheby_degrees, cfg.steps_per_grid, data,
                                                     seed=0, progress=False)
print(f"{'degree':>6s} {'params':>7s} {'train RMSE':>11s} {'test RMSE':>10s}")
for r in cheb_rows:
    print(f"{r['degree']:6d} {r['params']:7d} {r['train_rmse']:11.2e} {r['test_rmse']:10.2e}")

best_kan = min(res211.rows, key=lambda r: r["test_rmse"])
mlp_widths = fitting.mlp_matching(best_kan["params"], d_in=2, d_out=1, depth=2)
torch.manual_seed(0)
mlp = fitting.make_mlp(mlp_widths).to(dtype=data.train_x.dtype)
mlp_hist = fitting.fit_lbfgs(mlp, data, cfg.mlp_steps, progress=False)
print(f"MLP {mlp_widths}: {fitting.n_params(mlp)} params, test RMSE {mlp_hist.test_rmse[-1]:.2e} "
      f"after {cfg.mlp_steps} LBFGS steps")

# %%
fig, ax = plt.subplots(figsize=(7, 3.8))
ax.semilogy(res211.test_curve, label=f"B-spline KAN [2,1,1], G={cfg.grids[0]}..{cfg.grids[-1]}")
best_deg = min(cheb_rows, key=lambda r: r["test_rmse"])["degree"]
ax.semilogy(cheb_hist[best_deg].test_rmse, label=f"Chebyshev KAN [2,1,1], degree {best_deg}")
ax.semilogy(mlp_hist.test_rmse, label=f"MLP {mlp_widths}, {fitting.n_params(mlp)} parameters")
ax.set_xlabel("LBFGS step")
ax.set_ylabel("test RMSE")
ax.legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# ## More of the paper's functions
#
# Two more targets from the paper's section 3.1, with grid extension:
# $J_0(20x)$, which needs a fine grid to resolve its oscillations, and $xy$, which a `[2, 2, 1]`
# KAN represents through $xy = \frac{1}{4}\left((x+y)^2 - (x-y)^2\right)$.

# %%
more = {}
for name in ("bessel", "xy"):
    target = fitting.TOY_FUNCTIONS[name]
    d = fitting.make_dataset(name, cfg.n_train, cfg.n_test, seed=0, dtype=getattr(torch, cfg.dtype))
    more[name] = fitting.grid_extension(list(target.shape), cfg.more_grids, cfg.steps_per_grid, d, seed=0,
                                        progress=False)
    print(f"{target.formula:10s} KAN {list(target.shape)}: test RMSE by G: "
          + ", ".join(f"G={r['G']}: {r['test_rmse']:.1e}" for r in more[name].rows))

# %% [markdown]
# ## What the network learned
#
# The `[2,1,1]` KAN's three edge functions, evaluated on a dense grid. The inner two should be
# $\sin(\pi x)$ and $y^2$ up to an affine change, the outer one $\exp$ up to the inverse change.

# %%
model = res211.model
fig, axes = plt.subplots(1, 3, figsize=(11, 3))
with torch.no_grad():
    xs = torch.linspace(-1, 1, 400, dtype=data.train_x.dtype)
    inner = model.layers[0]
    for i, ax in enumerate(axes[:2]):
        inp = torch.zeros(400, 2, dtype=xs.dtype)
        inp[:, i] = xs
        # contribution of input i alone: subtract the response to x_i = 0
        base = torch.zeros(1, 2, dtype=xs.dtype)
        ax.plot(xs, (inner(inp) - inner(base)).squeeze(-1))
        ax.set_title(f"layer 1, edge from input {'xy'[i]}")
    hidden = inner(data.train_x)
    hs = torch.linspace(hidden.min().item(), hidden.max().item(), 400, dtype=xs.dtype)[:, None]
    axes[2].plot(hs.squeeze(), model.layers[1](hs).squeeze())
    axes[2].set_title("layer 2 (outer function)")
fig.tight_layout()

# %% [markdown]
# ## Where the design document was wrong
#
# * Its `update_grid` changes the function it is meant to preserve (measured above: the
#   document's formula moves the output by more than its own size, labkit's by under one percent).
# * Its Chebyshev layer returns NaN gradients for large inputs (above: fp32 from $|x| \approx 9$,
#   bf16 from $|x| \approx 3.5$).
# * It offers no grid extension; efficient-kan does not either. Grid extension is what gives
#   KANs their $G^{-4}$ scaling in the paper, and it is what the fitting section measures.
# * Its speed claim for the B-spline layer ("optimised") is measured in the benchmark table:
#   the document's formulation is the `bspline_seed` row. Its real cost is memory: it keeps the
#   basis tensor and several intermediates of that size for the backward pass, about 8x the peak
#   memory of `Linear+GELU` in bf16. labkit's fused kernels stay near the peak memory of
#   `Linear+GELU` (B-spline) or well below it (Chebyshev); its split-GEMM paths trade some memory
#   for speed (up to 1.8x `Linear+GELU`'s, in fp32).
# * The chapter's budgets are at most 4x the time of `Linear+GELU` and 2x its peak memory for the
#   B-spline layer, 2x and 1.5x for the Chebyshev layer. The table's times are one call each
#   (the clock: its `Linear+GELU` baselines, 1.40 and 0.58 ms, are per call). In the
#   committed run (an H100; `Linear+GELU` took 1.39 ms in fp32 and 0.39 ms in bf16 per call, its
#   kernels 0.20 ms in bf16), **the split-GEMM paths meet every budget**:
#   * the B-spline layer: 3.24x in fp32 (4.51 ms) at 1.82x the peak memory, 3.58x in bf16
#     (1.38 ms) at 0.82x. In fp32 the bf16 cross terms are what brings it under 4x: with all three
#     products in TF32 (`bspline_labkit_gemm_3xtf32`) it takes 6.54 ms, 4.70x;
#   * ChebyKAN: 1.36x in fp32 (1.89 ms) at 1.27x the peak memory, 1.90x in bf16 (0.73 ms) at
#     0.51x. The bf16 margin is thin, and it is the host's: the step's kernels take 0.35 ms (1.76x
#     `Linear+GELU`'s; its three GEMMs alone take 0.24 ms, since degree 3 makes their inner
#     dimension three times `Linear`'s), but the host issues the step (seven launches, autograd's
#     bookkeeping, Triton's argument handling) more slowly than the GPU runs it: back to back the
#     calls take 0.87 ms each (`loop_ms`, 2.82x `Linear+GELU`'s 0.31 ms). One call on an idle GPU
#     overlaps that host work with the kernels. `bench/diagnostics/kan_step_profile.py` lists the kernels of
#     one step (`diag-kan-step-profile.log`).
#
#   How fast the host is decides the per-call ratios at this size: the H100 machines lent to this
#   project issued `Linear+GELU`'s bf16 step in 0.30 to 0.60 ms per call, and on the slowest of
#   them an earlier version of the ChebyKAN path (one launch more, more Python per step) took
#   2.33x. The fused kernels stay far off on any host (B-spline 15.9x and 6.6x, ChebyKAN 3.4x and
#   2.8x).
# * Against the alternatives, the split-GEMM B-spline path is the fastest B-spline layer: in fp32
#   2.4x faster than inkan's compiled cubic layer (4.51 against 10.81 ms) and 2.6x faster than
#   `torch.compile` of the document's formulation (11.73 ms); in bf16 1.38 ms per call against
#   inkan's 1.52 and the compiled formulation's 2.21 (kernel time 0.94 against 1.30 and 1.80 ms).
#   It needs 1.16x inkan's peak memory in fp32 and 0.43x in bf16. pykan's layer ran out of memory
#   at this shape in both dtypes. The fused B-spline kernels, which generate the bases inside the
#   GEMM loop, lose in fp32 even to the uncompiled document formulation, whose large GEMMs cuBLAS
#   runs well. For the Chebyshev layer the split-GEMM path is the fastest per call in both dtypes
#   (fp32 1.89 against 4.87 ms for the compiled formulation, bf16 0.73 against 0.91 ms) and in
#   kernel time (1.54 against 4.71 ms, 0.35 against 0.43 ms). Back to back in bf16 the compiled
#   formulation is faster (0.60 against 0.87 ms per call): its host work per step is smaller.
# * Which path a layer takes: by default (`path="auto"`) `KANLinear`, `ChebyKANLayer` and the
#   functions `labkit.kan.ops.bspline_kan` and `chebykan` pick one by size. The sweeps show why.
#   At 4096 rows of width 192 -> 768 the fused kernels are faster (ChebyKAN 0.57 against
#   0.69 ms, B-spline 0.96 against 1.00 ms), at 384 -> 1536 the two paths tie, and from
#   768 -> 3072 up the split-GEMM path wins by a widening margin (ChebyKAN 1.46 against 2.71 ms at
#   16,384 rows). Small layers are bound by the host, where the fused path's fewer launches win;
#   large ones by the GEMMs, which cuBLAS runs faster than the fused kernels' `tl.dot`. So "auto"
#   takes the split-GEMM path from `labkit.kan.ops.GEMM_MIN_MACS` (2e9) multiply-adds of the
#   equivalent `Linear` (rows x in x out) up. To choose, set a layer's `path` attribute to
#   `"fused"` or `"gemm"`, or pass `path=` to the functions.

# %% tags=["remove-cell"]
# The claims of the bullets above, checked against the committed benchmark file.
row = {(r["impl"], r["dtype"]): r for r in head if r["status"] == "ok"}
ratio = lambda impl, dtype, key="time_vs_linear": row[impl, dtype][key]  # noqa: E731
assert ratio("bspline_seed", "bf16", "mem_vs_linear") > 6
graph = lambda impl, dtype: row[impl, dtype]["graph_ms"]  # noqa: E731  (kernels alone)
for dtype in ("fp32", "bf16"):
    assert ratio("bspline_labkit_gemm", dtype) <= 4 and ratio("bspline_labkit_gemm", dtype, "mem_vs_linear") <= 2
    assert ratio("cheby_labkit_gemm", dtype) <= 2 and ratio("cheby_labkit_gemm", dtype, "mem_vs_linear") <= 1.5
    assert ratio("bspline_labkit", dtype) > 4 and ratio("cheby_labkit", dtype) > 2  # the fused kernels
    assert graph("cheby_labkit_gemm", dtype) < graph("cheby_labkit", dtype)
    fastest = min((r for r in head if r["status"] == "ok" and r["dtype"] == dtype
                   and r["impl"].startswith(("bspline", "pykan", "inkan"))), key=lambda r: r["graph_ms"])
    assert fastest["impl"] == "bspline_labkit_gemm", (dtype, fastest["impl"])
    assert not any(r["status"] == "ok" for r in head if r["impl"] == "pykan" and r["dtype"] == dtype)
assert row["bspline_labkit_gemm", "fp32"]["median_ms"] * 2 < row["inkan", "fp32"]["median_ms"]
assert row["bspline_labkit_gemm", "bf16"]["median_ms"] < row["inkan", "bf16"]["median_ms"]
assert ratio("bspline_labkit_gemm_3xtf32", "fp32") > 4  # all three products in TF32: over the budget
assert ratio("cheby_labkit_gemm", "fp32", "graph_vs_linear") < 1.5 and ratio("cheby_labkit_gemm", "bf16", "graph_vs_linear") < 2
assert row["cheby_labkit_gemm", "bf16"]["loop_ms"] > 2 * graph("cheby_labkit_gemm", "bf16")  # host-bound
assert row["bspline_labkit", "fp32"]["median_ms"] > row["bspline_seed", "fp32"]["median_ms"]
for dtype in ("fp32", "bf16"):
    cheby = [r for r in head if r["status"] == "ok" and r["dtype"] == dtype and r["impl"].startswith("cheby")]
    assert min(cheby, key=lambda r: r["median_ms"])["impl"] == "cheby_labkit_gemm", dtype
assert row["cheby_seed_compiled", "bf16"]["loop_ms"] < row["cheby_labkit_gemm", "bf16"]["loop_ms"]  # back to back
assert graph("cheby_labkit_gemm", "fp32") * 2.5 < graph("cheby_seed_compiled", "fp32")
assert graph("cheby_labkit_gemm", "bf16") < graph("cheby_seed_compiled", "bf16")
# The sweeps behind path="auto": fused faster at the smallest width, split-GEMM at the largest sizes.
from labkit.kan import ops

swept = {(r["sweep"], r["impl"], r["rows"], r["in"]): r["median_ms"] for r in load_results("kan-sweeps")["results"]
         if r["status"] == "ok"}
for layer in ("bspline", "cheby"):
    assert swept["width", f"{layer}_labkit", 4096, 192] < swept["width", f"{layer}_labkit_gemm", 4096, 192]
    assert swept["width", f"{layer}_labkit_gemm", 4096, 1024] < swept["width", f"{layer}_labkit", 4096, 1024]
    assert swept["batch", f"{layer}_labkit_gemm", 16384, 768] < swept["batch", f"{layer}_labkit", 16384, 768]
assert 4096 * 192 * 768 < ops.GEMM_MIN_MACS < 4096 * 768 * 3072 and ops.DEFAULT_CHEBYSHEV_PATH == "auto"
