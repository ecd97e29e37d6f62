"""Issue 6: a trained run sampled through labkit.sda.gaussian.Handoff, judged on both targets.

Above T_SWITCH the sampler's eps is the whole-trajectory Gaussian process of the training
trajectories (:class:`labkit.sda.gaussian.SpaceTimeGaussian`: their mean field, power spectrum
and time correlation), below it the run's network. Per T_SWITCH (1 = the network alone):
unconditional trajectories judged as sda_judge.spectrum_ratio does (seed 1, no corrector: std and
E(k) ratio k = 1..16), and the coarse scenario's SDA residual and error against the truth at
guidance GAMMA (the same process cut to the scenario's 29 states), and the same for the
saturating scenario (8 states; its sigma_y is 0.05).

    python3 bench/diagnostics/sda_handoff.py RUN_DIR DATA_DIR COUNT STATES STEPS GAMMA T_SWITCH[:CORRECTIONS[:ANCESTRAL]][,...]
e.g. python3 sda_handoff.py /tmp/run_v@1e-3+spec /tmp/kf_64_48 12 16 64 1e-3 1.0,0.6
(SWEEP_SPECTRA_ONLY=1 skips the assimilation; T_SWITCH:1 samples with one Langevin correction per step,
tau 0.5, T_SWITCH:0:1 samples ancestrally (VPSDE.sample's ``ancestral``); both for the unconditional
trajectories only)
"""
import json
import os
import sys
import time

import numpy as np
import torch

from labkit.sda.assimilate import SCENARIOS
from labkit.sda.data import read_split
from labkit.sda.gaussian import Handoff, SpaceTimeGaussian
from labkit.sda.train import load_score
from sda_judge import assimilation_scores, held_out, spectrum_ratio

run, folder = sys.argv[1], sys.argv[2]
count, states, steps, gamma = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
switches = [[float(x) for x in (s.split(":") + ["0", "0"])[:3]] for s in sys.argv[7].split(",")]
device = "cuda" if torch.cuda.is_available() else "cpu"
test, _, e_data = held_out(folder)
train = torch.as_tensor(np.asarray(read_split(f"{folder}/train.h5")[0]))
score, _ = load_score(run, device=device)
score.eval()
lengths = (states, *(s.length for s in SCENARIOS.values()))
gaussian = SpaceTimeGaussian.fit(train, max(lengths))  # the moments once, for the longest trajectory
processes = {n: gaussian.with_length(n).to(device) for n in lengths}
for t_switch, corrections, ancestral in switches:
    corrections = int(corrections)
    t0 = time.time()
    unconditional = Handoff(processes[states], score, t_switch)
    judged = spectrum_ratio(unconditional, e_data, count, states, test.shape[-1], steps, corrections,
                            ancestral=ancestral, device=device)
    out = dict(run=run, t_switch=t_switch, corrections=corrections, ancestral=ancestral, steps=steps, samples=count,
               states=states, **judged)
    if os.environ.get("SWEEP_SPECTRA_ONLY") != "1":
        out.update(gamma=gamma)
        for name in ("coarse", "saturating"):
            guided = Handoff(processes[SCENARIOS[name].length], score, t_switch)
            sda = assimilation_scores(guided, test, steps, 0, device=device, gamma=gamma, scenario=name)
            out.update({f"{name}_sda_residual": sda["residual"], f"{name}_truth_error": sda["truth_error"]})
    print(json.dumps(dict(out, seconds=round(time.time() - t0, 1))), flush=True)
