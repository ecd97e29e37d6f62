"""Statistics of Kolmogorov-flow data, to set our generator against the original data.

All functions take velocity trajectories ``x`` of shape (n, T, 2, H, W) on [0, 2pi]^2 (the data
set's layout; a numpy array or a tensor) and average over trajectories, time and space.

``ORIGINAL`` holds the same statistics measured on the original data's generator (jax-cfd's
finite-volume solver, as the SDA data were made) and ``JAXCFD_SPECTRAL`` on jax-cfd's
pseudo-spectral solver from the same initial conditions: 4 trajectories x 64 coarse states
after the spin-up, from the project's research notes (``research-sda.md`` section 1.7). Four
trajectories are few: differences of a few percent at low wavenumbers are within their noise.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from labkit.sda.flow import KolmogorovFlow

__all__ = ["as_trajectories", "velocity_std", "kinetic_energy", "jet_profile", "jet_amplitude", "lag_correlation",
           "energy_spectrum", "vorticity_stats", "summary", "ORIGINAL", "JAXCFD_SPECTRAL"]

# Reference statistics (coarse 64^2 states; research notes section 1.7).
ORIGINAL = dict(std_u=1.006, std_v=0.927, kinetic_energy=0.936, jet_amplitude=0.455, vorticity_std=0.401,
                vorticity_p99=1.195, vorticity_kurtosis=4.17, corr_lag1=0.967, corr_lag5=0.639,
                spectrum={1: 0.287, 2: 0.243, 3: 0.149, 4: 0.185, 5: 0.034, 6: 0.018, 7: 0.0076, 8: 0.0044,
                          16: 1.8e-4, 31: 3.6e-6})
JAXCFD_SPECTRAL = dict(std_u=0.955, std_v=0.942, kinetic_energy=0.900, jet_amplitude=0.379, vorticity_std=0.390,
                       vorticity_p99=1.167, vorticity_kurtosis=4.25, corr_lag1=0.965, corr_lag5=0.650,
                       # E_spectral(k) / E_finite-volume(k)
                       spectrum_ratio={1: 1.12, 2: 0.88, 4: 0.85, 8: 1.09, 12: 1.12, 16: 1.22, 20: 1.28,
                                       24: 1.36, 28: 1.50, 31: 1.59})


def as_trajectories(x) -> torch.Tensor:
    """``x`` as a float64 tensor of shape (n, T, 2, H, W); a single trajectory (T, 2, H, W) gets n = 1."""
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if x.dim() == 4:
        x = x[None]
    if x.dim() != 5 or x.shape[2] != 2:
        raise ValueError(f"x must have shape (n, T, 2, H, W) or (T, 2, H, W), got {tuple(x.shape)}")
    return x.double()


def velocity_std(x) -> tuple[float, float]:
    """Standard deviation of u and of v over everything."""
    x = as_trajectories(x)
    return x[:, :, 0].std().item(), x[:, :, 1].std().item()


def kinetic_energy(x) -> float:
    """Kinetic energy per unit area, <(u^2 + v^2) / 2>."""
    return 0.5 * as_trajectories(x).pow(2).sum(dim=2).mean().item()


def jet_profile(x) -> torch.Tensor:
    """Mean u as a function of y (array axis -1), averaged over trajectories, time and x: shape (W,)."""
    return as_trajectories(x)[:, :, 0].mean(dim=(0, 1, 2))


def jet_amplitude(x, wavenumber: int = 4, offset: float = 0.5) -> float:
    """Amplitude a of the mean jet <u>(y) ~ a sin(k y), by projection on sin(k y).

    ``offset``: sample j sits at y = (j + offset) 2pi / W. A 4x4 block mean of a grid whose
    samples are at cell centres (offset 0.5) again has its samples at cell centres.
    """
    profile = jet_profile(x)
    y = (torch.arange(profile.numel(), dtype=torch.float64) + offset) * 2 * math.pi / profile.numel()
    return (2 * (profile * torch.sin(wavenumber * y)).mean()).item()


def lag_correlation(x, lag: int) -> float:
    """Pearson correlation of all values (u and v, every pixel) between states ``lag`` steps apart."""
    x = as_trajectories(x)
    if not 1 <= lag < x.shape[1]:
        raise ValueError(f"lag must be in [1, {x.shape[1] - 1}], got {lag}")
    a, b = x[:, :-lag].flatten(), x[:, lag:].flatten()
    return torch.corrcoef(torch.stack((a, b)))[0, 1].item()


def energy_spectrum(x) -> tuple[np.ndarray, np.ndarray]:
    """Isotropic kinetic-energy spectrum: (k, E(k)) for integer shells k = 0 .. W/2.

    E(k) sums |u_hat|^2 / 2 + |v_hat|^2 / 2 over the wavevectors whose length rounds to k, with
    u_hat = FFT(u) / (H W); the sum over all k is the kinetic energy per area.
    """
    x = as_trajectories(x)
    h, w = x.shape[-2:]
    power = (torch.fft.fft2(x).abs() ** 2).sum(dim=2).mean(dim=(0, 1)) / (h * w) ** 2 / 2
    kx = torch.fft.fftfreq(h, d=1.0 / h, dtype=torch.float64)[:, None]
    ky = torch.fft.fftfreq(w, d=1.0 / w, dtype=torch.float64)[None, :]
    shell = torch.sqrt(kx**2 + ky**2).round().long()
    kmax = min(h, w) // 2
    spectrum = torch.zeros(shell.max() + 1, dtype=torch.float64).index_add_(0, shell.flatten(), power.flatten())
    return np.arange(kmax + 1), spectrum[: kmax + 1].numpy()


def vorticity_stats(x) -> dict:
    """Std, 99th percentile of |w| and kurtosis of the vorticity in the original's convention (grid units)."""
    w = KolmogorovFlow.vorticity(as_trajectories(x), convention="sda").flatten()
    std = w.std()
    kurtosis = (((w - w.mean()) / std) ** 4).mean()
    # the 99th percentile from a strided sample: torch.quantile refuses inputs beyond 16M values
    sample = w.abs()[:: max(1, w.numel() // 4_000_000)]
    return dict(vorticity_std=std.item(), vorticity_p99=torch.quantile(sample, 0.99).item(),
                vorticity_kurtosis=kurtosis.item())


def summary(x, wavenumber: int = 4, offset: float = 0.5) -> dict:
    """Every statistic of ``ORIGINAL`` for ``x`` (lag 5 only when trajectories are longer than 5)."""
    x = as_trajectories(x)
    std_u, std_v = velocity_std(x)
    k, spectrum = energy_spectrum(x)
    out = dict(std_u=std_u, std_v=std_v, kinetic_energy=kinetic_energy(x),
               jet_amplitude=jet_amplitude(x, wavenumber, offset), **vorticity_stats(x),
               corr_lag1=lag_correlation(x, 1), corr_lag5=lag_correlation(x, 5) if x.shape[1] > 5 else float("nan"),
               spectrum={int(i): float(e) for i, e in zip(k, spectrum)})
    return out
