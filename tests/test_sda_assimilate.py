"""labkit.sda.assimilate: scenarios, observations, posterior sampling and residuals.

The guidance check uses a prior whose score is known exactly: states x ~ N(0, I), for which
eps(x_t, t) = sigma x_t / (mu^2 + sigma^2).
"""
import pytest
import torch
from torch import nn

from labkit.sda.assimilate import SCENARIOS, Scenario, assimilate, observe, residual_std
from labkit.sda.nn import make_score
from labkit.sda.score import VPSDE, subsample


class StandardNormalEps(nn.Module):
    """The exact eps of a standard normal prior under the 'cos' schedule."""

    def __init__(self):
        super().__init__()
        self.register_buffer("anchor", torch.zeros(()))  # gives the module a device
        self.sde = VPSDE(lambda x, t: x, ())

    def forward(self, x, t):
        shape = (-1,) + (1,) * (x.dim() - 1)
        mu, sigma = self.sde.mu(t).view(shape), self.sde.sigma(t).view(shape)
        return sigma * x / (mu**2 + sigma**2)


def test_scenarios_shapes():
    x = torch.randn(29, 2, 64, 64)
    assert SCENARIOS["coarse"].A(x).shape == (8, 2, 8, 8)  # states 0, 4, ..., 28
    assert SCENARIOS["saturating"].A(x[:8]).shape == (3, 12, 12)  # states 0, 3, 6
    y = observe(SCENARIOS["coarse"], x, torch.Generator().manual_seed(0))
    assert 0.07 < (y - SCENARIOS["coarse"].A(x)).std() < 0.13  # noise of std 0.1
    with pytest.raises(ValueError, match=r"x must be one trajectory of shape \(29, 2, H, W\)"):
        observe(SCENARIOS["coarse"], x[:8])


def test_guidance_pulls_samples_to_the_observations():
    """With an exact prior the guided samples follow y where observed and keep the prior elsewhere.

    (SDA's likelihood is an approximation: with gamma = 1e-2 and this prior, whose conditional
    covariance is far from gamma (sigma/mu)^2, the deterministic sampler over-fits y; a larger gamma
    weakens the pull. The Langevin corrector is left out: its step tau sigma^2 / mean(eps^2) assumes
    mean(eps^2) ~ 1, which a pure-noise prior (eps = sigma x_t) breaks.)
    """
    scenario = Scenario("grid", lambda x: subsample(x, 4), 0.1, 5, "every 4th point")
    torch.manual_seed(0)
    truth = torch.randn(5, 2, 16, 16)
    y = observe(scenario, truth, torch.Generator().manual_seed(1))
    run = lambda method, **kw: assimilate(StandardNormalEps(), y, scenario, method, samples=4, steps=64,
                                          corrections=0, size=16, progress=False, **kw)
    x = run("sda")
    assert x.shape == (4, 5, 2, 16, 16)
    r = residual_std(scenario, x, y)
    assert r.shape == (4,) and torch.all(r < 0.05), r  # prior samples would give sqrt(1 + 0.01) ~ 1
    r_weak = residual_std(scenario, run("sda", gamma=1.0), y)
    assert torch.all(r_weak > r), (r, r_weak)
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[::4, ::4] = True
    assert 0.8 < x[..., ~mask].std() < 1.2  # unobserved points keep the prior's spread
    r_dps = residual_std(scenario, run("dps"), y)  # zeta = 1: a weak pull, far from the noise level
    assert torch.all(torch.isfinite(r_dps) & (r_dps > r_weak)), r_dps


def test_argument_errors():
    net = make_score(window=5, hidden_channels=(4,), hidden_blocks=(1,))
    y = torch.zeros(3, 12, 12)
    with pytest.raises(ValueError, match="method must be one of"):
        assimilate(net, y, SCENARIOS["saturating"], "ddim")
    with pytest.raises(ValueError, match="score has no parameters or buffers"):
        assimilate(nn.Identity(), y, SCENARIOS["saturating"])
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="y is on"):
            assimilate(net, y.cuda(), SCENARIOS["saturating"])
