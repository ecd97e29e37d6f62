"""Issue 6: one trained run, several sampler settings, judged on both targets at once.

Per setting STEPS:CORRECTIONS:TAU[:GAMMA] (e.g. ``256:1:0.5``, the paper's; GAMMA, the guidance's
variance term, 1e-2 by default): the E(k) ratio k = 1..16 of unconditional trajectories against
held-out data, and the coarse scenario's SDA residual (the issue's target is <= 1.2 sigma_y, i.e.
<= 0.12). With SWEEP_SDA_ONLY=1 only the residual (gamma does not change the unconditional samples).

    python3 bench/diagnostics/sda_sampler_sweep.py RUN_DIR DATA_DIR SAMPLES STATES SETTING [SETTING ...]
"""
import json
import os
import sys
import time

import torch

from labkit.sda.train import load_score
from sda_judge import assimilation_scores, held_out, spectrum_ratio

run, folder, count, states = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
device = "cuda" if torch.cuda.is_available() else "cpu"
test, _, e_data = held_out(folder)
score, _ = load_score(run, device=device)
score.eval()
for setting in sys.argv[5:]:
    steps, corrections, tau, gamma = (setting.split(":") + ["1e-2"])[:4]
    steps, corrections, tau, gamma = int(steps), int(corrections), float(tau), float(gamma)
    t0 = time.time()
    judged = {} if os.environ.get("SWEEP_SDA_ONLY") == "1" else spectrum_ratio(
        score, e_data, count, states, test.shape[-1], steps, corrections, tau, device=device)
    sda = assimilation_scores(score, test, steps, corrections, tau, device, gamma)
    print(json.dumps(dict(run=run, steps=steps, corrections=corrections, tau=tau, gamma=gamma, **judged,
                          coarse_sda_residual=sda["residual"], truth_error=sda["truth_error"], seconds=round(time.time() - t0, 1))), flush=True)
