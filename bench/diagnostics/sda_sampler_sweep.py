"""Issue 6: one trained run, several sampler settings, judged on both targets at once.

Per setting STEPS:CORRECTIONS:TAU (e.g. ``256:1:0.5``, the paper's): the E(k) ratio k = 1..16 of
unconditional trajectories against held-out data, and the coarse scenario's SDA residual
(relative to sigma_y; the issue's target is <= 1.2 sigma_y, i.e. <= 0.12).

    python3 bench/diagnostics/sda_sampler_sweep.py RUN_DIR DATA_DIR SAMPLES STATES SETTING [SETTING ...]
"""
import json
import sys
import time

import numpy as np
import torch

from labkit.sda import stats
from labkit.sda.assimilate import SCENARIOS, assimilate, observe, residual_std
from labkit.sda.data import read_split
from labkit.sda.score import VPSDE
from labkit.sda.train import load_score

run, folder, count, states = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
device = "cuda" if torch.cuda.is_available() else "cpu"
test, _ = read_split(f"{folder}/test.h5")
held = np.concatenate([read_split(f"{folder}/valid.h5")[0], test])
_, e_data = stats.energy_spectrum(held)
score, _ = load_score(run, device=device)
score.eval()
scenario = SCENARIOS["coarse"]
truth = torch.as_tensor(test[1, :scenario.length]).to(device)
y = observe(scenario, truth, torch.Generator().manual_seed(1))
for setting in sys.argv[5:]:
    steps, corrections, tau = setting.split(":")
    steps, corrections, tau = int(steps), int(corrections), float(tau)
    t0 = time.time()
    torch.manual_seed(1)
    with torch.no_grad():
        x = VPSDE(score, (states, 2, test.shape[-2], test.shape[-1])).to(device).sample(
            (count,), steps=steps, corrections=corrections, tau=tau, progress=False).float().cpu()
    r = stats.energy_spectrum(x)[1] / e_data
    torch.manual_seed(0)
    post = assimilate(score, y, scenario, "sda", steps=steps, corrections=corrections, tau=tau, progress=False)
    print(json.dumps(dict(run=run, steps=steps, corrections=corrections, tau=tau, std=round(x.std().item(), 3),
                          ratio=[round(float(v), 2) for v in r[1:17]], worst=round(float(np.abs(r[1:17] - 1).max()), 3),
                          coarse_sda_residual=round(residual_std(scenario, post, y).item(), 4),
                          seconds=round(time.time() - t0, 1))), flush=True)
