"""A Gaussian model of whole trajectories, and a hand-off from it to the score network.

Why (issue 6, ``bench/results/cpu/diag-sda-lowk.log``): the largest scales of Kolmogorov flow
change slowly (the k = 1 modes keep a correlation of about 0.7 over 8 states), and the sampler
decides them at high noise. :class:`~labkit.sda.nn.MCScoreNet` builds a trajectory's eps from
windows of 5 states, which cannot hold that correlation: even an exact Gaussian process composed
that way gives samples with about 0.55 of the data's energy at k = 1. A Gaussian process over the
whole trajectory, with the data's mean field, power spectrum and time correlation, gets the large
scales right by construction; the network, which knows the small scales' non-Gaussian structure,
takes over below a noise level (:class:`Handoff`).

:class:`SpaceTimeGaussian` is the exact eps of that process: for the VP schedule
``x_t = mu x_0 + sigma n``, ``eps(x_t) = sigma Sigma^-1 (x_t - mu m)`` with ``Sigma = mu^2 K + sigma^2 I``.
The process is stationary in space and time, so in Fourier space (orthonormal ``rfft2``) each
wavevector k and channel c is independent, with covariance ``K = P(c, k) R_|k|`` over the L
states: ``P`` the power spectrum of the mean-removed states, ``R_s`` the Toeplitz matrix of the
shell's time correlation ``rho_s(|i - j|)``. With ``R = V diag(lam) V^T`` computed once,
``Sigma^-1 = V diag(1 / (mu^2 P lam + sigma^2)) V^T`` costs two small matrix products per call.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from labkit.sda.score import _call, _check_schedule, _device_of, _expand, _mu, _sigma, power_spectrum


def shell_index(height: int, width: int) -> torch.Tensor:
    """The rounded |k| of every ``rfft2`` wavevector of an (height, width) field: (height, width // 2 + 1)."""
    kx = torch.fft.fftfreq(height, d=1.0 / height, dtype=torch.float64)[:, None]
    ky = torch.fft.rfftfreq(width, d=1.0 / width, dtype=torch.float64)[None, :]
    return (kx**2 + ky**2).sqrt().round().long()


def time_correlation(trajectories: torch.Tensor, lags: int) -> torch.Tensor:
    """``rho[s, l]``: the correlation of the Fourier modes of shell ``s`` between states ``l`` apart.

    ``trajectories`` (N, T, C, H, W), already mean-removed; ``lags`` <= T. Second moments pooled
    over trajectories, start states, channels and the shell's wavevectors (the halved ``rfft2``
    columns counted twice), divided by lag 0's. Returns (shells, lags), float64.
    """
    if trajectories.dim() != 5:
        raise ValueError(f"trajectories must be (N, T, C, H, W), got shape {tuple(trajectories.shape)}")
    if not 1 <= lags <= trajectories.shape[1]:
        raise ValueError(f"lags must be in [1, T = {trajectories.shape[1]}], got {lags}")
    height, width = trajectories.shape[-2:]
    shell = shell_index(height, width).flatten()
    weight = torch.full((height, width // 2 + 1), 2.0, dtype=torch.float64)
    weight[:, 0] = 1.0
    if width % 2 == 0:
        weight[:, -1] = 1.0
    modes = torch.fft.rfft2(trajectories.double(), norm="ortho")  # (N, T, C, H, W2)
    # sum_s z[s + l] conj(z[s]) for every lag l at once: the inverse FFT of |FFT(z)|^2 along time,
    # zero-padded to 2T so that no lag wraps around (O(T log T) per mode instead of O(T^2)).
    steps = modes.shape[1]
    spectrum = torch.fft.fft(modes, n=2 * steps, dim=1)
    sums = torch.fft.ifft(spectrum.abs().square(), dim=1)[:, :lags].real  # (N, lags, C, H, W2)
    starts = torch.arange(steps, steps - lags, -1, dtype=torch.float64)  # T - l start states per lag
    products = sums.mean(dim=(0, 2)) / starts[:, None, None] * weight  # (lags, H, W2)
    rho = torch.zeros(int(shell.max()) + 1, lags, dtype=torch.float64)
    rho.index_add_(0, shell, products.flatten(1).T)
    return rho / rho[:, :1].clamp(min=1e-30)


class SpaceTimeGaussian(nn.Module):
    """eps(x_t, t) of a stationary Gaussian process over trajectories of ``length`` states.

    ``mean`` (C, H, W): the mean field; ``spectrum`` (C, H, W // 2 + 1): the power spectrum of
    the mean-removed states (:func:`~labkit.sda.score.power_spectrum`); ``correlation``
    (shells, >= length): :func:`time_correlation`. :meth:`fit` estimates all three from training
    trajectories. Inputs are trajectories (B, L, C, H, W) with ``L = length``, as
    :class:`~labkit.sda.score.VPSDE` samples them; :meth:`with_length` gives the same process for
    a shorter trajectory without fitting again. A Toeplitz matrix estimated from data need not
    be positive semi-definite: its negative eigenvalues are set to 0.
    """

    def __init__(self, mean: torch.Tensor, spectrum: torch.Tensor, correlation: torch.Tensor, length: int,
                 alpha: str = "cos", eta: float = 1e-3):
        super().__init__()
        _check_schedule(alpha, eta)
        if spectrum.dim() != 3 or mean.dim() != 3 or tuple(mean.shape[:2]) != tuple(spectrum.shape[:2]) \
                or mean.shape[-1] // 2 + 1 != spectrum.shape[-1]:
            raise ValueError(f"mean must be (C, H, W) and spectrum (C, H, W // 2 + 1), got {tuple(mean.shape)} "
                             f"and {tuple(spectrum.shape)}")
        height = spectrum.shape[1]
        shell = shell_index(height, mean.shape[-1])
        if correlation.dim() != 2 or correlation.shape[0] <= int(shell.max()) or correlation.shape[1] < length:
            raise ValueError(f"correlation must be (shells > {int(shell.max())}, lags >= length = {length}), "
                             f"got shape {tuple(correlation.shape)}")
        self.alpha, self.eta, self.length = alpha, float(eta), int(length)
        lag = (torch.arange(length)[:, None] - torch.arange(length)[None, :]).abs()
        toeplitz = correlation.double()[shell][..., lag]  # (H, W2, L, L)
        lam, vectors = torch.linalg.eigh(toeplitz)
        self.register_buffer("mean", mean.float())
        self.register_buffer("spectrum", spectrum.float())
        self.register_buffer("correlation", correlation.double())  # (shells, lags): for with_length
        self.register_buffer("vectors", vectors.float())  # (H, W2, L, L), columns are eigenvectors
        self.register_buffer("eigenvalues", lam.clamp(min=0).float())  # (H, W2, L)

    def with_length(self, length: int) -> "SpaceTimeGaussian":
        """The same process (same moments, schedule and device) for trajectories of ``length`` states;
        ``length`` at most the lags it was fitted with."""
        if length == self.length:
            return self
        return SpaceTimeGaussian(self.mean, self.spectrum, self.correlation, length, self.alpha, self.eta)

    @classmethod
    def fit(cls, trajectories: torch.Tensor, length: int, alpha: str = "cos", eta: float = 1e-3) -> "SpaceTimeGaussian":
        """The process of training trajectories (N, T, C, H, W), for samples of ``length`` <= T states."""
        trajectories = torch.as_tensor(trajectories)
        if trajectories.dim() != 5:
            raise ValueError(f"trajectories must be (N, T, C, H, W), got shape {tuple(trajectories.shape)}")
        mean = trajectories.double().mean(dim=(0, 1))
        centred = trajectories.double() - mean
        spectrum = power_spectrum(centred.float(), channels=trajectories.shape[2])
        return cls(mean, spectrum, time_correlation(centred, length), length, alpha, eta)

    def forward(self, x: torch.Tensor, t, c=None) -> torch.Tensor:
        if x.dim() != 5 or tuple(x.shape[1:]) != (self.length, *self.mean.shape):
            raise ValueError(f"x must be (B, {self.length}, {', '.join(map(str, self.mean.shape))}), "
                             f"got shape {tuple(x.shape)}")
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
        mu = _mu(t, self.alpha, self.eta)
        sigma = _sigma(mu, self.eta)
        if t.dim() == 0:
            mu, sigma = mu.expand(x.shape[0]), sigma.expand(x.shape[0])
        centred = x.float() - _expand(mu, x) * self.mean
        modes = torch.fft.rfft2(centred, norm="ortho").permute(0, 2, 3, 4, 1)  # (B, C, H, W2, L)
        vectors = self.vectors.to(modes.dtype)
        projected = (modes[..., None, :] @ vectors).squeeze(-2)  # V^T z for each mode: (B, C, H, W2, L)
        mu, sigma = mu[:, None, None, None, None], sigma[:, None, None, None, None]
        variance = mu**2 * self.spectrum[..., None] * self.eigenvalues + sigma**2  # (B, C, H, W2, L)
        scaled = projected * (sigma / variance)
        eps_modes = (vectors @ scaled[..., None]).squeeze(-1)  # V (scaled)
        eps = torch.fft.irfft2(eps_modes.permute(0, 4, 1, 2, 3), s=x.shape[-2:], norm="ortho")
        return eps.to(x.dtype)


class Handoff(nn.Module):
    """eps from ``high`` where t > ``t_switch``, from ``low`` elsewhere (per batch element).

    For sampling: ``high`` a model that gets the large scales right (:class:`SpaceTimeGaussian`),
    ``low`` the trained score network. Only the model a call needs is evaluated.
    """

    def __init__(self, high: nn.Module, low: nn.Module, t_switch: float):
        super().__init__()
        if not 0.0 <= t_switch <= 1.0:
            raise ValueError(f"t_switch must be in [0, 1], got {t_switch!r}")
        self.high, self.low, self.t_switch = high, low, float(t_switch)

    def forward(self, x: torch.Tensor, t, c=None) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        above = t > self.t_switch
        if bool(above.all()):
            return _call(self.high, x, t, c)
        if not bool(above.any()):
            return _call(self.low, x, t, c)
        return torch.where(_expand(above, x), _call(self.high, x, t, c), _call(self.low, x, t, c))


def with_handoff(score: nn.Module, gaussian: SpaceTimeGaussian | None, length: int,
                 t_switch: float | None) -> nn.Module:
    """The prior a sampler should use for trajectories of ``length`` states.

    ``t_switch`` None: ``score`` itself (the original). Otherwise a :class:`Handoff` from
    ``gaussian`` (fitted once to the training trajectories, for the longest ``length`` a run
    samples: :meth:`SpaceTimeGaussian.fit`), cut to ``length`` states and moved to ``score``'s
    device, to ``score`` below ``t_switch`` (the profile's ``sample_handoff``).
    """
    if t_switch is None:
        return score
    if gaussian is None:
        raise ValueError("a hand-off needs gaussian: SpaceTimeGaussian.fit(training trajectories, length)")
    return Handoff(gaussian.with_length(length).to(_device_of(score) or "cpu"), score, t_switch)
