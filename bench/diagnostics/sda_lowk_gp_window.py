"""Issue 6: what the window composition alone does to the large scales, with no network at all.

A stationary Gaussian process stands in for the data: every Fourier mode (wavevector k, channel c;
orthonormal rfft2) of every state has the training data's power P(k, c) (as GaussianSkip's
spectrum), and along the trajectory the correlation rho_|k|(lag) of the data's shell |k| (measured
on the training split, second moments, no mean removed). For this prior the exact eps of a window
of w states is sigma Sigma_w^{-1} x_t with Sigma_w = mu^2 C_w + sigma^2 I, per mode; it is what a
perfectly trained window network (inside the skip) would return. The sampler's eps of a trajectory
of L states is composed as MCScoreNet does (state i from the window centred on it, the first and
last w // 2 states from the first and last windows). w = 1 is the per-state GaussianSkip
(temporally white), w = L the exact eps of the whole trajectory.

Per w: unconditional trajectories sampled as sda_judge.spectrum_ratio does (seed 1, no
corrector), std and E(k) ratio k = 1..16 against the held-out data; samples saved to
/tmp/sda_lowk/gp_w<w>_<steps>.pt (for sda_lowk_coherence.py).
With GP_MEAN=1 the process has the training data's mean field m (time and ensemble mean; the
mean flow u ~ 0.45 sin 4y) and the covariance of x - m: eps = sigma Sigma^{-1} (x_t - mu m).

    python3 bench/diagnostics/sda_lowk_gp_window.py DATA_DIR COUNT STATES STEPS W[,W ...]
"""
import json
import sys
import time

import numpy as np
import torch
import torch.nn as nn

from labkit.sda.data import read_split
from labkit.sda.gaussian import shell_index, time_correlation
from labkit.sda.score import _mu, _sigma, power_spectrum
from sda_judge import held_out, judge_spectrum, sample_trajectories


def gp_moments(train: torch.Tensor, states: int):
    """(spectrum, rho, mean) of the training trajectories; mean is None unless GP_MEAN=1 (then the
    spectrum and rho are of the mean-removed states)."""
    import os
    if os.environ.get("GP_MEAN") == "1":
        mean = train.double().mean(dim=(0, 1))
        centred = (train.double() - mean).float()
        return power_spectrum(centred), time_correlation(centred, states), mean
    return power_spectrum(train), time_correlation(train, states), None


class WindowGP(nn.Module):
    def __init__(self, spectrum: torch.Tensor, rho: torch.Tensor, states: int, window: int,
                 alpha: str = "cos", eta: float = 1e-3, mean: torch.Tensor | None = None):
        super().__init__()
        self.mean = None if mean is None else mean.double()  # (C, H, W): a Gaussian around the data's mean field
        C, H, W2 = spectrum.shape
        shell = shell_index(H, 2 * (W2 - 1))
        lag = (torch.arange(states)[:, None] - torch.arange(states)[None, :]).abs()
        R = rho[shell][..., lag]  # (H, W2, L, L) Toeplitz correlation per wavevector
        # make each Toeplitz matrix positive semi-definite (the estimate need not be)
        evals, evecs = torch.linalg.eigh(R)
        R = (evecs * evals.clamp(min=1e-6)[..., None, :]) @ evecs.transpose(-1, -2)
        self.cov = (spectrum.double()[..., None, None] * R[None]).reshape(-1, states, states)  # (C*H*W2, L, L)
        self.shape, self.L, self.w, self.alpha, self.eta = (C, H, W2), states, window, alpha, eta

    def operator(self, t: float) -> torch.Tensor:
        """A (M, L, L): eps_modes = sigma A x_modes, composed from windows as MCScoreNet does."""
        mu = _mu(torch.tensor(t, dtype=torch.float64), self.alpha, self.eta)
        sigma = _sigma(mu, self.eta)
        L, w, k = self.L, self.w, self.w // 2
        eye = torch.eye(L, dtype=torch.float64)
        A = torch.zeros_like(self.cov)
        inv = {}
        for start in range(L - w + 1):
            sig = mu**2 * self.cov[:, start:start + w, start:start + w] + sigma**2 * eye[:w, :w]
            inv[start] = torch.linalg.inv(sig)
        for i in range(L):
            start = min(max(i - k, 0), L - w)
            A[:, i, start:start + w] = inv[start][:, i - start, :]
        return sigma * A

    def forward(self, x, t, c=None):
        tt = float(torch.as_tensor(t).flatten()[0])
        A = self.operator(tt).to(torch.complex128)
        C, H, W2 = self.shape
        xd = x.double()
        if self.mean is not None:
            xd = xd - _mu(torch.tensor(tt, dtype=torch.float64), self.alpha, self.eta) * self.mean
        modes = torch.fft.rfft2(xd, norm="ortho")  # (B, L, C, H, W2)
        m = modes.movedim(1, -1).reshape(x.shape[0], -1, self.L)  # (B, M, L)
        e = torch.einsum("mij,bmj->bmi", A, m).reshape(x.shape[0], C, H, W2, self.L).movedim(-1, 1)
        return torch.fft.irfft2(e, s=x.shape[-2:], norm="ortho").to(x.dtype)


if __name__ == "__main__":
    folder, count, states, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    windows = [int(s) for s in sys.argv[5].split(",")]
    test, _, e_data = held_out(folder)
    train = torch.as_tensor(np.asarray(read_split(f"{folder}/train.h5")[0]))
    spectrum, rho, mean = gp_moments(train, states)
    print(json.dumps(dict(what="data rho(lag) for shells 1..6, lags 0,1,2,4,8,15",
                          rho={s: [round(float(rho[s, l]), 3) for l in sorted({min(l, states - 1) for l in (0, 1, 2, 4, 8, 15)})]
                               for s in range(1, 7)})), flush=True)
    for w in windows:
        t0 = time.time()
        eps = WindowGP(spectrum, rho, states, w, mean=mean)
        x = sample_trajectories(eps, count, states, test.shape[-1], steps, corrections=0)
        torch.save(x, f"/tmp/sda_lowk/gp_w{w}_{steps}{'_mean' if mean is not None else ''}.pt")
        print(json.dumps(dict(model="window GP", mean=mean is not None, window=w, states=states, steps=steps, samples=count,
                              **judge_spectrum(x, e_data), seconds=round(time.time() - t0, 1))), flush=True)
