"""The figures of chapter 3. Each function draws one figure from tensors and returns it."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch

from labkit.csos.model import NUM_CLASSES

CLASS_COLORS = plt.get_cmap("tab10").colors


def _np(values) -> np.ndarray:
    """Tensors to numpy before they reach matplotlib (which otherwise warns under NumPy 2)."""
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def training_curves(histories: dict):
    """Test accuracy and train loss per epoch for several runs ``{name: History}``."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    for name, history in histories.items():
        epochs = history.column("epoch")
        axes[0].plot(epochs, history.column("test_acc"), "o-", ms=3, label=name)
        axes[1].semilogy(epochs, history.column("train_loss"), "o-", ms=3, label=name)
    axes[0].set(xlabel="epoch", ylabel="test accuracy", title="test accuracy after each epoch")
    axes[1].set(xlabel="epoch", ylabel="train nll (mean over the epoch)", title="training loss")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def simplex_and_entropy(report: dict, ent: torch.Tensor, num_basis: int):
    """Left: distance from the simplex per step. Right: entropy per step (median and 10-90% band)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    steps = np.arange(len(report["min_value"]))
    axes[0].semilogy(steps, _np(report["max_sum_error"].clamp_min(1e-12)), "o-", label="max |sum(c) - 1|")
    axes[0].semilogy(steps, _np(report["min_value"].abs().clamp_min(1e-12)), "s--", label="|min c| (0 means exactly 0)")
    axes[0].set(xlabel="reaction step", title="the state stays on the simplex", ylim=(1e-12, 1))
    axes[0].legend(fontsize=8)
    low, mid, high = (_np(ent.quantile(q, dim=1)) for q in (0.1, 0.5, 0.9))
    axes[1].fill_between(steps, low, high, alpha=0.3, label="10-90% of test images")
    axes[1].plot(steps, mid, "o-", label="median")
    axes[1].axhline(math.log(num_basis), color="grey", ls=":", label=f"log N (uniform over {num_basis})")
    axes[1].axhline(0, color="k", lw=0.6)
    axes[1].set(xlabel="reaction step", ylabel="entropy (nats)", title="entropy of the concentrations")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def class_trajectories(means: torch.Tensor):
    """Mean concentration of the readout species over the steps, one panel per true class.

    ``means`` is (10, T + 1, N) from :func:`labkit.csos.analysis.class_means`.
    """
    fig, axes = plt.subplots(2, 5, figsize=(14, 5), sharex=True, sharey=True)
    steps = np.arange(means.shape[1])
    for k, ax in enumerate(axes.flat):
        for species in range(NUM_CLASSES):
            ax.plot(steps, _np(means[k, :, species]), color=CLASS_COLORS[species],
                    lw=2.5 if species == k else 0.9, alpha=1 if species == k else 0.6)
        ax.plot(steps, _np(means[k, :, NUM_CLASSES:].sum(dim=1)), color="k", ls="--", lw=1)
        ax.set_title(f"images of digit {k}", fontsize=9)
        ax.set_ylim(0, 1)
    for ax in axes[1]:
        ax.set_xlabel("reaction step")
    for ax in axes[:, 0]:
        ax.set_ylabel("mean concentration")
    handles = [plt.Line2D([], [], color=CLASS_COLORS[s], label=f"species {s}") for s in range(NUM_CLASSES)]
    handles.append(plt.Line2D([], [], color="k", ls="--", label="species 10..N-1 together"))
    fig.legend(handles=handles, loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    return fig


def readout_and_fixed_points(curves: dict, trained_steps: int):
    """Accuracy of reading the answer after each step, and the size of each step, for several models.

    ``curves`` maps a label to ``(accuracy (T + 1,), step_change (T,))``; the dotted line marks the
    number of steps used in training.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    for label, (acc, change) in curves.items():
        axes[0].plot(np.arange(len(acc)), _np(acc), "o-", ms=2, label=label)
        axes[1].semilogy(np.arange(1, len(change) + 1), _np(change.clamp_min(1e-12)), "o-", ms=2, label=label)
    for ax in axes:
        ax.axvline(trained_steps, color="grey", ls=":", lw=1)
    axes[0].set(xlabel="read out after step", ylabel="test accuracy", title="how early is the answer readable?")
    axes[1].set(xlabel="step t", ylabel=r"mean $\|c_t - c_{t-1}\|_1$", title="distance from a fixed point")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def _slice_grid(maps: torch.Tensor, title: str, log_scale: bool = False, cmap: str = "RdBu_r"):
    """Ten (N, N) maps on one colour scale, symmetric around 0 (and logarithmic beyond 1e-3 of the peak)."""
    from matplotlib.colors import Normalize, SymLogNorm

    fig, axes = plt.subplots(2, 5, figsize=(14, 5.6))
    limit = maps.abs().max().item()
    norm = (SymLogNorm(linthresh=limit * 1e-3, vmin=-limit, vmax=limit) if log_scale
            else Normalize(vmin=-limit, vmax=limit))
    for k, ax in enumerate(axes.flat):
        image = ax.imshow(_np(maps[k]), cmap=cmap, norm=norm)
        ax.set_title(f"k = {k}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[1, 0].set_xlabel("reactant j")
    axes[1, 0].set_ylabel("reactant i")
    fig.colorbar(image, ax=axes, shrink=0.8)
    fig.suptitle(title)
    return fig


def w_slices(W: torch.Tensor, title: str = "W[:, :, k] for the readout species (symmetric part)"):
    """The N x N recipe matrix W[:, :, k] of each readout species k = 0..9 (W indexed [i, j, k])."""
    sym = 0.5 * (W + W.transpose(0, 1)).detach().cpu()
    return _slice_grid(sym.permute(2, 0, 1)[:NUM_CLASSES], title)


def flux_maps(flux: torch.Tensor):
    """Per-class reaction flux (10, N, N): which pairs (i, j) produce species k on images of digit k."""
    return _slice_grid(flux, "flux into species k on images of digit k: W[i,j,k] m_i m_j (mean over steps)",
                       log_scale=True)


def init_vs_trained(W_init: torch.Tensor, W_trained: torch.Tensor, spectra: dict):
    """Histogram of W's entries before and after training, and the unfolding spectra ``{label: values}``."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.4))
    for label, W in (("initial", W_init), ("trained", W_trained)):
        axes[0].hist(_np(W.flatten()), bins=200, histtype="step", density=True, label=label)
    axes[0].set_yscale("log")
    axes[0].set(xlabel="entry of W", title="distribution of the entries")
    axes[0].legend(fontsize=8)
    for label, values in spectra.items():
        axes[1].semilogy(np.arange(1, len(values) + 1), _np(values), "o-", ms=2, label=label)
    axes[1].set(xlabel="index", ylabel="share of the sum", title="singular values of W as (pairs x products)")
    axes[1].legend(fontsize=8)
    n = W_trained.shape[0]
    for label, W in (("initial", W_init), ("trained", W_trained)):
        per_product = W.detach().cpu().reshape(n * n, n).norm(dim=0)
        axes[2].plot(np.arange(n), _np(per_product), "o", ms=3, label=label)
    axes[2].axvspan(-0.5, NUM_CLASSES - 0.5, color="grey", alpha=0.15, label="readout species")
    axes[2].set(xlabel="product species k", ylabel="||W[:, :, k]||", title="how much each species is produced")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    return fig


def stability_maps(grid: dict, decays, alphas, steps_list, trained: tuple | None = None):
    """Heatmaps of accuracy and collapse over decay x alpha, one column per number of steps.

    ``trained`` = (decay, alpha) marks the training point with a star.
    """
    cols = len(steps_list)
    fig, axes = plt.subplots(2, cols, figsize=(3.3 * cols + 1, 6), squeeze=False)
    rows = (("acc", "test accuracy", "viridis", (0, 1)), ("collapsed", "collapsed states", "magma", (0, 1)))
    for r, (key, label, cmap, (vmin, vmax)) in enumerate(rows):
        for c, steps in enumerate(steps_list):
            ax = axes[r, c]
            image = ax.imshow(_np(grid[key][c]), origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
            for d in range(len(decays)):
                for a in range(len(alphas)):
                    value = grid[key][c, d, a].item()
                    ax.text(a, d, f"{value:.2f}", ha="center", va="center", fontsize=6,
                            color="w" if value < 0.5 else "k")
            ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas], fontsize=7)
            ax.set_yticks(range(len(decays)), [f"{d:g}" for d in decays], fontsize=7)
            ax.set_title(f"{label}, steps = {steps}", fontsize=9)
            if trained is not None and trained[0] in decays and trained[1] in alphas:
                ax.plot(list(alphas).index(trained[1]), list(decays).index(trained[0]), "r*", ms=10)
        fig.colorbar(image, ax=axes[r].tolist(), shrink=0.9)
    for ax in axes[1]:
        ax.set_xlabel("alpha")
    for ax in axes[:, 0]:
        ax.set_ylabel("decay")
    return fig


def digit_trajectory(image: torch.Tensor, traj: torch.Tensor, label: int, title: str = ""):
    """One image and its concentrations over the steps: readout species coloured, the rest grey.

    ``image`` (1, 28, 28) or (784,); ``traj`` (T + 1, N) for this image.
    """
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2), gridspec_kw=dict(width_ratios=(1, 3, 2)))
    axes[0].imshow(_np(image.reshape(28, 28)), cmap="gray_r")
    axes[0].set(xticks=[], yticks=[], title=f"label {label}")
    steps = np.arange(traj.shape[0])
    for species in range(NUM_CLASSES, traj.shape[1]):
        axes[1].plot(steps, _np(traj[:, species]), color="grey", lw=0.5, alpha=0.5)
    for species in range(NUM_CLASSES):
        axes[1].plot(steps, _np(traj[:, species]), color=CLASS_COLORS[species], lw=2.5 if species == label else 1.2,
                     label=str(species))
    axes[1].set(xlabel="reaction step", ylabel="concentration", ylim=(0, 1), title=title or "trajectory")
    axes[1].legend(ncol=2, fontsize=7, title="species")
    final = _np(traj[-1, :NUM_CLASSES])
    axes[2].bar(range(NUM_CLASSES), final, color=CLASS_COLORS)
    axes[2].set(xticks=range(NUM_CLASSES), ylim=(0, 1), xlabel="digit",
                title=f"final readout: {int(final.argmax())} (mass {final.sum():.2f})")
    fig.tight_layout()
    return fig
