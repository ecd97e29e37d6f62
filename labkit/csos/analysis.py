"""Measurements on a CSOS model: the simplex, entropy, early readout, fixed points, flux, stability, baselines.

Every function takes a model and tensors on the model's device and returns plain tensors or
dicts of them (on the CPU), ready for :mod:`labkit.csos.plots`. Trajectories are (T + 1, B, N):
the injected state c0 followed by the state after each reaction step.
"""
from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from labkit.csos.model import CSOS, EPS, NUM_CLASSES

COLLAPSE_MASS = 0.5  # a state whose concentrations sum to less than this has collapsed (ReLU removed all)


@torch.no_grad()
def trajectory(model: CSOS, x: torch.Tensor, batch_size: int = 1000, **forward_kwargs) -> torch.Tensor:
    """The concentration trajectory (T + 1, B, N) of images ``x``, on the CPU, in batches."""
    parts = [model(x[s:s + batch_size], return_trajectory=True, **forward_kwargs)[1].cpu()
             for s in range(0, len(x), batch_size)]
    return torch.cat(parts, dim=1)


def simplex_report(traj: torch.Tensor) -> dict:
    """How far each step of a trajectory (T + 1, B, N) is from the simplex.

    Returns ``min_value`` (T + 1,), the smallest concentration (should be >= 0);
    ``max_sum_error`` (T + 1,), the largest |sum - 1| over the non-collapsed states; and
    ``collapsed`` (T + 1,), the fraction of states whose mass fell below ``COLLAPSE_MASS``.
    """
    mass = traj.sum(dim=2)
    alive = mass >= COLLAPSE_MASS
    sum_error = torch.where(alive, (mass - 1).abs(), torch.zeros_like(mass))
    return dict(min_value=traj.amin(dim=(1, 2)), max_sum_error=sum_error.amax(dim=1),
                collapsed=(~alive).float().mean(dim=1))


