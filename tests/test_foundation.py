"""Shared modules: profiles, the benchmark harness, the notebook-pair tooling, the backend switch."""
import json

import nbformat
import pytest
import torch

import labkit
from labkit import backend, book
from labkit.bench import harness


def test_profile_default_and_env(monkeypatch):
    monkeypatch.delenv("LABKIT_PROFILE", raising=False)
    assert labkit.profile().name == ("full" if torch.cuda.is_available() else "quick")
    monkeypatch.setenv("LABKIT_PROFILE", "paper")
    p = labkit.profile()
    assert p.name == "paper" and p.kan.grids[-1] == 1000
    assert labkit.profile("quick").kan.steps_per_grid < labkit.profile("full").kan.steps_per_grid


def test_profile_rejects_unknown_names(monkeypatch):
    monkeypatch.setenv("LABKIT_PROFILE", "huge")
    with pytest.raises(ValueError, match="quick.*full.*paper"):
        labkit.profile()
    with pytest.raises(AttributeError, match="no sizes for chapter 'nope'"):
        labkit.profile("quick").nope


def test_start_prints_the_run_setup(capsys):
    labkit.start(seed=3, name="quick")
    line = capsys.readouterr().out
    assert "profile=quick" in line and "seed 3" in line and torch.__version__ in line


def test_time_fn_and_results_json(tmp_path):
    timing = harness.time_fn(lambda: torch.ones(64).sum(), "cpu", warmup=1, repeats=6)
    assert 0 < timing["min_ms"] <= timing["median_ms"] and timing["repeats"] == 6
    assert harness.peak_memory_mib(lambda: None, "cpu") is None
    env = harness.environment("cpu")
    path = harness.write_results("demo", [{"name": "x", **timing}], env, {"n": 1}, tmp_path)
    data = json.loads(path.read_text())
    assert path.parent.name == "cpu" and data["suite"] == "demo" and data["results"][0]["name"] == "x"
    assert harness.load_results("demo", results_dir=tmp_path)["config"] == {"n": 1}
    with pytest.raises(FileNotFoundError, match="python -m labkit.bench other"):
        harness.load_results("other", results_dir=tmp_path)


def test_host_time_and_profile_on_the_cpu():
    calls = []

    def step():
        calls.append(torch.ones(8).sum())

    assert harness.host_ms(step, calls=5) > 0 and len(calls) == 6  # one warm-up call, then five timed
    table = harness.host_profile(step, calls=4, top=5)
    assert "step" in table and "tottime" in table and len(calls) == 11


def test_device_slug_and_table():
    assert harness.device_slug({"device_type": "cuda", "device": "NVIDIA H100 80GB HBM3"}) == "nvidia-h100-80gb-hbm3"
    table = harness.format_table([{"a": 1.23456, "b": None}, {"a": "x"}], ["a", "b"])
    assert table.splitlines()[1].startswith("1.235")


def test_backend_choice(monkeypatch):
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="backend must be"):
        backend.resolve_backend("cuda", x)
    monkeypatch.setenv("LABKIT_BACKEND", "torch")
    assert backend.resolve_backend("auto", x) == "torch"


def _nb(code: str, outputs=(), count=None, profile="full"):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(code, outputs=list(outputs), execution_count=count)
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), cell]
    nb.metadata["labkit"] = {"profile": profile}
    return nb


def test_run_problems_and_missing_figures():
    png = nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"})
    good = _nb("fig, ax = plt.subplots()", [png], count=1)
    assert book.run_problems(good) == [] and book.missing_figures(good) == []
    assert book.missing_figures(_nb("fig, ax = plt.subplots()", count=1)) == [1]
    assert "cell 1 was not executed" in book.run_problems(_nb("x = 1"))[0]
    assert "not 'full'" in book.run_problems(_nb("x = 1", count=1, profile="quick"))[0]
    err = nbformat.v4.new_output("error", ename="E", evalue="v", traceback=[])
    assert "stored an error" in book.run_problems(_nb("x = 1", [err], count=1))[-1]


def test_read_notebook_uses_a_matching_complete_pair(tmp_path, monkeypatch):
    import jupytext

    stored = _nb("print(42)", [nbformat.v4.new_output("stream", name="stdout", text="42\n")], count=1)
    (tmp_path / "notebooks").mkdir()
    nbformat.write(stored, tmp_path / "notebooks" / "page.ipynb")
    monkeypatch.chdir(tmp_path)
    text = jupytext.writes(stored, fmt="py:percent")
    nb = book.read_notebook(text)
    assert nb.metadata["mystnb"]["execution_mode"] == "off" and nb.cells[1].outputs[0]["text"] == "42\n"
    changed = book.read_notebook(text.replace("print(42)", "print(43)"))
    assert "mystnb" not in changed.metadata and not changed.cells[1].get("outputs")


