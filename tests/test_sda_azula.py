"""labkit's SDA sampler against azula's (PyPI ``azula``, the SDA authors' diffusion library).

labkit's predictor x_s = r x_t + (sigma_s - r sigma_t) eps(x_t, t), r = mu_s / mu_t, is DDIM with
eta = 0, which azula writes with a denoiser E[X | x_t] = (x_t - sigma_t eps) / mu_t, and also its
explicit Euler step. Same network, same schedule, same starting noise: the same samples, to
float64 round-off. Runs when the ``azula`` extra is installed, skipped otherwise.
"""
import pytest
import torch

azula = pytest.importorskip("azula", reason="azula is not installed (pip install -e '.[azula]')")
from azula.denoise import Denoiser, DiracPosterior  # noqa: E402
from azula.noise import Schedule, VPSchedule  # noqa: E402
from azula.sample import DDIMSampler, EulerSampler  # noqa: E402

from labkit.sda.nn import make_score  # noqa: E402
from labkit.sda.score import ALPHAS, VPSDE, GaussianSkip  # noqa: E402


class LabkitSchedule(Schedule):
    """labkit's (mu, sigma) as an azula schedule (azula calls them alpha_t, sigma_t)."""

    def __init__(self, sde: VPSDE):
        self.sde = sde

    def __call__(self, t):
        return self.sde.mu(t), self.sde.sigma(t)


class EpsDenoiser(Denoiser):
    """An epsilon network as an azula denoiser: E[X | x_t] = (x_t - sigma_t eps(x_t, t)) / mu_t."""

    def __init__(self, sde: VPSDE):
        super().__init__()
        self.sde, self.schedule = sde, LabkitSchedule(sde)

    def forward(self, x_t, t, **kwargs):
        t = t.expand(x_t.shape[0])  # labkit's networks take one time per sample
        mu, sigma = (v.reshape(-1, *[1] * (x_t.dim() - 1)) for v in self.schedule(t))
        return DiracPosterior((x_t - sigma * self.sde.eps(x_t, t)) / mu)


def tiny_trajectory_score(skip: bool):
    torch.manual_seed(0)
    score = make_score(window=5, embedding=8, hidden_channels=(4, 8), hidden_blocks=(1, 1), size=8).double()
    for p in score.parameters():  # random weights of a visible size: the output is not ~0
        p.data.normal_(0, 0.3)
    score.eval()
    return GaussianSkip(score) if skip else score


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("sampler", [DDIMSampler, EulerSampler])
@pytest.mark.parametrize("skip", [False, True])
def test_same_trajectory_as_azula(alpha, sampler, skip):
    score = tiny_trajectory_score(skip)
    sde = VPSDE(score, (6, 2, 8, 8), alpha=alpha).double()
    for steps in (1, 4, 32):
        torch.manual_seed(1)
        ours = sde.sample((2,), steps=steps, corrections=0, progress=False)
        torch.manual_seed(1)  # the same starting noise: labkit draws x_1 ~ N(0, I) first thing
        x1 = torch.randn(2, 6, 2, 8, 8, dtype=torch.float64)
        kwargs = dict(eta=0.0) if sampler is DDIMSampler else {}
        theirs = sampler(EpsDenoiser(sde), steps=steps, silent=True, dtype=torch.float64, **kwargs)(x1)
        # relative: an untrained plain network's samples are huge (its x_hat divides by mu(1) = 1e-3,
        # see GaussianSkip); with the skip they stay of order one
        scale = theirs.abs().max()
        assert torch.isfinite(ours).all() and scale > 0.1
        assert (ours - theirs).abs().max() <= 1e-10 * scale, (steps, (ours - theirs).abs().max().item())


def test_azula_vpschedule_is_labkits_exp():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    sde = VPSDE(lambda x, t: x, (), alpha="exp", eta=1e-3).double()
    alpha_t, sigma_t = VPSchedule(alpha_min=1e-3, sigma_min=1e-3)(t)
    torch.testing.assert_close(sde.mu(t), alpha_t, rtol=1e-14, atol=0)
    torch.testing.assert_close(sde.sigma(t), sigma_t, rtol=1e-14, atol=0)