def entropy(traj: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats of every state: (T + 1, B, N) -> (T + 1, B). 0 * log 0 counts as 0."""
    return -(traj * torch.log(traj.clamp_min(EPS))).sum(dim=2) + 0.0  # + 0.0 turns -0.0 into 0.0


def readout_accuracy_by_step(traj: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Accuracy (T + 1,) of reading the answer (argmax of species 0..9) after each step."""
    predictions = traj[:, :, :NUM_CLASSES].argmax(dim=2)
    return (predictions == labels.cpu()[None, :]).float().mean(dim=1)


def step_change(traj: torch.Tensor) -> torch.Tensor:
    """Mean L1 distance between consecutive states, (T,): how far the map is from a fixed point."""
    return (traj[1:] - traj[:-1]).abs().sum(dim=2).mean(dim=1)


def at_vertex(states: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """Whether each state (..., N) sits on a vertex of the simplex: one species holds all the mass.

    The ReLU sets the other species to exactly zero, so in float32 such a state is one-hot up to
    rounding; ``tol`` is the allowed shortfall of the largest concentration from 1.
    """
    return states.amax(dim=-1) >= 1 - tol


def per_image_gradient_norms(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Norm of the gradient of each image's own loss w.r.t. all parameters: (B,), on the CPU.

    One backward pass per image; meant for a few hundred images.
    """
    import torch.nn.functional as F

    norms = []
    for i in range(len(x)):
        model.zero_grad(set_to_none=True)
        F.nll_loss(model(x[i:i + 1]), labels[i:i + 1]).backward()
        norms.append(torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters() if p.grad is not None)))
    model.zero_grad(set_to_none=True)
    return torch.stack(norms).detach().cpu()


@torch.no_grad()
def dead_encoder_units(model: CSOS, x: torch.Tensor, batch_size: int = 1000) -> int:
    """How many species the encoder never injects (ReLU output 0 on every image of ``x``)."""
    alive = torch.zeros(model.num_basis, dtype=torch.bool, device=x.device)
    for start in range(0, len(x), batch_size):
        alive |= (model.inject(x[start:start + batch_size]) > 0).any(dim=0)
    return int((~alive).sum())


@torch.no_grad()
def class_accuracy(model: nn.Module, data, batch_size: int = 1000) -> torch.Tensor:
    """Test accuracy of each digit class, (10,) on the CPU."""
    x, y = data
    predictions = torch.cat([model(x[s:s + batch_size]).argmax(dim=1) for s in range(0, len(x), batch_size)])
    right = (predictions == y).float().cpu()
    return torch.stack([right[y.cpu() == k].mean() for k in range(NUM_CLASSES)])


def class_means(traj: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean trajectory of each digit class: (T + 1, B, N) -> (10, T + 1, N)."""
    labels = labels.cpu()
    return torch.stack([traj[:, labels == k].mean(dim=1) for k in range(NUM_CLASSES)])


@torch.no_grad()
def reaction_flux(model: CSOS, x: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Which reactant pairs feed each class's readout species: (10, N, N).

    ``flux[k, i, j]`` is ``W[i, j, k] * m_i * m_j`` (the contribution of pair (i, j) to the
    production of species k in one step), averaged over the reaction steps and over the images of
    class k. The pair (i, j) and (j, i) are the same reaction, so the result is symmetrised:
    ``(flux + flux^T) / 2`` has the same row sums and shows only what the model can use.
    """
    W = model.interaction_tensor().detach()
    decay, alpha = model.step_coefficients(model.steps, model.decay, model.alpha)
    flux = torch.zeros(NUM_CLASSES, model.num_basis, model.num_basis, device=W.device)
    counts = torch.zeros(NUM_CLASSES, device=W.device)
    for start in range(0, len(x), batch_size):
        _, traj = model(x[start:start + batch_size], return_trajectory=True)
        y = labels[start:start + batch_size].to(W.device)
        mixed = (1 - decay) * traj[:-1]  # (T, b, N): the state each step reacts
        pairs = (mixed[..., :, None] * mixed[..., None, :]).mean(dim=0)  # (b, N, N) averaged over steps
        own = W[:, :, y].permute(2, 0, 1)  # (b, N, N): W[:, :, y_b] for each image
        flux.index_add_(0, y, own * pairs)
        counts += torch.bincount(y, minlength=NUM_CLASSES)
    flux = flux / counts.clamp_min(1)[:, None, None]
    return (0.5 * (flux + flux.transpose(1, 2))).cpu()


def strongest_reactions(flux_k: torch.Tensor, top: int = 10) -> tuple[list[tuple[int, int, float]], float]:
    """The ``top`` reactions {i, j} with the largest |flux| into one species, and their share of all |flux|.

    ``flux_k`` is one (N, N) symmetric slice of :func:`reaction_flux`. The reaction {i, j} with
    i != j appears twice in the matrix, so it counts ``flux[i, j] + flux[j, i]``. Returns
    ``([(i, j, flux), ...], share)``, strongest first.
    """
    per_reaction = torch.triu(flux_k + flux_k.T) - torch.diag(torch.diagonal(flux_k))  # i <= j
    rows, cols = torch.triu_indices(*flux_k.shape)
    values = per_reaction[rows, cols]
    order = values.abs().argsort(descending=True)[:top]
    share = (values[order].abs().sum() / values.abs().sum().clamp_min(1e-30)).item()
    return [(int(rows[o]), int(cols[o]), float(values[o])) for o in order], share


def symmetric_part(W: torch.Tensor) -> torch.Tensor:
    """The part of W[i, j, k] the model can see: (W + W with i and j swapped) / 2."""
    return 0.5 * (W + W.transpose(0, 1))


def unfolding_spectrum(W: torch.Tensor) -> torch.Tensor:
    """Singular values of W unfolded as an (N*N, N) matrix (pairs x products), normalised to sum to 1.

    A flat spectrum means the products are produced independently; a few large values mean most
    of W's effect lies in a few product directions.
    """
    n = W.shape[0]
    values = torch.linalg.svdvals(W.detach().double().reshape(n * n, n).cpu())
    return values / values.sum()


@torch.no_grad()
def stability_grid(model: CSOS, data, decays, alphas, steps_list, batch_size: int = 1000) -> dict:
    """Inference-time sweep of a trained model over decay x alpha x steps.

    Returns arrays of shape (len(steps_list), len(decays), len(alphas)): ``acc`` (test accuracy),
    ``collapsed`` (fraction of final states with no mass left), ``nonfinite`` (fraction with NaN/inf)
    and ``change`` (mean L1 change over the last step: large means the map has not settled).
    """
    x, y = data
    shape = (len(steps_list), len(decays), len(alphas))
    out = {key: torch.zeros(shape) for key in ("acc", "collapsed", "nonfinite", "change")}
    for (s, steps), (d, decay), (a, alpha) in itertools.product(enumerate(steps_list), enumerate(decays),
                                                                enumerate(alphas)):
        traj = trajectory(model, x, batch_size, steps=steps, decay=decay, alpha=alpha)
        final = traj[-1]
        finite = torch.isfinite(final).all(dim=1)
        out["nonfinite"][s, d, a] = (~finite).float().mean()
        out["collapsed"][s, d, a] = (final.sum(dim=1) < COLLAPSE_MASS).float().mean()
        out["acc"][s, d, a] = (final[:, :NUM_CLASSES].argmax(dim=1) == y.cpu()).float().mean()
        out["change"][s, d, a] = step_change(traj[-2:]).item() if steps > 0 else 0.0
    return out


# ---------------------------------------------------------------------------- baselines
class LogisticRegression(nn.Module):
    """Multinomial logistic regression on the 784 pixels: (B, 1, 28, 28) or (B, 784) -> (B, 10) log-probs."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(28 * 28, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.linear(x.reshape(len(x), -1)), dim=1)


class MLP(nn.Module):
    """784 -> hidden -> ReLU -> 10 with log-softmax, the usual one-hidden-layer baseline."""

    def __init__(self, hidden: int):
        super().__init__()
        if not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be a positive int, got {hidden!r}")
        self.hidden = hidden
        self.layers = nn.Sequential(nn.Linear(28 * 28, hidden), nn.ReLU(), nn.Linear(hidden, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.layers(x.reshape(len(x), -1)), dim=1)


def mlp_width_for(parameter_count: int) -> int:
    """Hidden width of an :class:`MLP` whose parameter count is closest to ``parameter_count``.

    The MLP has 784 h + h + 10 h + 10 = 795 h + 10 parameters.
    """
    if parameter_count < 805:
        raise ValueError(f"parameter_count must be at least 805 (an MLP of width 1), got {parameter_count}")
    return max(1, round((parameter_count - 10) / 795))


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def entropy_bound(num_basis: int) -> float:
    """The largest possible entropy on the N-simplex, log N (the uniform state)."""
    return math.log(num_basis)