def _write_pair(directory, code: str, outputs=()):
    """A notebook pair in ``directory``: page.py and page.ipynb with one executed code cell."""
    import jupytext

    stored = _nb(code, outputs, count=1)
    nbformat.write(stored, directory / "page.ipynb")
    (directory / "page.py").write_text(jupytext.writes(stored, fmt="py:percent"))


def test_check_fails_on_a_figure_cell_without_an_image(tmp_path, monkeypatch, capsys):
    _write_pair(tmp_path, "fig, ax = plt.subplots()")
    problems = book.check_pairs(tmp_path)
    assert len(problems) == 1
    assert "page.ipynb" in problems[0] and "cells [1]" in problems[0]
    assert "python -m labkit.book execute --profile full notebooks/page.py" in problems[0]
    assert "MPLBACKEND=Agg" in problems[0]
    # The command line exits non-zero and prints the problem.
    monkeypatch.setattr(book, "NOTEBOOK_DIR", tmp_path)
    assert book.main(["check"]) == 1
    out = capsys.readouterr().out
    assert "FAIL page.ipynb: code cells [1]" in out and "1 problem(s)" in out


def test_check_passes_a_pair_with_its_figures(tmp_path, monkeypatch, capsys):
    png = nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"})
    _write_pair(tmp_path, "plot_sweeps(bench);", [png])
    assert book.check_pairs(tmp_path) == []
    monkeypatch.setattr(book, "NOTEBOOK_DIR", tmp_path)
    assert book.main(["check"]) == 0 and "pairs ok" in capsys.readouterr().out


def test_check_warns_about_full_runs_made_without_a_gpu(tmp_path, monkeypatch, capsys):
    png = nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"})
    _write_pair(tmp_path, "plot_sweeps(bench);", [png])
    stored = nbformat.read(tmp_path / "page.ipynb", as_version=4)
    stored.metadata["labkit"]["device"] = "cpu"
    nbformat.write(stored, tmp_path / "page.ipynb")
    assert book.cpu_full_runs(tmp_path) == [
        "page.ipynb: full profile executed on the CPU; re-execute it on a GPU "
        "(python -m labkit.book execute --profile full notebooks/page.py)"]
    monkeypatch.setattr(book, "NOTEBOOK_DIR", tmp_path)
    assert book.main(["check"]) == 0  # a warning, not a failure
    assert "WARN page.ipynb: full profile executed on the CPU" in capsys.readouterr().out


def test_missing_figures_sees_plot_helpers():
    assert book.missing_figures(_nb("plot_sweeps(bench);", count=1)) == [1]
    assert book.missing_figures(_nb("from labkit.kan.bench import plot_sweeps", count=1)) == []
    assert book.missing_figures(_nb("def plot_grid(ax):\n    pass", count=1)) == []


def _sweep_rows():
    """Synthetic ``kan`` results: every sweep, two sizes each, Linear+GELU and both kernels."""
    rows = [{"sweep": "headline", "impl": "linear_gelu", "dtype": "bf16", "rows": 64, "in": 8, "out": 32,
             "median_ms": 1.0, "peak_mib": 1.0, "status": "ok"}]
    sizes = {"batch": ("rows", (1024, 4096)), "width": ("in", (384, 768)),
             "grid_size": ("grid_size", (3, 5)), "degree": ("degree", (1, 3))}
    for sweep, (key, values) in sizes.items():
        for value in values:
            for impl in ("linear_gelu", "bspline_labkit", "cheby_labkit"):
                row = {"sweep": sweep, "impl": impl, "dtype": "bf16", "rows": 4096, "in": 768, "out": 3072,
                       "median_ms": value / 100, "peak_mib": value / 10, "status": "ok"}
                if impl != "linear_gelu" or key in ("rows", "in"):
                    row[key] = value
                rows.append(row)
    rows.append({**rows[-1], "status": "out of memory", "median_ms": None})  # not drawn
    return {"results": rows}


def test_plot_sweeps_draws_every_sweep(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from labkit.kan.bench import plot_sweeps

    fig = plot_sweeps(_sweep_rows(), tmp_path / "sweeps.png")
    axes = fig.axes
    assert len(axes) == 8 and (tmp_path / "sweeps.png").stat().st_size > 0
    sweeps = ("batch", "width", "grid_size", "degree")
    assert [ax.get_title() for ax in axes[:4]] == [f"time vs {s} (bf16)" for s in sweeps]
    # Linear+GELU has no grid size or degree: drawn in the batch and width sweeps only.
    assert [len(ax.get_lines()) for ax in axes[:4]] == [3, 3, 2, 2]
    batch_line = axes[0].get_lines()[0]
    assert list(batch_line.get_xdata()) == [1024, 4096] and list(batch_line.get_ydata()) == [10.24, 40.96]
    assert axes[4].get_lines()[0].get_ydata()[1] == pytest.approx(409.6)  # memory row
    plt.close(fig)
    assert plot_sweeps({"results": _sweep_rows()["results"][:1]}) is None  # headline only: nothing to draw
