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
