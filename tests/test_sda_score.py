"""Tests of ``labkit.sda.score``: schedules, loss, sampler, guidance, observation operators.

The sampler is checked on a Gaussian data distribution N(m, s^2 I), whose noise predictor is
known in closed form: x_t ~ N(mu m, mu^2 s^2 + sigma^2), so

    eps*(x_t, t) = -sigma grad log p_t(x_t) = sigma (x_t - mu m) / (mu^2 s^2 + sigma^2),

and, with a linear A and y = A x + N(0, std^2), so is the posterior. Small sizes, CPU, float32.
"""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from labkit.sda.score import (ALPHAS, SEED_TABLE, VPSDE, DPSGaussianScore, GaussianScore, GaussianSkip, power_spectrum,
                              coarse_observation,
                              saturating_vorticity, schedule_table, subsample)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def gaussian_sde(m, s, alpha="cos"):
    """A VPSDE whose eps is the exact noise predictor of N(m, s^2 I)."""
    sde = VPSDE(lambda x, t: None, shape=m.shape, alpha=alpha)

    def exact_eps(x, t):
        assert t.shape == x.shape[:1]  # the network always gets t of shape (B,)
        mu, sigma = sde.mu(t)[:, None], sde.sigma(t)[:, None]
        return sigma * (x - mu * m) / (mu**2 * s**2 + sigma**2)

    sde.eps = exact_eps
    return sde


# ------------------------------------------------------------------------------------------ schedules
@pytest.mark.parametrize("alpha", ALPHAS)
def test_schedule_endpoints_and_monotonicity(alpha):
    eta = 1e-3
    (t0, mu0, sigma0, _), (t1, mu1, sigma1, _) = schedule_table(alpha, eta, ts=(0.0, 1.0))
    assert (mu0, mu1, sigma1) == pytest.approx((1.0, eta, 1.0), rel=1e-12)
    assert sigma0 == pytest.approx(eta, rel=1e-9)
    rows = schedule_table(alpha, eta, ts=torch.linspace(0, 1, 201).tolist())
    mu, sigma, snr = (torch.tensor([r[i] for r in rows], dtype=torch.float64) for i in (1, 2, 3))
    assert (mu.diff() < 0).all() and (sigma.diff() > 0).all() and (snr.diff() < 0).all()
    # The VPSDE module computes the same numbers.
    sde = VPSDE(nn.Identity(), shape=(3,), alpha=alpha).double()
    assert torch.allclose(sde.mu(torch.linspace(0, 1, 201, dtype=torch.float64)), mu)


def test_cos_is_the_square_of_a_cosine():
    rows = schedule_table("cos", 1e-3, ts=(0.5,))
    omega = math.acos(math.sqrt(1e-3))
    assert rows[0][1] == pytest.approx(math.cos(omega * 0.5) ** 2)
    assert rows[0][1] == pytest.approx(0.515811, abs=1e-6)


def test_seed_table_is_the_eta_to_zero_limit():
    """The design document's middle rows are cos(pi t / 2)^2, not the eta = 1e-3 schedule."""
    ts = sorted(SEED_TABLE)
    ours = {t: (round(mu, 2), round(sigma, 2)) for t, mu, sigma, _ in schedule_table("cos", 1e-3, ts)}
    assert ours[0.0] == (1.0, 0.0) and ours[1.0] == (0.0, 1.0)  # right (1, 1e-3, 1e-3, 1 exactly)
    assert ours[0.25] == (0.86, 0.51) and SEED_TABLE[0.25] == (0.85, 0.53)
    assert ours[0.5] == (0.52, 0.86) and SEED_TABLE[0.5] == (0.50, 0.87)
    assert ours[0.75] == (0.16, 0.99) and SEED_TABLE[0.75] == (0.15, 0.99)
    for t in (0.25, 0.5, 0.75):
        assert round(math.cos(math.pi * t / 2) ** 2, 2) == SEED_TABLE[t][0]


