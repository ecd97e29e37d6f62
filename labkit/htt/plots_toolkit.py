"""Figures of chapter 5b (the kernel toolkit). Every ``plot_*`` helper draws one figure and returns it."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt


def _figure(ncols: int, width: float = 5.5, height: float = 3.6):
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, list(axes[0])


# ----------------------------------------------------------------------------- log-domain matmul
def plot_accuracy_vs_k(rows: list[dict]):
    """Max absolute error (nats) against ``K``, one panel per input range, one line per method.

    ``rows``: :func:`labkit.htt.demos.accuracy_vs_k` for one or more ranges. The dashed line is
    ``log K``, the max-only error when all ``K`` terms are equal.
    """
    ranges = list(dict.fromkeys(r["inputs"] for r in rows))
    fig, axes = _figure(len(ranges))
    for ax, inputs in zip(axes, ranges):
        these = [r for r in rows if r["inputs"] == inputs]
        for method in dict.fromkeys(r["method"] for r in these):
            pts = sorted((r["K"], r["max_abs_err"]) for r in these if r["method"] == method)
            ax.plot(*zip(*pts), "o-", label=method)
        ks = sorted({r["K"] for r in these})
        ax.plot(ks, [math.log(k) for k in ks], "k--", lw=1, label="log K")
        ax.set(xscale="log", yscale="log", xlabel="K (terms per sum)", ylabel="max |C - C_float64| (nats)",
               title=f"A, B {inputs}")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_hmm_loglik(curves: dict, reference: str):
    """Left: ``-log p(x_1..t)`` against ``t`` per method; a method that underflows to ``p = 0`` stops
    there (marked x). Right: each method's relative difference from ``reference``.

    ``curves``: name -> a 1-D float64 tensor or array of ``log p(x_1..t)``.
    """
    import torch

    fig, axes = _figure(2)
    ref = torch.as_tensor(curves[reference], dtype=torch.float64)
    t = torch.arange(1, ref.numel() + 1)
    for i, (name, values) in enumerate(curves.items()):
        v = torch.as_tensor(values, dtype=torch.float64)
        ok = torch.isfinite(v)
        style = "--" if name == reference else "-"
        axes[0].plot(t[ok], -v[ok], style, color=f"C{i}", label=name)
        if not ok.all():
            first = int((~ok).nonzero()[0])
            axes[0].plot([first + 1], [-ref[first]], "x", color=f"C{i}", ms=10, mew=2)
        if name != reference:
            rel = ((v - ref).abs() / ref.abs().clamp_min(1e-300)).clamp_min(1e-17)
            axes[1].plot(t[ok], rel[ok], color=f"C{i}", lw=1, label=name)
    axes[0].set(xscale="log", yscale="log", xlabel="t (observations so far)",
                ylabel="-log p(x_1..t) (nats)", title="x: p(x_1..t) underflows to 0")
    axes[0].legend(fontsize=7)
    axes[1].set(xscale="log", yscale="log", xlabel="t", ylabel=f"relative difference from {reference}")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_logmatmul_sweep(bench: dict):
    """Median time against ``n`` for ``n x n x n`` problems (the suite's size sweep), forward and
    forward + backward, one line per implementation. Returns None when the file has no sweep."""
    rows = [r for r in bench["results"] if r.get("sweep") and r.get("status") == "ok"]
    if not rows:
        return None
    fig, axes = _figure(2)
    for ax, case in zip(axes, ("forward", "fwd+bwd")):
        these = [r for r in rows if r["case"] == case]
        for name in dict.fromkeys(r["name"] for r in these):
            pts = sorted((r["M"], r["median_ms"]) for r in these if r["name"] == name)
            ax.plot(*zip(*pts), "o-", label=name)
        sizes = sorted({r["M"] for r in these})
        ax.set(xscale="log", yscale="log", xlabel="n (M = K = N)", ylabel="median ms", title=case)
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
    axes[0].legend(fontsize=7)
    fig.suptitle(f"log-domain matmul, fp32, {bench['environment']['device']}", fontsize=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- scan
def plot_scan_bandwidth(bench: dict):
    """Effective bandwidth against sequence length, forward and forward + backward (see
    :func:`labkit.htt.bench_scan.bandwidth_plot`); the dashed line is the device copy."""
    from labkit.htt.bench_scan import bandwidth_plot

    fig, axes = _figure(2)
    for ax, case in zip(axes, ("forward", "fwd+bwd")):
        bandwidth_plot(bench["results"], case=case, ax=ax)
        ax.set_title(case)
        ax.get_legend().remove()
    handles, labels = axes[0].get_legend_handles_labels()
    axes[1].legend(handles, labels, fontsize=7)
    cfg = bench["config"]
    fig.suptitle(f"linear scan, ({cfg['batch']}, {cfg['channels']}, L) fp32, {bench['environment']['device']}",
                 fontsize=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- AR-SSM
def plot_state_growth(curves: dict, bound: float):
    """Running maximum of ``|state|`` against ``t``: one line per curve (name -> ``(L,)`` or
    ``(L, channels)`` tensor; the largest channel is taken), and the bound ``max |u|`` dashed."""
    import torch

    fig, axes = _figure(1, width=6.0)
    ax = axes[0]
    for name, values in curves.items():
        v = torch.as_tensor(values).detach().abs().cpu()
        if v.dim() > 1:  # (L, channels): the largest channel at each t
            v = v.amax(dim=-1)
        running = torch.cummax(v, dim=0).values
        ax.plot(torch.arange(1, running.numel() + 1), running, label=name)
    ax.axhline(bound, color="k", ls="--", lw=1, label="max |u_t| (the bound)")
    ax.set(xscale="log", yscale="log", xlabel="t", ylabel="max over channels and s <= t of |h_s|")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_gate_bias(logits, curves: dict):
    """``P(gate on)`` against ``sigmoid(logit)``: one line per estimator (name -> values at ``logits``);
    the diagonal is an unbiased Bernoulli gate."""
    import torch

    fig, axes = _figure(1, width=4.8, height=4.2)
    ax = axes[0]
    p = torch.sigmoid(torch.as_tensor(logits, dtype=torch.float64))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="unbiased: P(on) = sigmoid(logit)")
    for name, values in curves.items():
        ax.plot(p, values, "o-", ms=3, label=name)
    ax.set(xlabel="sigmoid(logit)", ylabel="fraction of draws on (or mean value)", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_rank_sweep(runs: list[dict], max_rank: int, teacher_rank: int):
    """Left: channels on (evaluation gate) during training, one line per run of the first seed.
    Right: final channels on against the Gumbel temperature (every seed a point, the mean a line),
    with the held-out error on a second axis. ``runs``: :func:`labkit.htt.demos.train_gated` results
    with an extra ``seed`` key."""
    fig, axes = _figure(2)
    first_seed = runs[0]["seed"]
    for run in runs:
        if run["seed"] != first_seed:
            continue
        label = run["mode"] if run["mode"] != "gumbel" else f"gumbel, T={run['temperature']:g}"
        style = ":" if run["mode"] != "gumbel" else "-"
        axes[0].plot(run["history"]["step"], run["history"]["active"], style, label=label)
    axes[0].axhline(teacher_rank, color="k", lw=0.8, ls="--", label=f"teacher's {teacher_rank} channels")
    axes[0].set(xlabel="training step", ylabel="channels with logit > 0", ylim=(-0.5, max_rank + 0.5))
    axes[0].legend(fontsize=7)
    gumbel = [r for r in runs if r["mode"] == "gumbel"]
    temps = sorted({r["temperature"] for r in gumbel})
    ax = axes[1]
    for r in gumbel:
        ax.plot(r["temperature"], r["active"], "o", color="C0", alpha=0.5)
    mean_active = [sum(r["active"] for r in gumbel if r["temperature"] == t) /
                   sum(1 for r in gumbel if r["temperature"] == t) for t in temps]
    ax.plot(temps, mean_active, "-", color="C0", label="channels on (eval)")
    ax.axhline(teacher_rank, color="k", lw=0.8, ls="--")
    ax.set(xscale="log", xlabel="Gumbel temperature", ylabel="channels on at the end", ylim=(-0.5, max_rank + 0.5))
    ax.set_xticks(temps, [f"{t:g}" for t in temps])
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    twin = ax.twinx()
    mean_err = [sum(r["held_out"] for r in gumbel if r["temperature"] == t) /
                sum(1 for r in gumbel if r["temperature"] == t) for t in temps]
    twin.plot(temps, mean_err, "s--", color="C3", label="held-out MSE")
    twin.set(yscale="log", ylabel="held-out MSE (pruned, eval)")
    lines = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], fontsize=7, loc="center left")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- recovery
def plot_recovery(runs: dict, fault_step: int, log: list[dict] | None = None):
    """Training loss against step for each run (name -> ``recovery.history``), the fault marked,
    and the strategies of ``log`` (a ``recovery.log``) listed at the fault."""
    fig, axes = _figure(1, width=8.0, height=3.8)
    ax = axes[0]
    for name, history in runs.items():
        steps = [row["step"] for row in history]
        losses = [row["loss"] for row in history]
        ax.plot(steps, losses, lw=1, label=name)
    ax.axvline(fault_step, color="k", ls=":", lw=1)
    if log:
        actions = [f"{e['action']}" + ("" if e["applied"] else " (skipped)") for e in log
                   if e["step"] == fault_step and e["action"] != "checkpoint"]
        ax.text(0.98, 0.97, f"step {fault_step}: NaN written into a weight\n" + "\n".join(
            f"{i + 1}. {a}" for i, a in enumerate(actions)), transform=ax.transAxes, va="top", ha="right",
            multialignment="left", fontsize=7, bbox=dict(boxstyle="round", facecolor="white", alpha=0.9))
    ax.set(yscale="log", xlabel="step", ylabel="training loss (MSE)")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


__all__ = ["plot_accuracy_vs_k", "plot_gate_bias", "plot_hmm_loglik", "plot_logmatmul_sweep", "plot_rank_sweep",
           "plot_recovery", "plot_scan_bandwidth", "plot_state_growth"]
