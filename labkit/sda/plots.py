"""Figures for chapter 4: vorticity fields, an animation, spectra and flow statistics.

Arrays follow the data's convention, axis -2 = x and axis -1 = y; ``imshow`` wants rows = y, so
fields are drawn transposed with the origin at the bottom left (x to the right, y up).
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

VORTICITY_RANGE = 1.25  # the original's colour range for its (grid-unit) vorticity
CMAP = "RdBu_r"


def _np(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _field(ax, w, vmax, title=""):
    image = ax.imshow(_np(w).T, origin="lower", cmap=CMAP, vmin=-vmax, vmax=vmax, extent=(0, 2 * np.pi, 0, 2 * np.pi))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    return image


def vorticity_row(fields, titles, vmax: float = VORTICITY_RANGE, label: str = "vorticity (grid units)"):
    """One row of vorticity fields (each (H, W)) with a shared colour scale."""
    fig, axes = plt.subplots(1, len(fields), figsize=(2.1 * len(fields) + 0.6, 2.3), squeeze=False)
    for ax, w, title in zip(axes[0], fields, titles):
        image = _field(ax, w, vmax, title)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.85, label=label)
    return fig


def animation(fields, times, vmax: float = VORTICITY_RANGE, interval_ms: int = 120):
    """A looping animation of vorticity fields (T, H, W), as a self-contained HTML ``<img>`` (GIF).

    A GIF needs no player script and fetches nothing: matplotlib's JavaScript player loads its
    button icons from a CDN, which an offline copy of the book cannot reach.
    """
    from IPython.display import HTML
    from PIL import Image

    fields = _np(fields)
    fig, ax = plt.subplots(figsize=(3.2, 3.2), dpi=72)
    image = _field(ax, fields[0], vmax)
    frames = []
    for i in range(len(fields)):
        image.set_data(fields[i].T)
        ax.set_title(f"t = {times[i]:.1f}", fontsize=9)
        fig.canvas.draw()
        frames.append(Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3]))
    plt.close(fig)
    return HTML(gif_html(frames, interval_ms))


def gif_html(frames, interval_ms: int = 120) -> str:
    """PIL images -> an ``<img>`` tag holding them as a looping GIF (base64)."""
    import base64
    import io

    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=interval_ms, loop=0)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img src="data:image/gif;base64,{data}" alt="vorticity animation" style="max-width: 100%">'


def spectrum(k, energy, references: dict | None = None, slope_anchor: int = 8):
    """Log-log energy spectrum E(k) with a k^-3 line through E(slope_anchor) and reference points."""
    k, energy = _np(k), _np(energy)
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    keep = k >= 1
    ax.loglog(k[keep], energy[keep], "-", label="this chapter's data")
    ks = np.arange(slope_anchor, k.max() + 1)
    ax.loglog(ks, energy[slope_anchor] * (ks / slope_anchor) ** -3.0, "k--", lw=1, label=r"$k^{-3}$")
    for name, points in (references or {}).items():
        kk = np.array(sorted(points))
        ax.loglog(kk, [points[i] for i in kk], "o", ms=4, label=name)
    ax.set_xlabel("wavenumber k")
    ax.set_ylabel("E(k)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def jet_and_correlation(y, profile, amplitude, lags, correlations, references: dict | None = None):
    """Left: the time-mean jet <u>(y) and a sin(4y) fit; right: correlation against lag (time units)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    y, profile = _np(y), _np(profile)
    axes[0].plot(y, profile, ".-", label=r"$\langle u \rangle(y)$")
    axes[0].plot(y, amplitude * np.sin(4 * y), "k--", lw=1, label=f"{amplitude:.3f} sin(4y)")
    axes[0].set_xlabel("y")
    axes[0].legend(fontsize=8)
    axes[0].set_title("mean jet")
    axes[1].plot(lags, correlations, ".-", label="this chapter's data")
    for name, points in (references or {}).items():
        axes[1].plot(list(points), list(points.values()), "o", ms=5, label=name)
    axes[1].set_xlabel("lag (time units)")
    axes[1].set_ylabel("correlation")
    axes[1].set_title("correlation of states a lag apart")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


