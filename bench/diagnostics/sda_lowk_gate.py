"""Issue 6: switch the trained network off at high noise, without retraining, and see what the
samples' large scales do.

For t > T_C the sampler's eps is the Gaussian model's alone: GaussianSkip with the training
data's power spectrum and the network's output replaced by zeros (for a ``+spec`` run that is the
run's own module with F = 0; for a white-skip run or a plain eps network it is the data-spectrum
Gaussian eps, a different term than the run's own). For t <= T_C the run's eps is used unchanged.
T_C = 1 is the run itself, T_C = 0 the Gaussian model alone (the network never used).
With GATE_GAUSS=W (an integer) the Gaussian model above T_C is instead the space-time Gaussian
process of sda_lowk_gp_window.py composed from windows of W states (W = STATES: the exact eps of
the whole trajectory, temporally coherent as the data), so the network takes over from fields
whose large scales have the data's energy and coherence in time (and GP_MEAN=1: the data's mean field).

Per (STEPS, T_C): unconditional trajectories sampled exactly as sda_judge.spectrum_ratio does
(seed 1, VPSDE.sample, no corrector, tau irrelevant), their std and E(k) ratio k = 1..16 against
the held-out data. Samples are saved to OUT_DIR (default /tmp/sda_lowk) as gate_<name>_<steps>_<tc>.pt.

    python3 bench/diagnostics/sda_lowk_gate.py RUN_DIR DATA_DIR COUNT STATES STEPS[,STEPS] TC[,TC ...]
e.g. python3 sda_lowk_gate.py /tmp/run_eps@1e-3+spec /tmp/kf_64_48 4 16 64,256 1.0,0.8,0.6,0.4
"""
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn

from labkit.sda.data import read_split
from labkit.sda.gaussian import Handoff
from labkit.sda.score import GaussianSkip, power_spectrum
from labkit.sda.train import load_score
from sda_judge import held_out, judge_spectrum, sample_trajectories


class Zero(nn.Module):
    def forward(self, x, t, c=None):
        return torch.zeros_like(x)


def gaussian_for(score: nn.Module, folder: str, config) -> nn.Module:
    """The Gaussian model's eps: the run's own skip with F = 0 if it has a spectrum, else one made
    from the training split's power spectrum (as train.py computes it)."""
    if isinstance(score, GaussianSkip) and score.spectrum is not None:
        return GaussianSkip(Zero(), score.alpha, score.eta, score.spectrum.clone())
    train_states, _ = read_split(f"{folder}/train.h5")
    spectrum = power_spectrum(torch.as_tensor(np.asarray(train_states)))
    return GaussianSkip(Zero(), config.alpha, config.eta, spectrum)


if __name__ == "__main__":
    run, folder, count, states = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    steps_list = [int(s) for s in sys.argv[5].split(",")]
    tcs = [float(s) for s in sys.argv[6].split(",")]
    out_dir = os.environ.get("OUT_DIR", "/tmp/sda_lowk")
    os.makedirs(out_dir, exist_ok=True)
    test, _, e_data = held_out(folder)
    score, config = load_score(run)
    score.eval()
    gauss = gaussian_for(score, folder, config).eval()
    name = os.path.basename(run.rstrip("/")).removeprefix("run_")
    if os.environ.get("GATE_GAUSS"):
        from sda_lowk_gp_window import WindowGP, gp_moments
        w = int(os.environ["GATE_GAUSS"])
        train_states = torch.as_tensor(np.asarray(read_split(f"{folder}/train.h5")[0]))
        spectrum, rho, mean = gp_moments(train_states, states)  # GP_MEAN=1: around the data's mean field
        gauss = WindowGP(spectrum, rho, states, w, mean=mean)
        name += f"_gp{w}" + ("mean" if mean is not None else "")
    for steps in steps_list:
        for tc in tcs:
            t0 = time.time()
            eps = Handoff(gauss, score, tc).eval()
            x = sample_trajectories(eps, count, states, test.shape[-1], steps, corrections=0)
            torch.save(x, f"{out_dir}/gate_{name}_{steps}_{tc}.pt")
            print(json.dumps(dict(run=run, gauss=os.environ.get("GATE_GAUSS", "skip") + ("+mean" if os.environ.get("GP_MEAN") == "1" else ""), steps=steps, t_c=tc, samples=count, states=states, **judge_spectrum(x, e_data),
                                  seconds=round(time.time() - t0, 1))), flush=True)