# ------------------------------------------------------------------------------------------ loss
def test_forward_noising_shapes_and_moments():
    sde = VPSDE(nn.Identity(), shape=(2, 3))
    x = torch.ones(4096, 2, 3)
    x_t, eps = sde(x, torch.full((4096,), 0.5), train=True)
    assert x_t.shape == eps.shape == x.shape
    assert torch.allclose(x_t, sde.mu(0.5) * x + sde.sigma(0.5) * eps)
    assert sde(x, torch.tensor(0.0)).sub(x).abs().max() < 0.01  # sigma(0) = 1e-3


class LinearEps(nn.Module):
    """The tiniest eps network: a linear map of (x_t, t)."""

    def __init__(self, dim):
        super().__init__()
        self.linear = nn.Linear(dim + 1, dim)

    def forward(self, x, t):
        return self.linear(torch.cat((x, t[:, None]), dim=-1))


def test_loss_is_finite_and_decreases():
    dim = 8
    m = torch.linspace(-2, 2, dim)
    sde = VPSDE(LinearEps(dim), shape=(dim,))
    opt = torch.optim.Adam(sde.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = sde.loss(m + 0.5 * torch.randn(256, dim))
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10


# ------------------------------------------------------------------------------------------ sampler
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("corrections, tau", [(0, 1.0), (1, 0.05)])
def test_sampler_recovers_a_gaussian(alpha, corrections, tau):
    m, s = torch.linspace(-2, 3, 64), 0.5
    x = gaussian_sde(m, s, alpha).sample((512,), steps=256, corrections=corrections, tau=tau, progress=False)
    assert x.shape == (512, 64)
    z = (x - m) / s  # should be standard normal
    assert z.mean().abs() < 0.03
    assert abs(x.std(0).mean().item() / s - 1) < 0.05
    assert (x.mean(0) - m).abs().max() < 0.25 * s


@pytest.mark.parametrize("alpha", ALPHAS)
def test_ancestral_sampler_recovers_a_gaussian(alpha):
    """ancestral = 1 (DDPM's posterior noise at every step) samples the same Gaussian."""
    m, s = torch.linspace(-2, 3, 64), 0.5
    torch.manual_seed(0)
    x = gaussian_sde(m, s, alpha).sample((512,), steps=256, progress=False, ancestral=1.0)
    assert abs(x.std(0).mean().item() / s - 1) < 0.05
    assert (x.mean(0) - m).abs().max() < 0.25 * s
    with pytest.raises(ValueError, match="ancestral must be in"):
        gaussian_sde(m, s, alpha).sample((2,), steps=2, progress=False, ancestral=1.5)


def test_corrector_inflates_the_variance_with_large_tau():
    """The corrector is an unadjusted Langevin step of size tau * Var: on a Gaussian its relative
    variance excess e obeys e <- (1 - tau)^2 e + tau^2, a fixed point tau / (2 - tau) (1/3 for tau = 0.5)."""
    m, s = torch.zeros(64), 1.0
    x = gaussian_sde(m, s).sample((256,), steps=256, corrections=1, tau=0.5, progress=False)
    assert 1.2 < x.var(0).mean().item() < 1.4


def test_sample_shapes():
    sde = VPSDE(lambda x, t: torch.zeros_like(x), shape=(2, 3))
    assert sde.sample(steps=2, progress=False).shape == (2, 3)
    assert sde.sample((4, 5), steps=2, corrections=1, progress=False).shape == (4, 5, 2, 3)
    scalar = VPSDE(lambda x, t: torch.zeros_like(x), shape=())
    assert scalar.sample(7, steps=2, corrections=1, progress=False).shape == (7,)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_gaussian_skip(alpha):
    """F = 0 gives the exact eps of N(0, I); a network error enters x_hat as -sigma F, not divided by mu."""
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    skip = GaussianSkip(zero, alpha)
    exact = gaussian_sde(torch.zeros(8), 1.0, alpha)
    x, t = torch.randn(5, 8), torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0])
    torch.testing.assert_close(skip(x, t), exact.eps(x, t))
    samples = VPSDE(skip, (64,), alpha=alpha).sample((256,), steps=64, progress=False)
    assert abs(samples.std().item() - 1) < 0.05
    # an error of 0.1 in F at t = 1 moves x_hat by sigma * 0.1 = 0.1; a plain eps network's by 0.1 / eta = 100
    wrong = GaussianSkip(lambda x, t: torch.full_like(x, 0.1), alpha)
    sde = VPSDE(wrong, (8,), alpha=alpha)
    t1 = torch.ones(5)
    x_hat = (x - sde.sigma(t1)[:, None] * wrong(x, t1)) / sde.mu(t1)[:, None]
    x_hat_exact = (x - sde.sigma(t1)[:, None] * skip(x, t1)) / sde.mu(t1)[:, None]
    torch.testing.assert_close(x_hat - x_hat_exact, torch.full_like(x, -0.1), rtol=0, atol=1e-3)


