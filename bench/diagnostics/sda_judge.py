"""What the issue-6 diagnostics measure, in one place (imported by sda_recipe.py, sda_resample.py,
sda_sampler_sweep.py, sda_handoff.py and the sda_lowk_*.py scripts, which run from this folder).

* :func:`spectrum_ratio`: unconditional trajectories sampled with seed 1, their std and the
  ratio of their energy spectrum to the held-out data's at k = 1..16 (issue target: within 25%);
* :func:`coarse_residual`: the coarse scenario's SDA posterior (observations of held-out
  trajectory 1 with seed 1, sampling with seed 0) and its residual std relative to sigma_y
  (issue target: <= 0.12), for a given guidance ``gamma``; :func:`assimilation_scores` the same
  for any scenario, with the posterior's error against the truth.
"""
import numpy as np
import torch

from labkit.sda import stats
from labkit.sda.assimilate import SCENARIOS, assimilate, observe, residual_std
from labkit.sda.data import read_split
from labkit.sda.score import VPSDE


def held_out(folder: str):
    """``(test, held, e_data)``: the test split, valid + test, and the latter's energy spectrum."""
    test, _ = read_split(f"{folder}/test.h5")
    held = np.concatenate([read_split(f"{folder}/valid.h5")[0], test])
    return test, held, stats.energy_spectrum(held)[1]


def sample_trajectories(score, count: int, states: int, size: int, steps: int, corrections: int,
                        tau: float = 0.5, ancestral: float = 0.0, device="cpu") -> torch.Tensor:
    """``count`` unconditional trajectories (count, states, 2, size, size), sampled with seed 1, on the CPU."""
    torch.manual_seed(1)
    return VPSDE(score, (states, 2, size, size)).to(device).sample(
        (count,), steps=steps, corrections=corrections, tau=tau, progress=False, ancestral=ancestral).float().cpu()


def judge_spectrum(x: torch.Tensor, e_data) -> dict:
    """``std``, ``ratio`` (k = 1..16) and ``worst`` (max |ratio - 1|) of trajectories ``x``."""
    r = stats.energy_spectrum(x)[1] / e_data
    return dict(std=round(x.std().item(), 3), ratio=[round(float(v), 2) for v in r[1:17]],
                worst=round(float(np.abs(r[1:17] - 1).max()), 3))


def spectrum_ratio(score, e_data, count: int, states: int, size: int, steps: int, corrections: int,
                   tau: float = 0.5, ancestral: float = 0.0, device="cpu") -> dict:
    """:func:`judge_spectrum` of :func:`sample_trajectories`."""
    return judge_spectrum(sample_trajectories(score, count, states, size, steps, corrections, tau, ancestral, device),
                          e_data)


def coarse_residual(score, test, steps: int, corrections: int, tau: float = 0.5, device="cpu",
                    gamma: float = 1e-2) -> float:
    """The coarse scenario's SDA residual std (sigma_y = 0.1; target <= 0.12) on held-out trajectory 1;
    ``gamma`` is the guidance's variance term (:class:`labkit.sda.score.GaussianScore`)."""
    return assimilation_scores(score, test, steps, corrections, tau, device, gamma)["residual"]


def assimilation_scores(score, test, steps: int, corrections: int, tau: float = 0.5, device="cpu",
                        gamma: float = 1e-2, scenario: str = "coarse") -> dict:
    """One SDA posterior of held-out trajectory 1 in ``scenario`` (a key of
    :data:`labkit.sda.assimilate.SCENARIOS`): ``residual``, the std of A(x) - y (what
    :func:`coarse_residual` returns for the coarse scenario), and ``truth_error``, the posterior's
    RMS error against the true trajectory relative to the truth's RMS. A residual well under
    sigma_y fits the observations' noise; the error against the truth tells whether the states
    got better for it."""
    scenario = SCENARIOS[scenario]
    truth = torch.as_tensor(test[1, :scenario.length]).to(device)
    y = observe(scenario, truth, torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    post = assimilate(score, y, scenario, "sda", steps=steps, corrections=corrections, tau=tau, gamma=gamma,
                      progress=False)
    error = ((post[0] - truth).square().mean() / truth.square().mean()).sqrt()
    return dict(residual=round(residual_std(scenario, post, y).item(), 4), truth_error=round(error.item(), 4))
