"""Issue 6: the Kolmogorov flow's mean field, and how much of the large-scale E(k) it carries.

The data's mean over trajectories and states, m (2, H, W) (the forcing sin(4y) drives a mean
u(y)), its energy spectrum over the data's E(k) for k = 1..8 (the share of each shell that the
mean flow carries), and then, for every sample file given (tensors (B, L, 2, H, W) saved by
sda_lowk_gate.py), per state the projection a = <x, m> / <m, m> onto the mean field: mean and std
of a for the samples against the held-out data's (data: mean 1 by construction on the training
split), and E(k) ratios k = 1..8 of the samples' mean-removed fluctuations x - a m against the data's.

    python3 bench/diagnostics/sda_lowk_meanfield.py DATA_DIR [SAMPLES.pt ...]
"""
import json
import sys

import numpy as np
import torch

from labkit.sda import stats
from labkit.sda.data import read_split


def project(x: torch.Tensor, m: torch.Tensor):
    """Per state a = <x, m> / <m, m>, and x - a m."""
    a = (x * m).sum(dim=(-3, -2, -1)) / m.square().sum()
    return a, x - a[..., None, None, None] * m


def r(v):
    return [round(float(u), 3) for u in v]


folder = sys.argv[1]
train = torch.as_tensor(np.asarray(read_split(f"{folder}/train.h5")[0])).double()
held = torch.as_tensor(np.concatenate([read_split(f"{folder}/valid.h5")[0], read_split(f"{folder}/test.h5")[0]])).double()
m = train.mean(dim=(0, 1))  # (2, H, W)
_, e_held = stats.energy_spectrum(held.numpy())
_, e_train = stats.energy_spectrum(train.numpy())
_, e_mean = stats.energy_spectrum(m[None, None].numpy())
# the mean flow's profile u(y): the data's axes are (..., x, y), so u averaged over axis -2
u_y = m[0].mean(dim=0)
print(json.dumps(dict(what="mean field", u_rms=round(m[0].square().mean().sqrt().item(), 4),
                      v_rms=round(m[1].square().mean().sqrt().item(), 4),
                      u_of_y_rms=round(u_y.square().mean().sqrt().item(), 4),
                      data_rms=round(held.square().mean().sqrt().item(), 4),
                      mean_share_of_train_E_k1_8=r(e_mean[1:9] / e_train[1:9]),
                      mean_share_of_held_E_k1_8=r(e_mean[1:9] / e_held[1:9]),
                      train_over_held_E_k1_8=r(e_train[1:9] / e_held[1:9]))))
# u(y)'s Fourier content: which wavenumbers in y carry the mean flow
uy_hat = torch.fft.rfft(u_y) / len(u_y)
print(json.dumps(dict(what="u(y) Fourier amplitudes |u_hat(ky)| ky=0..8", amp=r(uy_hat.abs()[:9] * 2))))
a_held, fluct_held = project(held, m)
a_train, _ = project(train, m)
_, e_fluct_held = stats.energy_spectrum(fluct_held.numpy())
print(json.dumps(dict(what="projection on m", a_train_mean=round(a_train.mean().item(), 3),
                      a_train_std=round(a_train.std().item(), 3), a_held_mean=round(a_held.mean().item(), 3),
                      a_held_std=round(a_held.std().item(), 3),
                      a_held_traj_means=r(a_held.mean(dim=1)))))
for path in sys.argv[2:]:
    x = torch.load(path).double()
    a, fluct = project(x, m)
    _, e_x = stats.energy_spectrum(x.numpy())
    _, e_f = stats.energy_spectrum(fluct.numpy())
    _, e_xm = stats.energy_spectrum(x.mean(dim=(0, 1))[None, None].numpy())
    print(json.dumps(dict(samples=path, a_mean=round(a.mean().item(), 3), a_std=round(a.std().item(), 3),
                          a_traj_means=r(a.mean(dim=1)),
                          ratio_k1_8=r(e_x[1:9] / e_held[1:9]),
                          fluct_ratio_k1_8=r(e_f[1:9] / e_fluct_held[1:9]),
                          sample_mean_field_E_over_data_mean_field_E_k1_8=r(e_xm[1:9] / np.maximum(e_mean[1:9], 1e-30)))))
