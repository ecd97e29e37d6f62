"""Issue 6: are the samples' large scales coherent in time, as the data's are?

For the held-out data and every sample file given (tensors (B, L, 2, H, W), e.g. saved by
sda_lowk_gate.py): per band of |k| (1, 2-3, 4, 5-8), the energy over the data's, and the lag-l
correlation of the Fourier modes along the trajectory, sum Re(x_k(s) conj x_k(s + l)) /
sum |x_k|^2 (over states, modes, channels, trajectories), for l = 1, 2, 4, 8; and the energy of the
band per state position (first, middle, last states) over the data's.

    python3 bench/diagnostics/sda_lowk_coherence.py DATA_DIR [SAMPLES.pt ...]
"""
import json
import sys

import numpy as np
import torch

from labkit.sda.data import read_split

BANDS = [(1, 1), (2, 3), (4, 4), (5, 8)]
LAGS = (1, 2, 4, 8)


def modes(x: torch.Tensor):
    """rfft2 (ortho) of (B, L, C, H, W) and the rounded |k| of each mode."""
    h, w = x.shape[-2:]
    f = torch.fft.fft2(x.double(), norm="ortho")
    kx = torch.fft.fftfreq(h, d=1.0 / h)[:, None]
    ky = torch.fft.fftfreq(w, d=1.0 / w)[None, :]
    return f, (kx**2 + ky**2).sqrt().round().long()


def describe(x: torch.Tensor, ref: dict | None = None) -> dict:
    f, shell = modes(x)
    out = {}
    for lo, hi in BANDS:
        sel = (shell >= lo) & (shell <= hi)
        band = f[..., sel]  # (B, L, C, M)
        energy = band.abs().square().mean().item()
        per_state = band.abs().square().mean(dim=(0, 2, 3))  # (L,)
        corr = []
        for lag in LAGS:
            if lag >= band.shape[1]:
                corr.append(None)
                continue
            num = (band[:, lag:] * band[:, :-lag].conj()).real.sum()
            den = 0.5 * (band[:, lag:].abs().square().sum() + band[:, :-lag].abs().square().sum())
            corr.append(round((num / den).item(), 3))
        name = f"k{lo}-{hi}" if hi > lo else f"k{lo}"
        out[name] = dict(energy=energy, corr_lags=corr, per_state=per_state)
    if ref is not None:
        for name, d in out.items():
            d["energy_ratio"] = round(d["energy"] / ref[name]["energy"], 3)
            ps = (d["per_state"] / ref[name]["per_state"].mean()).tolist()
            d["per_state_ratio_first_mid_last"] = [round(ps[0], 2), round(ps[len(ps) // 2], 2), round(ps[-1], 2)]
    return out


def clean(d: dict) -> dict:
    return {name: {k: v for k, v in b.items() if k not in ("energy", "per_state")} for name, b in d.items()}


folder = sys.argv[1]
held = torch.as_tensor(np.concatenate([read_split(f"{folder}/valid.h5")[0], read_split(f"{folder}/test.h5")[0]]))
ref = describe(held)
print(json.dumps(dict(samples="held-out data", lags=LAGS, **clean(ref))))
for path in sys.argv[2:]:
    x = torch.load(path)
    print(json.dumps(dict(samples=path, **clean(describe(x, ref)))), flush=True)