def _gaussian_field(n, spectrum, generator):
    """n stationary Gaussian states with the given (C, H, W // 2 + 1) power spectrum."""
    channels, height, half = spectrum.shape
    white = torch.randn(n, channels, height, 2 * (half - 1), generator=generator)
    return torch.fft.irfft2(spectrum.sqrt() * torch.fft.rfft2(white, norm="ortho"), s=white.shape[-2:], norm="ortho")


def test_spectral_gaussian_skip():
    """With a spectrum the skip is the exact eps of stationary Gaussian data of that spectrum:
    P = 1 gives the white skip back, and with F = 0 the sampler draws fields of spectrum P."""
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    white, flat = GaussianSkip(zero), GaussianSkip(zero, spectrum=torch.ones(2, 8, 5))
    t = torch.tensor([0.0, 0.3, 1.0])
    for x in (torch.randn(3, 4, 2, 8, 8), torch.randn(3, 10, 8, 8)):  # trajectories, flattened windows
        torch.testing.assert_close(flat(x, t), white(x, t), rtol=1e-5, atol=1e-5)
    # a red spectrum, as a flow's: energy falling off as 1 / (1 + |k|^2)^2, the two channels apart
    ky, kx = torch.fft.fftfreq(8, 1 / 8).abs()[:, None], torch.arange(5.0)[None, :]
    red = torch.stack([4.0 / (1 + kx**2 + ky**2) ** 2, 1.0 / (1 + kx**2 + ky**2)])
    g = torch.Generator().manual_seed(0)
    measured = power_spectrum(_gaussian_field(4096, red, g))
    assert torch.allclose(measured, red, rtol=0.15)
    # 256 predictor steps: the exponential integrator's step is exact only for white data, and
    # with 64 steps the weakest modes come out 37% low; no corrector (with one, its step size,
    # set by the mean eps^2 over all modes, is too large for the weakest ones here: 40x)
    sampled = VPSDE(GaussianSkip(zero, spectrum=red), (2, 8, 8)).sample((512,), steps=256, progress=False)
    ratio = power_spectrum(sampled) / red
    assert ratio.mean().item() == pytest.approx(1, abs=0.05) and ((ratio - 1).abs() < 0.3).all()
    # the white skip samples white fields: far from this spectrum at the large scales
    white_samples = VPSDE(white, (2, 8, 8)).sample((512,), steps=64, progress=False)
    assert (power_spectrum(white_samples)[0, 0, 0] / red[0, 0, 0]) < 0.5  # P = 4 there
    with pytest.raises(ValueError, match="does not fit"):
        flat(torch.randn(3, 3, 8, 8), t)
    with pytest.raises(ValueError, match="non-negative"):
        GaussianSkip(zero, spectrum=-torch.ones(2, 8, 5))
    with pytest.raises(ValueError, match="states must be"):
        power_spectrum(torch.randn(4, 3, 8, 8))


