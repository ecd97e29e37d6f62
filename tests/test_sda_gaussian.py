"""labkit.sda.gaussian: the whole-trajectory Gaussian model and the hand-off to the network."""
import pytest
import torch

from labkit.sda.gaussian import Handoff, SpaceTimeGaussian, shell_index, time_correlation, with_handoff
from labkit.sda.score import VPSDE, GaussianSkip, _mu, _sigma, power_spectrum


def _trajectories(n=6, length=5, channels=2, size=8, seed=0):
    """AR(1) in time per pixel, with a mean field: correlated states, nonzero mean."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, channels, size, size, generator=g)
    states = [x]
    for _ in range(length - 1):
        states.append(0.8 * states[-1] + 0.6 * torch.randn(n, 1, channels, size, size, generator=g))
    mean = torch.sin(torch.arange(size) * 0.7)[None, None, None, None, :]
    return torch.cat(states, dim=1) + mean


def test_eps_is_sigma_inverse_covariance_times_centred_x():
    """Against a dense solve, mode by mode: eps_modes = sigma (mu^2 P R + sigma^2 I)^-1 (x_t - mu m)_modes."""
    data = _trajectories()
    model = SpaceTimeGaussian.fit(data, length=4)
    x = torch.randn(3, 4, 2, 8, 8)
    t = torch.tensor([0.2, 0.5, 0.9])
    eps = model(x, t)
    mu = _mu(t, "cos", 1e-3).double()
    sigma = _sigma(mu, 1e-3)
    rho = time_correlation(data.double() - data.double().mean(dim=(0, 1)), 4)
    shell = shell_index(8, 8)
    lag = (torch.arange(4)[:, None] - torch.arange(4)[None, :]).abs()
    modes = torch.fft.rfft2(x.double() - mu[:, None, None, None, None] * model.mean.double(), norm="ortho")
    want = torch.empty_like(modes)
    for b in range(3):
        for c in range(2):
            for i in range(8):
                for j in range(5):
                    cov = model.spectrum[c, i, j].double() * rho[shell[i, j]][lag]
                    sig = mu[b] ** 2 * cov + sigma[b] ** 2 * torch.eye(4, dtype=torch.float64)
                    want[b, :, c, i, j] = sigma[b] * torch.linalg.solve(sig.to(modes.dtype), modes[b, :, c, i, j])
    want = torch.fft.irfft2(want, s=(8, 8), norm="ortho")
    torch.testing.assert_close(eps.double(), want, rtol=1e-4, atol=1e-4)


def test_one_state_without_mean_is_the_gaussian_skip():
    spectrum = power_spectrum(torch.randn(16, 2, 8, 8) * 3)
    model = SpaceTimeGaussian(torch.zeros(2, 8, 8), spectrum, torch.ones(7, 1), length=1)  # shells 0..6

    class Zero(torch.nn.Module):
        def forward(self, x, t, c=None):
            return torch.zeros_like(x)

    skip = GaussianSkip(Zero(), spectrum=spectrum)
    x = torch.randn(4, 1, 2, 8, 8)
    for t in (0.1, 0.6, 0.95):
        torch.testing.assert_close(model(x, t), skip(x.flatten(1, 2), t).unflatten(1, (1, 2)), rtol=1e-4, atol=1e-5)


def test_sampling_reproduces_the_data_energy_and_mean():
    data = _trajectories(n=64, length=4, seed=1)
    model = SpaceTimeGaussian.fit(data, length=4)
    torch.manual_seed(0)
    x = VPSDE(model, (4, 2, 8, 8)).sample((128,), steps=128, progress=False)
    centred = data - data.mean(dim=(0, 1))
    assert (x.mean(dim=(0, 1)) - model.mean).abs().mean() < 0.1  # the mean field (about 0.7 in size)
    ratio = (x - model.mean).square().mean() / centred.square().mean()
    assert 0.9 < ratio < 1.1, ratio
    lag1 = lambda y: (y[:, 1:] * y[:, :-1]).mean() / y.square().mean()  # noqa: E731
    assert abs(lag1(x - model.mean) - lag1(centred)) < 0.05


def test_rejects_wrong_shapes():
    model = SpaceTimeGaussian.fit(_trajectories(), length=3)
    with pytest.raises(ValueError, match=r"x must be \(B, 3, 2, 8, 8\)"):
        model(torch.randn(2, 4, 2, 8, 8), 0.5)
    with pytest.raises(ValueError, match="trajectories must be"):
        SpaceTimeGaussian.fit(torch.randn(3, 2, 8, 8), length=2)
    with pytest.raises(ValueError, match="lags must be"):
        time_correlation(torch.randn(2, 3, 1, 4, 4), 4)
    with pytest.raises(ValueError, match="correlation must be"):
        SpaceTimeGaussian(torch.zeros(1, 4, 4), torch.ones(1, 4, 3), torch.ones(2, 3), length=3)


def test_handoff_switches_per_batch_element():
    high = lambda x, t: torch.ones_like(x)  # noqa: E731
    low = lambda x, t: -torch.ones_like(x)  # noqa: E731
    handoff = Handoff(high, low, t_switch=0.6)
    x = torch.zeros(3, 2)
    assert handoff(x, torch.tensor(0.7)).eq(1).all() and handoff(x, torch.tensor(0.6)).eq(-1).all()
    assert handoff(x, torch.tensor([0.9, 0.1, 0.61]))[:, 0].tolist() == [1, -1, 1]
    with pytest.raises(ValueError, match="t_switch"):
        Handoff(high, low, 1.5)


def test_with_handoff_builds_the_profiles_prior():
    network = torch.nn.Linear(1, 1).double()  # stands in for the score network: only its device is read
    trajectories = _trajectories(length=6)
    gaussian = SpaceTimeGaussian.fit(trajectories, 6)  # fitted once, for the longest trajectory
    assert with_handoff(network, None, 4, None) is network  # the original's sampler
    prior = with_handoff(network, gaussian, 4, 0.6)
    assert isinstance(prior, Handoff) and prior.low is network and prior.t_switch == 0.6
    assert isinstance(prior.high, SpaceTimeGaussian) and prior.high.length == 4
    assert with_handoff(network, gaussian, 6, 0.6).high is gaussian
    x = torch.randn(2, 4, 2, 8, 8)
    expected = SpaceTimeGaussian.fit(trajectories, 4)(x, torch.tensor(0.9))  # fitted for 4 states directly
    torch.testing.assert_close(prior(x, torch.tensor(0.9)), expected)
    with pytest.raises(ValueError, match="needs gaussian"):
        with_handoff(network, None, 4, 0.6)
    with pytest.raises(ValueError, match="lags >= length"):
        gaussian.with_length(7)


def test_time_correlation_matches_the_direct_sum_over_start_states():
    x = _trajectories(n=3, length=7, size=6)
    x = x - x.mean(dim=(0, 1))
    modes = torch.fft.rfft2(x.double(), norm="ortho")
    weight = torch.full((6, 4), 2.0, dtype=torch.float64)
    weight[:, 0] = weight[:, -1] = 1.0  # the halved rfft2 columns count twice, the real ones once
    shell = shell_index(6, 6).flatten()
    direct = torch.zeros(int(shell.max()) + 1, 5, dtype=torch.float64)
    for lag in range(5):
        pairs = (modes[:, lag:] * modes[:, :7 - lag].conj()).real.mean(dim=(0, 1, 2)) * weight
        direct[:, lag].index_add_(0, shell, pairs.flatten())
    torch.testing.assert_close(time_correlation(x, 5), direct / direct[:, :1])
