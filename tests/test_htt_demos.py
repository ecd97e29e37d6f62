"""Chapter 5b's experiments (labkit.htt.demos) and figures (labkit.htt.plots_toolkit), at tiny sizes."""
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from labkit.htt import demos, hmm_forward_scaled, plots_toolkit  # noqa: E402


@pytest.fixture(autouse=True)
def torch_backend(monkeypatch):
    monkeypatch.setenv("LABKIT_BACKEND", "torch")  # the scan's and log_matmul's PyTorch paths: fast on CPU


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_accuracy_vs_k_rows_and_the_max_only_gap():
    rows = demos.accuracy_vs_k((4, 64), 8, -1.0, 1.0)
    assert len(rows) == 6 and {r["K"] for r in rows} == {4, 64}
    by = {(r["method"], r["K"]): r for r in rows}
    assert by[("labkit log_matmul (fp32)", 64)]["max_abs_err"] < 1e-5
    # Flat inputs: max-only is low by close to log K.
    assert 0.5 * math.log(64) < by[("max-only (max-log)", 64)]["max_abs_err"] <= math.log(64) + 2.0
    plots_toolkit.plot_accuracy_vs_k(rows)


def test_hmm_example_is_a_valid_sparse_hmm_and_reproducible():
    hmm = demos.hmm_example(5, 7, 50, seed=3)
    assert torch.allclose(hmm["A"].sum(1), torch.ones(5, dtype=torch.float64))
    assert torch.allclose(hmm["B"].sum(1), torch.ones(5, dtype=torch.float64))
    assert ((hmm["A"] > 0).sum(1) <= 3).all()
    assert hmm["B_obs"].shape == (50, 5) and hmm["obs"].max() < 7
    again = demos.hmm_example(5, 7, 50, seed=3)
    assert torch.equal(hmm["obs"], again["obs"]) and torch.equal(hmm["A"], again["A"])
    with pytest.raises(ValueError, match="at least 3 states"):
        demos.hmm_example(2, 4, 10)


def test_unscaled_forward_matches_scaled_until_it_underflows():
    hmm = demos.hmm_example(6, 20, 400)
    alpha = demos.hmm_forward_unscaled(hmm["pi"], hmm["A"], hmm["B_obs"])
    _, log_alpha = hmm_forward_scaled(hmm["pi"], hmm["A"], hmm["B_obs"])
    p = alpha.sum(1)
    fine = p > 1e-250
    assert fine[:20].all()
    assert torch.allclose(p[fine].log(), torch.logsumexp(log_alpha, 1)[fine], rtol=1e-10)
    p32 = demos.hmm_forward_unscaled(hmm["pi"].float(), hmm["A"].float(), hmm["B_obs"].float()).sum(1)
    assert (p32 == 0).any()  # float32 underflows within 400 steps
    curves = {"unscaled": p.log(), "scaled": torch.logsumexp(log_alpha, 1)}
    plots_toolkit.plot_hmm_loglik(curves, reference="scaled")


def test_teacher_task_batches_are_reproducible_and_scaled():
    task = demos.TeacherTask(4, 2, 16, 3, seed=1)
    x, y = task.batch(5)
    x2, y2 = demos.TeacherTask(4, 2, 16, 3, seed=1).batch(5)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, task.batch(6)[0])
    assert 0.3 < task.held_out()[1].std().item() < 3.0
    assert (task.teacher.conv.weight == 0).all()


def test_train_gated_records_history_and_prunes():
    task = demos.TeacherTask(4, 2, 16, 4)
    run = demos.train_gated(task, 6, "gumbel", 1.0, penalty=2.0, steps=30, lr=0.05, record_every=10)
    assert run["history"]["step"] == [0, 10, 20, 29]
    assert 0 <= run["active"] <= 6 and math.isfinite(run["held_out"])
    soft = demos.train_gated(task, 6, "soft", steps=5)
    assert soft["active"] == 6  # soft gates are never off
    runs = [{**run, "seed": 0}, {**demos.train_gated(task, 6, "gumbel", 3.0, steps=5), "seed": 0},
            {**demos.train_gated(task, 6, "ste", steps=5), "seed": 0}]
    plots_toolkit.plot_rank_sweep(runs, 6, 2)


def test_train_with_recovery_climbs_the_ladder_to_rollback():
    task = demos.TeacherTask(4, 2, 16, 4)
    out = demos.train_with_recovery(task, 4, 40, fault_step=30, checkpoint_every=10)
    rec = out["recovery"]
    applied = [(e["action"], e["applied"]) for e in rec.log if e["action"] != "checkpoint"]
    assert applied == [("reduce_lr", True), ("raise_threshold", True), ("enable_clipping", True), ("rollback", True)]
    assert all(row["ok"] for row in rec.history) and math.isfinite(out["held_out"])
    plots_toolkit.plot_recovery({"fault": rec.history}, 30, rec.log)


def test_state_and_gate_plots_draw():
    plots_toolkit.plot_state_growth({"a": torch.randn(50, 3), "b": torch.randn(50)}, 2.0)
    logits = torch.linspace(-2, 2, 5)
    plots_toolkit.plot_gate_bias(logits, {"x": torch.sigmoid(logits)})


def test_benchmark_plots_draw_from_result_files():
    env = {"device": "test device"}
    lm_rows = [{"name": name, "case": case, "M": n, "median_ms": 0.1 * n * (i + 1), "status": "ok", "sweep": True}
               for i, name in enumerate(("labkit", "reference")) for case in ("forward", "fwd+bwd") for n in (32, 64)]
    assert plots_toolkit.plot_logmatmul_sweep({"environment": env, "results": lm_rows}) is not None
    assert plots_toolkit.plot_logmatmul_sweep({"environment": env, "results": lm_rows[:0]}) is None
    scan_rows = [{"name": "device copy (forward's bytes)", "case": "copy", "L": n, "gbps": 100.0} for n in (256, 1024)]
    scan_rows += [{"name": "labkit", "case": case, "L": n, "gbps": 50.0} for case in ("forward", "fwd+bwd")
                  for n in (256, 1024)]
    plots_toolkit.plot_scan_bandwidth({"environment": env, "config": {"batch": 2, "channels": 16},
                                       "results": scan_rows})
