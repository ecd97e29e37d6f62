"""Figures of chapter 5a."""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle


def draw_tt(shapes, vocab_size: int, d_model: int, ax=None):
    """The cores as boxes ``(v_k, r_{k-1}, d_k, r_k)`` and how one token's row is assembled."""
    ax = ax or plt.subplots(figsize=(9, 2.6))[1]
    x = 0.0
    for k, (v, r0, d, r1) in enumerate(shapes):
        w = 1.6
        ax.add_patch(Rectangle((x, 0), w, 1, fill=True, alpha=0.25, color=f"C{k}"))
        ax.text(x + w / 2, 0.62, f"core {k + 1}", ha="center", fontsize=11)
        ax.text(x + w / 2, 0.3, f"({v}, {r0}, {d}, {r1})", ha="center", fontsize=9)
        ax.text(x + w / 2, -0.22, f"digit $i_{k + 1}$ < {v}\nslice {r0}x{d}x{r1}", ha="center", va="top", fontsize=8)
        if k < len(shapes) - 1:
            ax.annotate("", (x + w + 0.5, 0.5), (x + w, 0.5), arrowprops=dict(arrowstyle="-", lw=2))
            ax.text(x + w + 0.25, 0.58, f"r={r1}", ha="center", fontsize=9)
        x += w + 0.5
    ax.text(x + 0.1, 0.5, f"-> row of {' x '.join(str(s[2]) for s in shapes)} -> crop to {d_model}\n"
            f"vocabulary {vocab_size} <= {' x '.join(str(s[0]) for s in shapes)}", va="center", fontsize=9)
    ax.set_xlim(-0.2, x + 4.2)
    ax.set_ylim(-0.8, 1.15)
    ax.axis("off")
    return ax


def memory_bars(rows, ax=None, log=True):
    """Stacked memory components (MiB) per embedding, from :func:`labkit.htt.memory.memory_table` rows."""
    ax = ax or plt.subplots(figsize=(9, 3.6))[1]
    names = [r["name"] for r in rows]
    bottom = [0.0] * len(rows)
    for key, label in (("params_mib", "parameters"), ("grads_mib", "gradients"), ("optimizer_mib", "optimizer state"),
                       ("activations_mib", "saved activations")):
        values = [r[key] for r in rows]
        ax.barh(names, values, left=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values)]
    if log:
        ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("MiB (one training step, output excluded)")
    ax.legend(fontsize=8, loc="lower right")
    return ax


def token_sweep(rows, ax=None):
    """fwd+bwd time against tokens, one line per implementation."""
    ax = ax or plt.subplots(figsize=(5, 3.4))[1]
    for name in dict.fromkeys(r["name"] for r in rows):
        pts = sorted((r["tokens"], r["median_ms"]) for r in rows if r["name"] == name)
        ax.plot(*zip(*pts), "o-", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("tokens per lookup")
    ax.set_ylabel("forward + backward (ms)")
    ax.legend(fontsize=8)
    return ax


def quality_vs_memory(results, ax=None):
    """Validation perplexity against the embedding's training memory (params + grads + Adam)."""
    ax = ax or plt.subplots(figsize=(5.5, 3.6))[1]
    for name, r in results.items():
        ax.scatter(r["embedding_mib"], r["valid_ppl"], s=40, color="k" if name == "dense" else None)
        ax.annotate(name, (r["embedding_mib"], r["valid_ppl"]), textcoords="offset points", xytext=(4, 3), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("input embedding: params + grads + Adam state (MiB)")
    ax.set_ylabel("validation perplexity")
    return ax
