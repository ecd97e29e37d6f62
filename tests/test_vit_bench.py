"""The ``vit`` benchmark suite at its quick (CPU) sizes: timed rows in turns, and the seed-table rows.

On the PyTorch backend (``LABKIT_BACKEND=torch``): the suite's bookkeeping is under test here, the
KAN kernels are tested against their references in tests/test_kan_triton_*.py.
"""
import pytest
import torch

from labkit.vit import bench


@pytest.fixture(autouse=True)
def _torch_backend(monkeypatch):
    monkeypatch.setenv("LABKIT_BACKEND", "torch")


def test_quick_suite_times_models_in_turns_and_counts_the_seed_table():
    config, rows = bench.run(torch.device("cpu"), quick=True)
    steps = [r for r in rows if r["case"] == "train step" and "skipped" not in r]
    assert {r["name"] for r in steps} >= {"labkit ViT (MLP, SDPA)", "labkit ViT (ChebyKAN degree 3)"}
    for r in steps:
        assert len(r["round_ms"]) == config["rounds"] and all(t > 0 for t in r["round_ms"])
        assert min(r["round_ms"]) <= r["median_ms"] <= max(r["round_ms"]) and r["alone_ms"] > 0
        assert r["timed"] == "in turns"
    mlp = next(r for r in steps if r["name"] == "labkit ViT (MLP, SDPA)")
    assert mlp["x_labkit_mlp"] == 1.0
    table = {r["name"]: r for r in rows if r["case"] == "seed table"}
    assert set(table) == {"ViT-B/16 mlp", "ViT-B/16 chebykan"}
    # the seed's rule misses the KAN coefficients; on the CPU nothing of the table is timed
    assert table["ViT-B/16 chebykan"]["params"] > 8 * table["ViT-B/16 chebykan"]["seed_rule_params"]
    assert all("step_ms" not in r for r in table.values())


def test_seed_model_timing_reports_a_step_or_why_it_did_not_fit(monkeypatch):
    timed = bench._time_seed_model("vit_tiny_patch4_28", "chebykan", 2, torch.device("cpu"), steps=1, warmup=0)
    assert timed["step_ms"] > 0 and timed["step_batch"] == 2

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(bench, "peak_memory_and_throughput", out_of_memory)
    skipped = bench._time_seed_model("vit_tiny_patch4_28", "mlp", 64, torch.device("cpu"), steps=1, warmup=0)
    assert skipped == {"step_skipped": "out of memory at batch 64", "step_batch": 64}


def test_models_that_do_not_fit_together_are_reported_as_such(monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(bench, "make_train_step", out_of_memory)
    builders = {"a": (lambda: torch.nn.Linear(2, 2), "mlp")}
    assert bench._time_in_turns(builders, 2, torch.device("cpu"), warmup=0, rounds=1, steps_per_round=1) is None
