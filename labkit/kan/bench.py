"""The ``kan`` benchmark suite: ``python -m labkit.bench kan``.

Forward + backward of one layer (gradients for the input and every weight), side by side
in one run, at the issue's reference shape (4096 rows x 768 -> 3072, G=5, k=3, degree 3)
in fp32 and in bf16 autocast:

* ``Linear+GELU`` of the same shape: the yardstick every ratio is taken against;
* the seed's formulations (efficient-kan B-spline; ChebyKAN with ``acos``), eager and
  under ``torch.compile``;
* labkit's Triton kernels: the split-GEMM paths, ``path="gemm"`` (``bspline_labkit_gemm``,
  ``cheby_labkit_gemm``: feature kernels around cuBLAS, in fp32 with the cross terms of the
  split products in bf16), in fp32 also with all three products in TF32 (``_gemm_3xtf32``,
  ``split_gemm.FP32_CROSS_TERMS``), and the fused kernels the layers still take by default
  (``bspline_labkit``, also on knots moved as by ``update_grid``; ``cheby_labkit``);
* the public peers ``pykan`` and ``inkan`` where they are installed and fit in memory.

Then sweeps of batch, width, grid size and degree for the Triton kernels against
``Linear+GELU`` (bf16), which the chapter plots.

``median_ms`` (and every ratio) times one step that starts on an idle GPU: the host's time to
issue the step's kernels counts wherever the GPU waits for it. The headline rows also carry
``loop_ms`` (steps back to back: the steady state of a training loop, where the host runs
ahead) and ``graph_ms`` (the step replayed from a CUDA graph: the kernels alone). On the H100
the bf16 Linear+GELU step is 0.46 ms per call but 0.20 ms of kernels: at this size bf16 is
bound by the host for every layer (bench/diagnostics/host_and_buffers.py).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from labkit.bench.harness import KeepRowsOnInterrupt, peak_memory_mib, time_fn, time_graph, time_loop
from labkit.kan import ops, reference, split_gemm

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _param(*shape, device, scale=1.0) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.randn(*shape, device=device) * scale)


def make_case(impl: str, rows: int, d_in: int, d_out: int, device, grid_size=5, spline_order=3, degree=3):
    """Return ``(forward, params)``: a callable x -> y and the tensors that receive gradients."""
    if impl == "linear_gelu":
        lin = torch.nn.Linear(d_in, d_out, device=device)
        return (lambda x: F.gelu(lin(x))), list(lin.parameters())
    if impl.startswith("bspline"):
        n_basis = grid_size + spline_order
        grid = reference.uniform_knots(d_in, grid_size, spline_order, dtype=torch.float32, device=device)
        wb = _param(d_out, d_in, device=device, scale=1 / math.sqrt(d_in))
        ws = _param(d_out, d_in, n_basis, device=device, scale=0.1 / math.sqrt(d_in))
        sc = _param(d_out, d_in, device=device, scale=1.0)
        params = [wb, ws, sc]
        if impl == "bspline_labkit":
            return (lambda x: ops.bspline_kan(x, grid, wb, ws, sc, spline_order, backend="triton",
                                              path="fused")), params
        if impl in ("bspline_labkit_gemm", "bspline_labkit_gemm_3xtf32"):
            return _split_gemm_case(impl, lambda x: ops.bspline_kan(x, grid, wb, ws, sc, spline_order,
                                                                     backend="triton", path="gemm")), params
        if impl == "bspline_labkit_adapted":
            # Knots as after update_grid (each moved by up to 2% of a step, per input): the
            # kernels then take the general Cox-de Boor recursion instead of the uniform one.
            gen = torch.Generator(device=device).manual_seed(0)
            step = grid[:, 1:2] - grid[:, :1]
            moved = grid + 0.02 * step * (torch.rand(grid.shape, generator=gen, device=device) - 0.5)
            adapted = moved.sort(dim=1).values
            return (lambda x: ops.bspline_kan(x, adapted, wb, ws, sc, spline_order, backend="triton",
                                              path="fused")), params
        ref = lambda x: reference.bspline_kan_reference(x, grid, wb, ws, sc, spline_order)  # noqa: E731
        if impl == "bspline_seed":
            return ref, params
        if impl == "bspline_seed_compiled":
            return torch.compile(ref), params
    if impl.startswith("cheby"):
        coeffs = _param(d_in, d_out, degree + 1, device=device, scale=1 / (d_in * (degree + 1)))
        if impl == "cheby_labkit":
            return (lambda x: ops.chebykan(x, coeffs, backend="triton", path="fused")), [coeffs]
        if impl in ("cheby_labkit_gemm", "cheby_labkit_gemm_3xtf32"):
            return _split_gemm_case(impl, lambda x: ops.chebykan(x, coeffs, backend="triton", path="gemm")), [coeffs]
        if impl == "cheby_seed":
            return (lambda x: reference.chebykan_seed_formulation(x, coeffs)), [coeffs]
        if impl == "cheby_recurrence":
            return (lambda x: reference.chebykan_reference(x, coeffs)), [coeffs]
        if impl == "cheby_seed_compiled":
            return torch.compile(lambda x: reference.chebykan_seed_formulation(x, coeffs)), [coeffs]
    if impl == "pykan":
        from kan.KANLayer import KANLayer as PyKANLayer

        layer = PyKANLayer(in_dim=d_in, out_dim=d_out, num=grid_size, k=spline_order, device=device)
        return (lambda x: layer(x)[0]), [p for p in layer.parameters() if p.requires_grad]
    if impl in ("inkan", "inkan_eager"):
        from inkan import KANLayer as InKANLayer

        layer = InKANLayer(d_in, d_out, grid_size=grid_size, spline_order=spline_order,
                           compile_basis=impl == "inkan").to(device)
        return layer, list(layer.parameters())
    raise ValueError(f"unknown implementation {impl!r}")


def _split_gemm_case(impl: str, layer: Callable) -> Callable:
    """``layer`` (a split-GEMM path) with its fp32 cross terms in TF32 for the ``_3xtf32`` rows, in bf16 otherwise."""
    cross_terms = "tf32" if impl.endswith("_3xtf32") else "bf16"

    def forward(x):
        with split_gemm.fp32_cross_terms(cross_terms):  # the backward keeps the forward's choice
            return layer(x)
    return forward


def make_step(impl: str, dtype: str, rows: int, d_in: int, d_out: int, device, **shape) -> Callable[[], None]:
    """One forward + backward of ``impl`` on fixed random inputs (``dtype`` 'fp32' or 'bf16' autocast)."""
    forward, params = make_case(impl, rows, d_in, d_out, device, **shape)
    x = (torch.rand(rows, d_in, device=device) * 2 - 1).requires_grad_()  # inside the grid [-1, 1]
    dy = torch.randn(rows, d_out, device=device, dtype=DTYPES[dtype])

    def step():
        for t in [x, *params]:
            t.grad = None  # gradients are allocated inside every step, for every implementation
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            y = forward(x)
        y.backward(dy.to(y.dtype))

    return step


def measure(impl: str, dtype: str, rows: int, d_in: int, d_out: int, device, repeats: int, clocks: bool = False,
            **shape) -> dict:
    """Time and peak memory of forward+backward; errors (OOM, missing package) become a status.

    ``clocks``: also ``loop_ms`` and ``graph_ms`` on CUDA (see the module docstring)."""
    row = {"impl": impl, "dtype": dtype, "rows": rows, "in": d_in, "out": d_out, **shape}
    try:
        step = make_step(impl, dtype, rows, d_in, d_out, device, **shape)
        row.update(time_fn(step, device, warmup=3, repeats=repeats))
        row["peak_mib"] = peak_memory_mib(step, device)
        if clocks and device.type == "cuda":
            row["loop_ms"] = time_loop(step, device)["median_ms"]
            graph = time_graph(step, device)
            row["graph_ms"] = graph["median_ms"] if graph else None
        row["status"] = "ok"
    except torch.cuda.OutOfMemoryError:
        row["status"] = "out of memory"
    except ImportError as exc:
        row["status"] = f"not installed ({exc.name})"
    except Exception as exc:  # a peer that fails at this shape is a result, not a crash of the suite
        row["status"] = f"error: {type(exc).__name__}: {str(exc)[:200]}"
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def _with_ratios(rows: list[dict], key: Callable[[dict], tuple]) -> list[dict]:
    """Add time and memory ratios against the Linear+GELU row of the same shape and dtype."""
    base = {key(r): r for r in rows if r["impl"] == "linear_gelu" and r["status"] == "ok"}
    for r in rows:
        b = base.get(key(r))
        if b is not None and r["status"] == "ok":
            r["time_vs_linear"] = r["median_ms"] / b["median_ms"]
            for clock in ("loop_ms", "graph_ms"):
                if r.get(clock) and b.get(clock):
                    r[f"{clock[:-3]}_vs_linear"] = r[clock] / b[clock]
            if r.get("peak_mib") and b.get("peak_mib"):
                r["mem_vs_linear"] = r["peak_mib"] / b["peak_mib"]
    return rows


HEADLINE_IMPLS = ("linear_gelu", "bspline_labkit", "bspline_labkit_adapted", "bspline_labkit_gemm",
                  "bspline_labkit_gemm_3xtf32", "bspline_seed", "bspline_seed_compiled", "pykan", "inkan", "inkan_eager",
                  "cheby_labkit", "cheby_labkit_gemm", "cheby_labkit_gemm_3xtf32", "cheby_seed", "cheby_recurrence",
                  "cheby_seed_compiled")
#: fp32-only rows: the ``_3xtf32`` split-GEMM paths differ from the plain ones only in fp32 products
FP32_ONLY = ("bspline_labkit_gemm_3xtf32", "cheby_labkit_gemm_3xtf32")


def run(device: torch.device, quick: bool) -> tuple[dict, list[dict]]:
    rows, d_in, d_out = (64, 32, 48) if quick else (4096, 768, 3072)
    repeats = 5 if quick else 30
    config = {"rows": rows, "in": d_in, "out": d_out, "grid_size": 5, "spline_order": 3, "degree": 3,
              "measured": "forward + backward (grads of input and all weights)"}
    impls = HEADLINE_IMPLS if device.type == "cuda" else ("linear_gelu", "bspline_seed", "cheby_seed", "cheby_recurrence")
    results = []
    jobs = [(impl, dt) for dt in DTYPES for impl in impls if dt == "fp32" or impl not in FP32_ONLY]
    # An interrupt keeps the rows measured so far: the first B-spline rows autotune for minutes.
    with KeepRowsOnInterrupt("kan", results) as stop:
        for impl, dt in tqdm(jobs, desc="kan headline"):
            shape = {"grid_size": 5, "spline_order": 3} if impl.startswith(("bspline", "pykan", "inkan")) else {}
            if impl.startswith("cheby"):
                shape = {"degree": 3}
            results.append({"sweep": "headline", **measure(impl, dt, rows, d_in, d_out, device, repeats, clocks=True,
                                                           **shape)})
    config["interrupted"] = stop.interrupted
    return config, _with_ratios(results, _ratio_key)


def _ratio_key(row: dict) -> tuple:
    return row["sweep"], row["dtype"], row["rows"], row["in"], row["out"]


def run_sweeps(device: torch.device, quick: bool) -> tuple[dict, list[dict]]:
    """The ``kan-sweeps`` suite: :func:`sweeps` (GPU only; a separate file from the headline,
    so that either can be rerun alone)."""
    if device.type != "cuda":
        raise SystemExit("the kan-sweeps suite needs a GPU (it times the Triton kernels)")
    config = {"dtype": "bf16", "around": "4096 x 768 -> 3072, G=5, k=3, degree 3",
              "measured": "forward + backward (grads of input and all weights)"}
    rows: list[dict] = []
    with KeepRowsOnInterrupt("kan-sweeps", rows) as stop:
        sweeps(device, repeats=5 if quick else 20, out=rows)
    config["interrupted"] = stop.interrupted
    return config, _with_ratios(rows, _ratio_key)


def sweeps(device: torch.device, dtype: str = "bf16", repeats: int = 20, out: list | None = None) -> list[dict]:
    """Vary one size at a time around the headline shape; each point also times Linear+GELU.

    Rows are appended to ``out`` (a new list if None) as they are measured, so that an
    interrupted run keeps them."""
    points = []
    # The headline shape (4096 x 768 -> 3072, G=5, degree 3) is the middle point of every sweep.
    for b in (1024, 4096, 16384):
        points.append(("batch", b, 768, 3072, {}))
    for w in (192, 384, 768, 1024):  # 192: chapter 2's ViT width, where the fused kernels may win
        points.append(("width", 4096, w, 4 * w, {}))
    for g in (3, 5, 10):
        points.append(("grid_size", 4096, 768, 3072, {"grid_size": g}))
    for d in (1, 3, 6):
        points.append(("degree", 4096, 768, 3072, {"degree": d}))
    out = [] if out is None else out
    for name, b, d_in, d_out, extra in tqdm(points, desc="kan sweeps"):
        impls = ["linear_gelu"]
        if name != "degree":
            impls += ["bspline_labkit", "bspline_labkit_gemm", "bspline_seed"]
        if name != "grid_size":
            impls += ["cheby_labkit", "cheby_labkit_gemm", "cheby_seed"]
        for impl in impls:
            shape = {}
            if impl.startswith("bspline"):
                shape = {"grid_size": extra.get("grid_size", 5), "spline_order": 3}
            elif impl.startswith("cheby"):
                shape = {"degree": extra.get("degree", 3)}
            out.append({"sweep": name, **measure(impl, dtype, b, d_in, d_out, device, repeats, **shape)})
    # Sweep points of the same size are told apart by their grid size / degree too.
    return out


def plot_headline(results: dict, path=None):
    """Bar chart of the headline rows: time and peak memory relative to Linear+GELU, per dtype."""
    import matplotlib.pyplot as plt

    rows = [r for r in results["results"] if r["sweep"] == "headline" and r["status"] == "ok"]
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    for ax, key, label in ((axes[0], "time_vs_linear", "time"), (axes[1], "mem_vs_linear", "peak memory")):
        for j, dtype in enumerate(DTYPES):
            vals = {r["impl"]: r.get(key, float("nan")) for r in rows if r["dtype"] == dtype}
            ys = [i + 0.4 * j for i in range(len(impls))]
            ax.barh(ys, [vals.get(i, float("nan")) for i in impls], height=0.4, label=dtype)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel(f"{label} / Linear+GELU (log scale)")
    axes[0].set_yticks([i + 0.2 for i in range(len(impls))], impls)
    axes[0].invert_yaxis()
    axes[0].legend()
    env = results["environment"]
    fig.suptitle(f"one KAN layer, forward+backward, {results['config']['rows']}x{results['config']['in']}"
                 f"->{results['config']['out']}, {env['device']}", fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


# Each sweep varies one quantity; this is the result field that holds it.
SWEEP_AXES = {"batch": "rows", "width": "in", "grid_size": "grid_size", "degree": "degree"}


def plot_sweeps(results: dict, path=None):
    """Time (top row) and peak memory (bottom row) against the swept size, one column per sweep.

    ``results`` is a loaded result file (``labkit.bench.load_results("kan-sweeps")``). Only rows with
    status "ok" are drawn. ``Linear+GELU`` has no grid size or degree, so it is left out of those
    two sweeps. Returns the figure, or None when the file holds no sweep (a quick or CPU run).
    """
    import matplotlib.pyplot as plt

    rows = [r for r in results["results"] if r["sweep"] in SWEEP_AXES and r["status"] == "ok"]
    if not rows:
        return None
    # One colour per implementation in every column (the columns hold different subsets of them).
    colours = {impl: f"C{i}" for i, impl in enumerate(sorted({r["impl"] for r in rows}))}
    fig, axes = plt.subplots(2, len(SWEEP_AXES), figsize=(15, 6.5))
    for col, (sweep, key) in enumerate(SWEEP_AXES.items()):
        points = [r for r in rows if r["sweep"] == sweep]
        for impl in sorted({r["impl"] for r in points}):
            if impl == "linear_gelu" and key in ("grid_size", "degree"):
                continue
            series = sorted((r[key], r["median_ms"], r["peak_mib"]) for r in points if r["impl"] == impl)
            sizes, times, memory = zip(*series)
            axes[0, col].plot(sizes, times, "o-", color=colours[impl], label=impl)
            axes[1, col].plot(sizes, memory, "o-", color=colours[impl], label=impl)
        dtypes = sorted({r["dtype"] for r in points})
        axes[0, col].set_title(f"time vs {sweep} ({', '.join(dtypes)})")
        axes[1, col].set_title(f"peak memory vs {sweep}")
        axes[1, col].set_xlabel(key)
        doubling = sweep in ("batch", "width")  # sizes that double: a log axis spaces them evenly
        sizes_swept = sorted({r[key] for r in points}) if doubling else []
        for ax in axes[:, col]:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}" if str(v)[0] in "25" else ""))
            if doubling:
                ax.set_xscale("log", base=2)
                ax.set_xticks(sizes_swept, [str(v) for v in sizes_swept])
                ax.xaxis.set_minor_formatter(plt.NullFormatter())
    axes[0, 0].set_ylabel("ms, forward + backward")
    axes[1, 0].set_ylabel("extra MiB at peak")
    handles = {h.get_label(): h for ax in axes[0] for h in ax.get_lines()}
    fig.tight_layout()
    fig.subplots_adjust(top=0.87)  # room for the shared legend above the titles
    fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=len(handles), fontsize=8)
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


if __name__ == "__main__":  # python -m labkit.kan.bench OUT.png: plot the committed GPU results
    import sys

    from labkit.bench.harness import load_results

    plot_headline(load_results("kan"), sys.argv[1] if len(sys.argv) > 1 else "kan_bench.png")
