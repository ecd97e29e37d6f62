"""The diffusion part of score-based data assimilation (SDA, Rozet & Louppe 2023).

Noising (a variance-preserving SDE, in closed form)::

    x_t = mu(t) x + sigma(t) eps,   eps ~ N(0, I),   t in [0, 1],
    sigma(t) = sqrt(1 - mu(t)^2 + eta^2),

with three choices of mu (``alpha`` below, as in the original code; eta = 1e-3 by default):

* ``'cos'``: mu = cos(omega t)^2 with omega = arccos(sqrt(eta)), so that mu(1) = eta exactly.
  Note the **square**: this is not the usual cosine schedule cos(pi t / 2).
* ``'lin'``: mu = 1 - (1 - eta) t;
* ``'exp'``: mu = exp(t^2 log eta)  (azula's ``VPSchedule``).

All three give mu(0) = 1, sigma(0) = eta, mu(1) = eta, sigma(1) = 1.

A network ``eps(x_t, t)`` is trained to predict the noise (``VPSDE.loss``); the score is then
grad log p_t(x_t) = -eps(x_t, t) / sigma(t). ``VPSDE.sample`` integrates from t = 1 to 0 with

* a predictor, the exponential integrator (= DDIM with eta = 0), exact when eps is constant::

      x_s = r x_t + (sigma_s - r sigma_t) eps(x_t, t),    r = mu_s / mu_t,   s = t - 1/steps;

* ``corrections`` Langevin corrector steps at the new time s: with the score -eps/sigma and the
  step size delta' = tau sigma^2 / mean(eps^2) (i.e. tau D / |score|^2, the paper's Eq. 17),
  x <- x + delta' score + sqrt(2 delta') z, which reads, in terms of eps and delta = tau / mean(eps^2),
  x <- x - sigma (delta eps - sqrt(2 delta) z)   (the original's eps form, no division by sigma).

Data assimilation replaces ``eps`` by a posterior one: :class:`GaussianScore` (SDA's
likelihood score with the variance std^2 + gamma (sigma/mu)^2) or :class:`DPSGaussianScore`
(the DPS baseline, a normalised gradient). Both take an inner :class:`VPSDE` that only provides
mu, sigma and the prior network, and are themselves the ``eps`` of an outer VPSDE that samples.

Conventions: the network is always called as ``eps(x, t)`` (or ``eps(x, t, c)`` when a
condition ``c`` is given) with ``x`` of shape (B, *shape) and ``t`` of shape (B,).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from labkit.sda.flow import KolmogorovFlow

__all__ = ["ALPHAS", "VPSDE", "schedule_table", "SEED_TABLE", "GaussianSkip", "power_spectrum", "GaussianScore",
           "DPSGaussianScore", "coarse_observation", "subsample", "saturating_vorticity"]

ALPHAS = ("cos", "lin", "exp")

# The design document's table (seed 002): t -> (mu, sigma) for 'cos', eta = 1e-3, as printed.
SEED_TABLE = {0.0: (1.00, 0.001), 0.25: (0.85, 0.53), 0.5: (0.50, 0.87), 0.75: (0.15, 0.99), 1.0: (0.001, 1.00)}


def _check_schedule(alpha: str, eta: float) -> None:
    if alpha not in ALPHAS:
        raise ValueError(f"alpha must be one of {ALPHAS}, got {alpha!r}")
    if not (isinstance(eta, (int, float)) and 0.0 < eta < 1.0):
        raise ValueError(f"eta must be a number in (0, 1) (the noise floor sigma(0) = mu(1)), got {eta!r}")


def _mu(t: torch.Tensor, alpha: str, eta: float) -> torch.Tensor:
    """The signal coefficient mu(t) of the schedule ``alpha`` (see the module docstring)."""
    if alpha == "cos":
        return torch.cos(math.acos(math.sqrt(eta)) * t) ** 2
    if alpha == "lin":
        return 1 - (1 - eta) * t
    return torch.exp(math.log(eta) * t**2)  # 'exp'


def _sigma(mu: torch.Tensor, eta: float) -> torch.Tensor:
    return (1 - mu**2 + eta**2).sqrt()


def schedule_table(alpha: str = "cos", eta: float = 1e-3,
                   ts: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0)) -> list[tuple[float, float, float, float]]:
    """Rows (t, mu, sigma, SNR = mu^2 / sigma^2) of a schedule, computed in float64.

    Against the design document's table (:data:`SEED_TABLE`, 'cos', eta = 1e-3): the end rows
    are right (mu(0) = 1, sigma(0) = 1e-3, mu(1) = 1e-3 and sigma(1) = 1, all exact), and so is
    sigma(0.75) = 0.9865 -> 0.99. The three middle rows are the eta -> 0 limit mu = cos(pi t / 2)^2
    (omega = pi/2 = 1.5708 instead of arccos(sqrt(1e-3)) = 1.5392), and five of their entries are
    wrong at the two decimals printed: mu(0.25) = 0.8591 (table 0.85), sigma(0.25) = 0.5118 (0.53,
    which is sqrt(1 - 0.85^2): computed from the rounded mu), mu(0.5) = 0.5158 (0.50),
    sigma(0.5) = 0.8567 (0.87), mu(0.75) = 0.1636 (0.15).
    """
    _check_schedule(alpha, eta)
    t = torch.as_tensor(list(ts), dtype=torch.float64)
    if t.dim() != 1 or ((t < 0) | (t > 1)).any():
        raise ValueError(f"ts must be a sequence of times in [0, 1], got {ts!r}")
    mu = _mu(t, alpha, eta)
    sigma = _sigma(mu, eta)
    return [(a, b, c, b**2 / c**2) for a, b, c in zip(t.tolist(), mu.tolist(), sigma.tolist())]


def _call(eps: Callable, x: torch.Tensor, t: torch.Tensor, c=None) -> torch.Tensor:
    return eps(x, t) if c is None else eps(x, t, c)


#: How :meth:`VPSDE.loss` weights the squared eps error over t.
LOSS_WEIGHTINGS = ("eps", "v")


def _device_of(module: nn.Module) -> torch.device | None:
    """The device of ``module``'s first parameter or buffer; None if it has neither."""
    tensors = list(module.state_dict().values())
    return tensors[0].device if tensors else None