def test_skip_scaling_the_network_mode_by_mode():
    """scale_modes: the network's term is mu sqrt(P / (mu^2 P + sigma^2)) F per Fourier mode: for
    white data the plain skip's mu F divided by sqrt(mu^2 + sigma^2); a mode without energy gets none of F."""
    from labkit.sda.score import _mu, _sigma

    net = lambda x, t: torch.sin(3 * x) + 0.5  # noqa: E731  (any F with all modes, the mean one included)
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    t = torch.tensor([0.05, 0.4, 0.9])
    x = torch.randn(3, 4, 2, 8, 8)
    white = GaussianSkip(net)
    scaled = GaussianSkip(net, spectrum=torch.ones(2, 8, 5), scale_modes=True)
    gaussian = GaussianSkip(zero)(x, t)
    mu = _mu(t, "cos", 1e-3)
    norm = (mu**2 + _sigma(mu, 1e-3) ** 2).sqrt()[:, None, None, None, None]
    torch.testing.assert_close(scaled(x, t) - gaussian, (white(x, t) - gaussian) / norm, rtol=1e-4, atol=1e-5)
    # a spectrum with no energy in the mean mode (as a flow's): F's mean does not reach eps there
    spectrum = torch.ones(2, 8, 5)
    spectrum[:, 0, 0] = 0
    out = GaussianSkip(net, spectrum=spectrum, scale_modes=True)(x, t) - GaussianSkip(zero, spectrum=spectrum)(x, t)
    assert out.mean(dim=(-2, -1)).abs().max() < 1e-5
    assert out.abs().max() > 0.01  # the other modes do
    with pytest.raises(ValueError, match="pass spectrum="):
        GaussianSkip(net, scale_modes=True)


def test_v_weighting_is_the_error_of_the_skipped_network():
    """loss(weighting='v') = mean((eps' - eps)^2 / mu^2), which under GaussianSkip is the plain mean
    squared error of F against its target (mu eps - sigma x) / (mu^2 + sigma^2)."""
    data = torch.randn(64, 8) * 2 + 1
    net = lambda x, t: 0.3 * x + t[:, None]  # noqa: E731  some F, not the right one
    sde = VPSDE(GaussianSkip(net), (8,))
    torch.manual_seed(0)
    v_loss = sde.loss(data, weighting="v")
    torch.manual_seed(0)  # the same t and eps, drawn again by hand
    t = torch.rand(64)
    x_t, eps = sde(data, t, train=True)
    mu, sigma = sde.mu(t)[:, None], sde.sigma(t)[:, None]
    target = (mu * eps - sigma * data) / (mu**2 + sigma**2)
    torch.testing.assert_close(v_loss, (net(x_t, t) - target).square().mean(), rtol=1e-4, atol=0)
    torch.manual_seed(0)
    eps_loss = sde.loss(data)
    torch.testing.assert_close(eps_loss, ((net(x_t, t) - target).square() * mu**2).mean(), rtol=1e-4, atol=0)
    with pytest.raises(ValueError, match="weighting must be one of"):
        sde.loss(data, weighting="snr")


# ------------------------------------------------------------------------------------------ guidance
def linear_problem(dim=16, k=8, std=0.1):
    m, s = torch.linspace(-1, 1, dim), 1.0
    A_matrix = torch.randn(k, dim) / dim**0.5
    A = lambda x: x @ A_matrix.T  # noqa: E731
    y = A(m + s * torch.randn(dim)) + std * torch.randn(k)
    cov = torch.linalg.inv(torch.eye(dim) / s**2 + A_matrix.T @ A_matrix / std**2)
    mean = cov @ (m / s**2 + A_matrix.T @ y / std**2)
    return m, s, A, y, mean, cov


@pytest.mark.parametrize("corrections, tau", [(0, 1.0), (1, 0.1)])
def test_gaussian_score_matches_the_analytic_posterior(corrections, tau):
    std = 0.1
    m, s, A, y, mean, cov = linear_problem(std=std)
    sde = VPSDE(GaussianScore(y, A, std, gaussian_sde(m, s)), shape=m.shape)
    x = sde.sample((1024,), steps=256, corrections=corrections, tau=tau, progress=False)
    assert torch.isfinite(x).all()
    # The posterior mean, relative to how far the observation moves it from the prior mean.
    assert (x.mean(0) - mean).norm() < 0.15 * (m - mean).norm()
    # ... and in units of the posterior standard deviation (10 seeds: at most 0.21 without, 0.12 with correction).
    post_std = cov.diag().sqrt().mean().item()
    assert (x.mean(0) - mean).abs().max() < 0.3 * post_std
    assert x.std(0).mean().item() == pytest.approx(post_std, rel=0.1)


