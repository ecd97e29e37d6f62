"""The chapter-5 benchmark suites run end to end at their quick (CPU) sizes and keep what they
measured when interrupted. The GPU numbers come from `python -m labkit.bench <suite>` on a GPU.

The suites run on the PyTorch backend here (``LABKIT_BACKEND=torch``): this file tests the suites'
code, and the Triton kernels are tested against their references in the interpreter elsewhere
(timing them there would take minutes and mean nothing)."""
import json

import pytest
import torch

from labkit.bench.__main__ import main
from labkit.htt import bench_logmatmul, bench_presets


@pytest.fixture(autouse=True)
def torch_backend(monkeypatch):
    monkeypatch.setenv("LABKIT_BACKEND", "torch")


@pytest.mark.parametrize("suite", ["logmatmul", "presets", "scan", "htt"])
def test_quick_suite_writes_results(suite, tmp_path, capsys):
    assert main([suite, "--quick", "--device", "cpu", "--out", str(tmp_path)]) == 0
    document = json.loads((tmp_path / "cpu" / f"{suite}.json").read_text())
    rows = document["results"]
    assert rows and document["environment"]["device_type"] == "cpu" and document["config"]["quick"]
    assert all(r.get("status", "ok") in ("ok", "skipped") or r["status"].startswith("skipped") for r in rows), \
        [r.get("status") for r in rows]
    if suite == "logmatmul":  # every exact variant agrees with float64 at the quick size
        exact = [r for r in rows if r["name"].startswith(("labkit", "reference")) and r["status"] == "ok"]
        assert exact and max(r["max_rel_err"] for r in exact) <= 1e-5
        assert not document["config"]["interrupted"]
    if suite == "presets":
        assert [r["name"] for r in rows] == ["8gb", "10gb", "24gb", "inference", "max_quality", "max_efficiency"]


def test_logmatmul_suite_keeps_rows_measured_before_an_interrupt(monkeypatch):
    measure, calls = bench_logmatmul._measure, []

    def interrupt_on_fourth(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 4:
            raise KeyboardInterrupt
        return measure(*args, **kwargs)

    monkeypatch.setattr(bench_logmatmul, "_measure", interrupt_on_fourth)
    config, rows = bench_logmatmul.run(torch.device("cpu"), quick=True)
    assert config["interrupted"] and len(rows) == 3 and all(r["status"] == "ok" for r in rows)


def test_presets_suite_keeps_presets_measured_before_an_interrupt(monkeypatch):
    measure, calls = bench_presets.measure_preset_memory, []

    def interrupt_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return measure(*args, **kwargs)

    monkeypatch.setattr(bench_presets, "measure_preset_memory", interrupt_on_third)
    config, rows = bench_presets.run(torch.device("cpu"), quick=True)
    assert config["interrupted"] and [r["name"] for r in rows] == ["8gb", "10gb"]