def _expand(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Append singleton axes to t so that it broadcasts against x along x's leading axes."""
    return t.reshape(t.shape + (1,) * (x.dim() - t.dim()))


class VPSDE(nn.Module):
    """Variance-preserving diffusion with an epsilon network (see the module docstring).

    Args:
        eps: the noise estimator eps(x_t, t) -> same shape as x_t (an ``nn.Module``, whose
            parameters become this module's, or any callable, e.g. a guided score).
        shape: the event shape, e.g. (L, 2, 64, 64) for a trajectory; () for scalars.
        alpha: the schedule of mu(t), ``'cos'`` (default), ``'lin'`` or ``'exp'``.
        eta: the noise floor: sigma(0) = mu(1) = eta.
    """

    def __init__(self, eps: Callable, shape: Sequence[int] | int = (), alpha: str = "cos", eta: float = 1e-3):
        super().__init__()
        _check_schedule(alpha, eta)
        if not callable(eps):
            raise TypeError(f"eps must be a callable eps(x_t, t), got {type(eps).__name__}")
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if not all(isinstance(n, int) and n > 0 for n in shape):
            raise ValueError(f"shape must be a tuple of positive integers (the event shape), got {shape!r}")
        self.eps, self.shape, self.alpha, self.eta = eps, torch.Size(shape), alpha, float(eta)
        self.dims = tuple(range(-len(shape), 0))  # the event axes
        # Follows .to(device) / .double(): the device and dtype that sample() draws its noise in.
        self.register_buffer("_anchor", torch.empty(()), persistent=False)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.shape)}, alpha={self.alpha!r}, eta={self.eta:g}"

    def mu(self, t) -> torch.Tensor:
        return _mu(torch.as_tensor(t, dtype=self._anchor.dtype, device=self._anchor.device), self.alpha, self.eta)

    def sigma(self, t) -> torch.Tensor:
        return _sigma(self.mu(t), self.eta)

    def _check_x(self, x: torch.Tensor) -> None:
        n = len(self.shape)
        if not isinstance(x, torch.Tensor) or x.dim() != n + 1 or x.shape[1:] != self.shape:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (batch, *{tuple(self.shape)}), got {got}")

    def forward(self, x: torch.Tensor, t: torch.Tensor, train: bool = False):
        """Noise x (B, *shape) to times t (B,) or (): x_t, or (x_t, eps) when ``train`` (as the original)."""
        self._check_x(x)
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.dim() > 1 or (t.dim() == 1 and t.shape[0] != x.shape[0]):
            raise ValueError(f"t must be a scalar or of shape ({x.shape[0]},), got {tuple(t.shape)}")
        t = _expand(t, x)
        eps = torch.randn_like(x)
        x_t = self.mu(t) * x + self.sigma(t) * eps
        return (x_t, eps) if train else x_t

    def loss(self, x: torch.Tensor, c=None, weighting: str = "eps") -> torch.Tensor:
        """Epsilon matching, t ~ U(0, 1) per sample: the mean over all elements of w(t) (eps(x_t, t) - eps)^2.

        ``weighting='eps'`` (the original): w = 1. ``'v'``: w = 1 / mu(t)^2, the v-prediction loss
        (Salimans & Ho 2022): the error of v = (mu eps - sigma x) / (mu^2 + sigma^2), or of the
        network F inside :class:`GaussianSkip`, whose error reaches eps multiplied by mu. With w = 1
        such a network is hardly trained where mu is small (the weight of its error is mu^2, 1e-6
        at t = 1), and that is where the sampler decides the large scales. Use 'v' only with a
        skip: a plain eps network's error at t ~ 1 would be weighted up to 1e6.
        """
        if weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"weighting must be one of {LOSS_WEIGHTINGS}, got {weighting!r}")
        self._check_x(x)
        t = torch.rand(x.shape[0], dtype=x.dtype, device=x.device)
        x_t, eps = self.forward(x, t, train=True)
        error = (_call(self.eps, x_t, t, c) - eps).square()
        if weighting == "v":
            error = error / _expand(self.mu(t), error).square()
        return error.mean()

    @torch.no_grad()
    def sample(self, shape: Sequence[int] | int = (), c=None, steps: int = 64, corrections: int = 0,
               tau: float = 1.0, progress: bool = True, ancestral: float = 0.0) -> torch.Tensor:
        """Draw samples of shape (*shape, *self.shape), integrating from t = 1 down to t = 0.

        ``steps`` predictor steps on an even grid, each followed by ``corrections`` Langevin
        steps of relative size ``tau`` (the paper uses 256 steps, 1 correction, tau = 0.5 for
        Kolmogorov). ``ancestral`` in [0, 1] re-injects that fraction of the noise of DDPM's
        posterior q(x_s | x_t, x_0) at each predictor step (DDIM's eta: 0 is the exponential
        integrator, 1 ancestral sampling). Guided scores compute gradients inside (they
        re-enable autograd).
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        if isinstance(corrections, bool) or not isinstance(corrections, int) or corrections < 0:
            raise ValueError(f"corrections must be an integer >= 0, got {corrections!r}")
        if not tau > 0:
            raise ValueError(f"tau must be > 0 (the Langevin step size relative to sigma^2), got {tau!r}")
        if not 0 <= ancestral <= 1:
            raise ValueError(f"ancestral must be in [0, 1] (0: the exponential integrator), got {ancestral!r}")
        shape = torch.Size((shape,) if isinstance(shape, int) else shape)
        like = self._anchor
        x = torch.randn(shape + self.shape, dtype=like.dtype, device=like.device)
        x = x.reshape(-1, *self.shape)  # one batch axis for the network
        ones = torch.ones(x.shape[0], dtype=like.dtype, device=like.device)
        time = torch.linspace(1, 0, steps + 1, dtype=like.dtype, device=like.device)

        for i in tqdm(range(steps), desc="sampling", disable=not progress, leave=False):
            t, s = time[i], time[i + 1]
            # Predictor: exponential integrator from t to s, x_s = mu_s x0_hat + sigma_s eps, with
            # (ancestral > 0) part of sigma_s's noise fresh: the posterior's std is
            # sigma_s sqrt(sigma_t^2 - (mu_t / mu_s)^2 sigma_s^2) / sigma_t.
            r = self.mu(s) / self.mu(t)
            e = _call(self.eps, x, t * ones, c)
            if ancestral:
                sigma_s, sigma_t = self.sigma(s), self.sigma(t)
                spread = (sigma_t**2 - (sigma_s / r) ** 2).clamp(min=0).sqrt()
                fresh = ancestral * sigma_s * spread / sigma_t
                kept = (sigma_s**2 - fresh**2).clamp(min=0).sqrt()
                x = r * (x - sigma_t * e) + kept * e + fresh * torch.randn_like(x)
            else:
                x = r * x + (self.sigma(s) - r * self.sigma(t)) * e
            # Corrector: Langevin steps at s, with delta' = tau sigma^2 / mean(eps^2) (eps form).
            for _ in range(corrections):
                z = torch.randn_like(x)
                e = _call(self.eps, x, s * ones, c)
                e2 = e.square().mean(dim=self.dims, keepdim=True) if self.dims else e.square()
                delta = tau / e2
                x = x - self.sigma(s) * (delta * e - torch.sqrt(2 * delta) * z)
        return x.reshape(shape + self.shape)


def power_spectrum(states: torch.Tensor, channels: int = 2) -> torch.Tensor:
    """``E |rfft2(x)|^2`` per channel and wavevector of ``states`` of shape ``(..., channels, H, W)``.

    Orthonormal FFT: white noise of unit variance has 1 at every wavevector, and the mean over
    wavevectors (counting the halved ones twice) is the per-pixel variance. Returns
    ``(channels, H, W // 2 + 1)`` in float32: what :class:`GaussianSkip` takes as ``spectrum``.
    """
    if states.dim() < 3 or states.shape[-3] != channels:
        raise ValueError(f"states must be (..., {channels}, H, W), got shape {tuple(states.shape)}")
    x = states.reshape(-1, *states.shape[-3:]).float()
    power = torch.zeros(x.shape[-3], x.shape[-2], x.shape[-1] // 2 + 1, dtype=torch.float64)
    for chunk in x.split(256):  # bounded memory for a whole data set
        power += torch.fft.rfft2(chunk, norm="ortho").abs().square().sum(0, dtype=torch.float64)
    return (power / x.shape[0]).float()


class GaussianSkip(nn.Module):
    """An epsilon network with a skip: eps(x_t, t) = sigma x_t / (mu^2 + sigma^2) + mu F(x_t, t).

    Not in the original; an option (``TrainConfig.skip``) for short trainings. The first term is
    the exact eps of standard normal data, the network ``F`` learns the rest, scaled by mu.
    Why: the sampler's denoised estimate x_hat = (x_t - sigma eps) / mu divides by mu(1) = eta
    = 1e-3, so a plain eps network must learn the identity at t ~ 1 to about 1e-3 before its
    samples stop blowing up (after a short training they do blow up). With the skip, x_hat = mu x_t / (mu^2 +
    sigma^2) - sigma F: the network's error enters x_hat unamplified (an x-prediction at high noise,
    an eps-prediction at low noise, like EDM's preconditioning). The loss is unchanged.
    The term is elementwise, so wrapping a window network or the whole-trajectory MCScoreNet is
    the same function.

    ``spectrum`` (``TrainConfig.skip_spectrum``): the first term becomes the exact eps of
    stationary Gaussian data with that power spectrum (:func:`power_spectrum` of the training
    states), mode by mode in Fourier space: ``sigma x_hat(k) / (mu^2 P(k) + sigma^2)``. White
    unit-variance data (P = 1) gives back the term above. A flow's energy sits in its large
    scales, which white noise underweights; with the data's spectrum the skip alone already
    samples fields with the data's spectrum, and F only adds what is not Gaussian. The term acts
    on each state separately, so it too is the same for windows and whole trajectories: the
    channel axis holds the states' channels one state after the other (``(..., n * C, H, W)``
    or ``(..., n, C, H, W)``).

    ``scale_modes`` (with ``spectrum``; ``TrainConfig.skip_modes``) also scales the network's term
    mode by mode, ``mu sqrt(P(k) / (mu^2 P(k) + sigma^2)) F(k)``: F's effect on the denoised
    estimate is then ``sqrt(V(k))`` times F, with V the Gaussian model's posterior variance of that
    mode (EDM's output scaling, per Fourier mode). Without it F moves every mode by ``sigma``; at high
    noise that is far more than the little a small scale can still be uncertain about, and a
    trained F was seen to put 2-3x the data's energy into the smallest scales of its estimate there
    (bench/results/nvidia-h100-80gb-hbm3/diag-sda-denoise.log). White data (P = 1) gives back the
    plain skip up to the factor ``1 / sqrt(mu^2 + sigma^2)`` (between 0.7 and 1). On the CPU proxy
    of issue 6 (bench/results/cpu/diag-sda-proxy.log) it did not help: with the v loss the samples'
    worst E(k) ratio for k <= 16 fell from 0.58 to 0.49 without the corrector, and with one
    correction the forcing mode grew 4.7x; with the eps loss the coarse SDA residual stayed at 0.14.
    It did remove the small-scale excess (the denoiser's estimate there at 0.06-0.1 of the data's
    energy, not above it): that excess is not what keeps the samples' spectra off.
    """

    def __init__(self, net: nn.Module, alpha: str = "cos", eta: float = 1e-3, spectrum: torch.Tensor | None = None,
                 scale_modes: bool = False):
        super().__init__()
        _check_schedule(alpha, eta)
        if scale_modes and spectrum is None:
            raise ValueError("scale_modes=True scales the network mode by mode with the data's spectrum: pass spectrum=")
        self.net, self.alpha, self.eta, self.scale_modes = net, alpha, float(eta), bool(scale_modes)
        if spectrum is not None:
            spectrum = torch.as_tensor(spectrum, dtype=torch.float32)
            if spectrum.dim() != 3 or not torch.all(torch.isfinite(spectrum)) or torch.any(spectrum < 0):
                raise ValueError("spectrum must be a finite, non-negative (channels, H, W // 2 + 1) tensor "
                                 f"(labkit.sda.score.power_spectrum), got shape {tuple(spectrum.shape)}")
        self.register_buffer("spectrum", spectrum, persistent=False)

    def forward(self, x: torch.Tensor, t, c=None) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)
        mu = _mu(t, self.alpha, self.eta)
        sigma = _sigma(mu, self.eta)
        out = _call(self.net, x, t, c)
        if self.spectrum is None:
            mu, sigma = _expand(mu, x), _expand(sigma, x)
            return (sigma / (mu**2 + sigma**2)) * x + mu * out
        if self.scale_modes:
            return self._gaussian_eps(x, mu, sigma, out)
        return self._gaussian_eps(x, mu, sigma) + _expand(mu, x) * out

    def _gaussian_eps(self, x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor,
                      out: torch.Tensor | None = None) -> torch.Tensor:
        """The Gaussian term (plus, given ``out``, the network's term scaled mode by mode)."""
        channels, height, half = self.spectrum.shape
        # rfft2 keeps W // 2 + 1 columns, so the width is compared that way (odd widths too)
        if (x.shape[-2], x.shape[-1] // 2 + 1) != (height, half) or x.shape[-3] % channels:
            raise ValueError(f"x of shape {tuple(x.shape)} does not fit the skip's spectrum {tuple(self.spectrum.shape)} "
                             f"(channels, H, W // 2 + 1): states of {channels} channels of {height} rows expected")
        states = x.float().unflatten(-3, (-1, channels))  # (..., n, C, H, W)
        mu, sigma = _expand(mu, states), _expand(sigma, states)
        modes = torch.fft.rfft2(states, norm="ortho")
        marginal = mu**2 * self.spectrum + sigma**2  # the variance of each mode of x_t
        eps_modes = sigma * modes / marginal
        if out is not None:
            net_modes = torch.fft.rfft2(out.float().unflatten(-3, (-1, channels)), norm="ortho")
            eps_modes = eps_modes + mu * (self.spectrum / marginal).sqrt() * net_modes
        eps = torch.fft.irfft2(eps_modes, s=x.shape[-2:], norm="ortho")
        return eps.flatten(-4, -3)


class GaussianScore(nn.Module):
    """SDA's posterior epsilon for y = A(x) + noise, noise ~ N(0, std^2), as a callable eps'(x_t, t).

    With the prior's x_hat = (x_t - sigma eps(x_t, t)) / mu (Tweedie's denoised estimate), the
    likelihood is approximated by p(y | x_t) = N(y | A(x_hat), std^2 + gamma (sigma / mu)^2): the
    gamma term stands in for the unknown covariance of x given x_t, and keeps the guidance weak
    while mu is small (mu(1) = 1e-3 amplifies x_hat 1000x). Then

        eps'(x_t, t) = eps(x_t, t) - sigma grad_{x_t} log p(y | x_t),

    the gradient flowing through A and through the network (``detach=True`` skips the latter:
    cheaper, a cruder approximation). ``sde`` is a :class:`VPSDE` whose ``eps`` is the prior
    network; only its mu, sigma and eps are used (its shape is ignored). ``A`` must keep the
    leading batch axis of x and may be non-linear; ``std`` is a number or broadcasts against y.
    """

    def __init__(self, y: torch.Tensor, A: Callable, std, sde: VPSDE, gamma: float = 1e-2, detach: bool = False):
        super().__init__()
        if not callable(A):
            raise TypeError("A must be a callable observation operator A(x)")
        if not isinstance(sde, VPSDE):
            raise TypeError(f"sde must be a VPSDE (it provides mu, sigma and the prior eps), got {type(sde).__name__}")
        if not torch.all(torch.as_tensor(std) > 0) or not gamma >= 0:
            raise ValueError(f"std must be > 0 and gamma >= 0, got std={std!r}, gamma={gamma!r}")
        self.register_buffer("y", torch.as_tensor(y))
        self.register_buffer("std", torch.as_tensor(std, dtype=self.y.dtype))
        self.A, self.sde, self.gamma, self.detach = A, sde, float(gamma), detach

    def forward(self, x: torch.Tensor, t: torch.Tensor, c=None) -> torch.Tensor:
        mu, sigma = _expand(self.sde.mu(t), x), _expand(self.sde.sigma(t), x)
        if self.detach:
            with torch.no_grad():
                eps = _call(self.sde.eps, x, t, c)
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            if not self.detach:
                eps = _call(self.sde.eps, x, t, c)
            x_hat = (x - sigma * eps) / mu
            err = self.y - self.A(x_hat)
            var = self.std**2 + self.gamma * _expand(self.sde.sigma(t) / self.sde.mu(t), err) ** 2
            log_p = -(err.square() / var).sum() / 2  # summed over the batch: samples stay independent
        (grad,) = torch.autograd.grad(log_p, x)
        return eps.detach() - sigma * grad


class DPSGaussianScore(nn.Module):
    """The DPS baseline (Chung et al. 2023) as a posterior epsilon eps'(x_t, t).

    The likelihood gradient is replaced by a normalised one, ignoring the noise level of y:
    s = -zeta grad_{x_t} |y - A(x_hat)|^2 / |y - A(x_hat)|, eps' = eps - sigma s. The norm is
    taken per sample (the original takes it over the whole batch, which couples the samples;
    the two agree for one sample at a time).
    """

    def __init__(self, y: torch.Tensor, A: Callable, sde: VPSDE, zeta: float = 1.0):
        super().__init__()
        if not callable(A):
            raise TypeError("A must be a callable observation operator A(x)")
        if not isinstance(sde, VPSDE):
            raise TypeError(f"sde must be a VPSDE (it provides mu, sigma and the prior eps), got {type(sde).__name__}")
        if not zeta > 0:
            raise ValueError(f"zeta must be > 0, got {zeta!r}")
        self.register_buffer("y", torch.as_tensor(y))
        self.A, self.sde, self.zeta = A, sde, float(zeta)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c=None) -> torch.Tensor:
        mu, sigma = _expand(self.sde.mu(t), x), _expand(self.sde.sigma(t), x)
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            eps = _call(self.sde.eps, x, t, c)
            r = self.y - self.A((x - sigma * eps) / mu)
            sq = r.square().reshape(*r.shape[:r.dim() - self.y.dim()], -1).sum(-1)  # |y - A(x_hat)|^2 per sample
            total = sq.sum()
        (grad,) = torch.autograd.grad(total, x)
        s = -self.zeta * grad / _expand(sq.detach().sqrt().clamp_min(1e-12), x)
        return eps.detach() - sigma * s


# ---------------------------------------------------------------------------------- observation operators
# Trajectories have shape (..., L, 2, H, W): states, channels (u, v), x, y (the data set's layout).

def _check_trajectory(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 4 or x.shape[-3] != 2:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a trajectory of shape (..., L, 2, H, W), got {got}")


def _positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def coarse_observation(x: torch.Tensor, every: int = 4, factor: int = 8) -> torch.Tensor:
    """Every ``every``-th state, ``factor`` x ``factor`` block means (paper Fig. 4): (..., ceil(L/4), 2, 8, 8)."""
    _check_trajectory(x)
    _positive_int(every, "every")
    return KolmogorovFlow.coarsen(x[..., ::every, :, :, :], factor)


def subsample(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Keep every ``stride``-th grid point along both spatial axes: x[..., ::stride, ::stride]."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError("x must be a tensor of shape (..., H, W)")
    _positive_int(stride, "stride")
    return x[..., ::stride, ::stride]


def saturating_vorticity(x: torch.Tensor, every: int = 3, factor: int = 4, crop: tuple[int, int] = (2, 14)):
    """A non-linear observation (paper Fig. 7): w / (1 + |w|) of the coarsened states' vorticity.

    Every ``every``-th state, coarsened ``factor`` x, vorticity in the original's convention
    (unit grid spacing, sign-flipped: ``KolmogorovFlow.vorticity``), saturated, and the centre
    crop ``[a:b, a:b]``: (..., ceil(L/3), 12, 12) for 64 x 64 states.
    """
    _check_trajectory(x)
    _positive_int(every, "every")
    a, b = crop
    if not (0 <= a < b <= x.shape[-1] // factor):
        raise ValueError(f"crop must be (a, b) with 0 <= a < b <= {x.shape[-1] // factor}, got {crop!r}")
    w = KolmogorovFlow.vorticity(KolmogorovFlow.coarsen(x[..., ::every, :, :, :], factor))
    return (w / (1 + w.abs()))[..., a:b, a:b]
