"""Issue 6: does the trained denoiser know the sign and size of the mean flow u = 0.45 sin(4y)?

The data's u carries a mean sin(4y) profile (coefficient c = <u, sin 4y> / <sin 4y, sin 4y>,
0.45 +- 0.14 on the CPU proxy's data). For held-out 16-state windows x0 noised to x_t at times t,
the run's denoised estimate x0_hat = (x_t - sigma eps(x_t, t)) / mu and its skip's alone (F = 0):
the mean of c(x0_hat) against c(x0), and the same for pure noise (x_t = sigma n, what the sampler
starts from), where the ideal x0_hat is the data's mean field (c = 0.45) at t -> 1.

    python3 bench/diagnostics/sda_lowk_meanflow_denoise.py RUN_DIR [RUN_DIR ...]   (data /tmp/kf_64_48)
"""
import json
import sys

import numpy as np
import torch

from labkit.sda.data import read_split
from labkit.sda.nn import kolmogorov_forcing
from labkit.sda.score import VPSDE, GaussianSkip
from labkit.sda.train import load_score

folder = "/tmp/kf_64_48"
held = torch.as_tensor(np.concatenate([read_split(f"{folder}/valid.h5")[0], read_split(f"{folder}/test.h5")[0]]))
x0 = held[:, :16].float()
f = kolmogorov_forcing(64)[0]


def coef(x):
    return ((x[..., 0, :, :] * f).mean(dim=(-2, -1)) / f.square().mean())


for run in sys.argv[1:]:
    score, config = load_score(run)
    score.eval()
    spec = score.spectrum if isinstance(score, GaussianSkip) else None
    skip = GaussianSkip(lambda x, t: torch.zeros_like(x), config.alpha, config.eta, spec)
    sde = VPSDE(score, tuple(x0.shape[1:]))
    g = torch.Generator().manual_seed(0)
    rows = []
    for t in (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99):
        tt = torch.full((len(x0),), t)
        mu, sigma = sde.mu(tt)[:, None, None, None, None], sde.sigma(tt)[:, None, None, None, None]
        noise = torch.randn(x0.shape, generator=g)
        with torch.no_grad():
            x_t = mu * x0 + sigma * noise
            hat = (x_t - sigma * score(x_t, tt)) / mu
            hat_skip = (x_t - sigma * skip(x_t, tt)) / mu
            pure = sigma * noise
            hat_pure = (pure - sigma * score(pure, tt)) / mu
        rows.append(dict(t=t, c_x0=round(coef(x0).mean().item(), 3), c_hat_net=round(coef(hat).mean().item(), 3),
                         c_hat_skip=round(coef(hat_skip).mean().item(), 3),
                         c_hat_net_from_pure_noise=round(coef(hat_pure).mean().item(), 3)))
    print(json.dumps(dict(run=run, loss=config.loss, skip_spectrum=config.skip_spectrum, rows=rows)), flush=True)
