"""The kan benchmark suite on the CPU (quick sizes): rows, ratios, and what an interrupt keeps."""
import torch

from labkit.kan import bench


def test_quick_suite_measures_every_cpu_variant_with_ratios():
    config, rows = bench.run(torch.device("cpu"), quick=True)
    assert not config["interrupted"]
    assert {r["impl"] for r in rows} == {"linear_gelu", "bspline_seed", "cheby_seed", "cheby_recurrence"}
    assert all(r["status"] == "ok" and r["median_ms"] > 0 for r in rows)
    linear = [r for r in rows if r["impl"] == "linear_gelu"]
    assert all(r["time_vs_linear"] == 1.0 for r in linear)


def test_suite_keeps_rows_measured_before_an_interrupt(monkeypatch):
    measure, calls = bench.measure, []

    def interrupt_on_third(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return measure(*args, **kwargs)

    monkeypatch.setattr(bench, "measure", interrupt_on_third)
    config, rows = bench.run(torch.device("cpu"), quick=True)
    assert config["interrupted"] and [r["impl"] for r in rows] == calls[:2]
