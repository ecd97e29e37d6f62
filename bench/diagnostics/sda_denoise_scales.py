"""Issue 6: at which scales and noise levels does the trained network's denoiser miss?

For held-out 16-state windows x0 and noise levels t, the denoiser x0_hat = (x_t - sigma eps(x_t, t)) / mu
of the trained run is compared with that of its Gaussian skip alone (the network's output set to
zero): the energy spectrum of x0_hat - x0 over that of x0, per wavenumber band. Where the network
is worse than its own skip, its correction F hurts. Also printed: the spectrum of x0_hat itself
over the data's (below 1: the denoiser shrinks that scale).

    python3 bench/diagnostics/sda_denoise_scales.py RUN_DIR DATA_DIR   (a run of sda_recipe.py)
"""
import sys

import numpy as np
import torch

from labkit.sda import stats
from labkit.sda.data import read_split
from labkit.sda.score import VPSDE, GaussianSkip
from labkit.sda.train import load_score

run, folder = sys.argv[1], sys.argv[2]
score, config = load_score(run)
score.eval()
if not isinstance(score, GaussianSkip):
    raise SystemExit("the run has no skip: nothing to compare with")
skip_only = GaussianSkip(lambda x, t: torch.zeros_like(x), score.alpha, score.eta, score.spectrum)
held = np.concatenate([read_split(f"{folder}/valid.h5")[0], read_split(f"{folder}/test.h5")[0]])
x0 = torch.as_tensor(held[:, :16]).float()  # (B, 16, C, H, W)
_, e_data = stats.energy_spectrum(held)
bands = [(1, 2), (2, 4), (4, 8), (8, 16), (16, 32)]
print(f"run {run} ({'spectral' if score.spectrum is not None else 'white'} skip), {len(x0)} windows of 16 states")
print("t     mu     band     err(net)/E  err(skip)/E  net/skip  E(x0_hat,net)/E")
g = torch.Generator().manual_seed(0)
for t in (0.1, 0.3, 0.5, 0.7, 0.9):
    sde = VPSDE(score, tuple(x0.shape[1:]))
    tt = torch.full((len(x0),), t)
    mu, sigma = sde.mu(tt)[:, None, None, None, None], sde.sigma(tt)[:, None, None, None, None]
    noise = torch.randn(x0.shape, generator=g)
    x_t = mu * x0 + sigma * noise
    with torch.no_grad():
        hat_net = (x_t - sigma * score(x_t, tt)) / mu
        hat_skip = (x_t - sigma * skip_only(x_t, tt)) / mu
    _, err_net = stats.energy_spectrum((hat_net - x0).numpy())
    _, err_skip = stats.energy_spectrum((hat_skip - x0).numpy())
    _, e_hat = stats.energy_spectrum(hat_net.numpy())
    for lo, hi in bands:
        e = e_data[lo:hi].sum()
        print(f"{t:.1f}  {mu.flatten()[0].item():.3f}  k {lo:2d}-{hi - 1:2d}  {err_net[lo:hi].sum() / e:10.3f}  "
              f"{err_skip[lo:hi].sum() / e:11.3f}  {err_net[lo:hi].sum() / err_skip[lo:hi].sum():8.2f}  "
              f"{e_hat[lo:hi].sum() / e:14.3f}")