def test_dps_reduces_the_residual():
    m, s, A, y, _, _ = linear_problem()
    prior = gaussian_sde(m, s).sample((256,), steps=64, progress=False)
    sde = VPSDE(DPSGaussianScore(y, A, gaussian_sde(m, s)), shape=m.shape)
    x = sde.sample((256,), steps=64, progress=False)
    assert torch.isfinite(x).all()
    assert (A(x) - y).std() < 0.6 * (A(prior) - y).std()


# ------------------------------------------------------------------------------------------ observations
def test_observation_operators():
    x = torch.randn(3, 29, 2, 64, 64)
    y = coarse_observation(x)
    assert y.shape == (3, 8, 2, 8, 8)
    assert torch.allclose(y[:, 2], F.avg_pool2d(x[:, 8], 8), atol=1e-6)  # state 8 = 3rd observed
    assert subsample(x, 4).shape == (3, 29, 2, 16, 16)
    assert torch.equal(subsample(x, 4)[..., 1, 2], x[..., 4, 8])
    w = saturating_vorticity(x[:, :8])
    assert w.shape == (3, 3, 12, 12) and w.abs().max() < 1
    # Gradients flow through all three (they are used inside the guidance).
    x.requires_grad_(True)
    (coarse_observation(x).sum() + subsample(x, 2).sum() + saturating_vorticity(x).sum()).backward()
    assert torch.isfinite(x.grad).all()


# ------------------------------------------------------------------------------------------ errors
def test_clear_errors():
    net = nn.Identity()
    with pytest.raises(ValueError, match="alpha must be one of"):
        VPSDE(net, shape=(2,), alpha="cosine")
    with pytest.raises(ValueError, match="eta"):
        VPSDE(net, shape=(2,), eta=0.0)
    with pytest.raises(ValueError, match="shape"):
        VPSDE(net, shape=(2, 0))
    with pytest.raises(TypeError, match="callable"):
        VPSDE("net", shape=(2,))
    sde = VPSDE(lambda x, t: torch.zeros_like(x), shape=(2,))
    with pytest.raises(ValueError, match="steps"):
        sde.sample(steps=0)
    with pytest.raises(ValueError, match="tau"):
        sde.sample(steps=4, corrections=1, tau=0.0)
    with pytest.raises(ValueError, match="tau"):
        sde.sample(steps=4, tau=-1.0)
    with pytest.raises(ValueError, match="corrections"):
        sde.sample(steps=4, corrections=-1)
    with pytest.raises(ValueError, match=r"shape \(batch"):
        sde.loss(torch.randn(4, 3))
    with pytest.raises(ValueError, match="alpha"):
        schedule_table("sqrt")
    with pytest.raises(TypeError, match="VPSDE"):
        GaussianScore(torch.zeros(2), lambda x: x, 0.1, sde=net)
    with pytest.raises(ValueError, match="std"):
        GaussianScore(torch.zeros(2), lambda x: x, 0.0, sde=sde)
    with pytest.raises(ValueError, match="zeta"):
        DPSGaussianScore(torch.zeros(2), lambda x: x, sde, zeta=0)
    with pytest.raises(ValueError, match="trajectory"):
        coarse_observation(torch.randn(2, 64, 64))
    with pytest.raises(ValueError, match="stride"):
        subsample(torch.randn(2, 64, 64), 0)
    with pytest.raises(ValueError, match="crop"):
        saturating_vorticity(torch.randn(3, 2, 64, 64), crop=(2, 20))


def test_guidance_on_trajectories():
    """Shapes as in the paper's assimilation: a whole trajectory (L, 2, 64, 64), observed coarsely."""
    prior = VPSDE(lambda x, t: 0.1 * x, shape=())  # any differentiable eps(x, t)
    y = torch.zeros(2, 2, 8, 8)  # states 0 and 4 of L = 5
    for score in (GaussianScore(y, coarse_observation, 0.1, prior), DPSGaussianScore(y, coarse_observation, prior)):
        x = VPSDE(score, shape=(5, 2, 64, 64)).sample((2,), steps=2, corrections=1, tau=0.5, progress=False)
        assert x.shape == (2, 5, 2, 64, 64) and torch.isfinite(x).all()