# --- chapter 4b: the score model -----------------------------------------------------------------------

def schedules(t, curves: dict, marks: dict | None = None):
    """mu(t), sigma(t) and the signal-to-noise ratio mu^2/sigma^2 (log scale) for several schedules.

    ``curves``: name -> (mu, sigma) arrays over ``t``; ``marks``: name -> {t: (mu, sigma)} points.
    """
    t = _np(t)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.1))
    for name, (mu, sigma) in curves.items():
        mu, sigma = _np(mu), _np(sigma)
        line, = axes[0].plot(t, mu, label=name)
        axes[1].plot(t, sigma, color=line.get_color())
        axes[2].semilogy(t, mu**2 / sigma**2, color=line.get_color())
    for name, points in (marks or {}).items():
        ts = sorted(points)
        axes[0].plot(ts, [points[s][0] for s in ts], "kx", ms=6, label=name)
        axes[1].plot(ts, [points[s][1] for s in ts], "kx", ms=6)
    for ax, title in zip(axes, (r"$\mu(t)$", r"$\sigma(t)$", r"SNR $\mu^2/\sigma^2$")):
        ax.set_xlabel("t")
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def training_curve(history: list[dict], loss: str = "eps"):
    """Train and validation loss per epoch (log scale); ``loss`` names the loss for the axis ('eps' or 'v')."""
    labels = {"eps": r"$\epsilon$-matching loss", "v": r"v loss ($\epsilon$ error / $\mu^2$)"}
    if loss not in labels:
        raise ValueError(f"loss must be one of {tuple(labels)} (TrainConfig.loss), got {loss!r}")
    epochs = [row["epoch"] for row in history]
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    ax.semilogy(epochs, [row["train_loss"] for row in history], label="train")
    ax.semilogy(epochs, [row["valid_loss"] for row in history], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel(labels[loss])
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def spectra_comparison(k, spectra: dict, band: float = 0.25, k_max: int = 16):
    """Left: E(k) of data and samples; right: their ratio to the first entry, with a +-band window to k_max."""
    k = _np(k)
    keep = k >= 1
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.3))
    names = list(spectra)
    reference = _np(spectra[names[0]])
    for name in names:
        energy = _np(spectra[name])
        axes[0].loglog(k[keep], energy[keep], label=name)
        axes[1].semilogx(k[keep], energy[keep] / reference[keep], label=name)
    axes[1].axhspan(1 - band, 1 + band, xmax=np.log(k_max) / np.log(k[keep].max()), color="0.9", zorder=0,
                    label=f"target: within {band:.0%} for k <= {k_max}")
    axes[0].set_xlabel("wavenumber k")
    axes[0].set_ylabel("E(k)")
    axes[1].set_xlabel("wavenumber k")
    axes[1].set_ylabel(f"E(k) / E(k) of {names[0]}")
    axes[1].set_ylim(0, 3)
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def vorticity_grid(rows: dict, col_titles, vmax: float = VORTICITY_RANGE, label: str = "vorticity (grid units)"):
    """A grid of vorticity fields: ``rows`` maps a row label to a list of (H, W) fields (None: blank)."""
    n_rows, n_cols = len(rows), len(col_titles)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.9 * n_cols + 0.8, 1.9 * n_rows + 0.3), squeeze=False)
    image = None
    for r, (name, fields) in enumerate(rows.items()):
        for c in range(n_cols):
            ax = axes[r, c]
            w = fields[c] if c < len(fields) else None
            if w is None:
                ax.axis("off")
                continue
            image = _field(ax, w, vmax, col_titles[c] if r == 0 else "")
        axes[r, 0].set_ylabel(name, fontsize=9)
        axes[r, 0].axis("on")
        axes[r, 0].set_xticks([])
        axes[r, 0].set_yticks([])
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label=label)
    return fig
