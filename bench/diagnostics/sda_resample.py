"""Sample again from runs of sda_recipe.py with other sampler settings: std and E(k) ratio k = 1..16.

    python3 bench/diagnostics/sda_resample.py VARIANT STEPS CORRECTIONS SAMPLES [DATA_DIR] [ANCESTRAL] [STATES]

VARIANT names the run (/tmp/run_VARIANT, as sda_recipe.py left it); DATA_DIR is its data set
(default /tmp/kf_64_48, the CPU proxy's); ANCESTRAL is VPSDE.sample's ``ancestral`` (default 0). The samples are trajectories of STATES states (default 16) at tau = 0.5.
"""
import json, sys
import numpy as np
import torch
from labkit.sda import stats
from labkit.sda.data import read_split
from labkit.sda.score import VPSDE
from labkit.sda.train import load_score

variant, steps, corrections, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
folder = sys.argv[5] if len(sys.argv) > 5 else "/tmp/kf_64_48"
ancestral = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
states = int(sys.argv[7]) if len(sys.argv) > 7 else 16
test, _ = read_split(f"{folder}/test.h5")
valid, _ = read_split(f"{folder}/valid.h5")
_, e_data = stats.energy_spectrum(np.concatenate([valid, test]))
score, _ = load_score(f"/tmp/run_{variant}")
score.eval()
torch.manual_seed(1)
with torch.no_grad():
    x = VPSDE(score, (states, 2, test.shape[-2], test.shape[-1])).sample(
        (count,), steps=steps, corrections=corrections, tau=0.5, progress=False, ancestral=ancestral).float()
_, e_s = stats.energy_spectrum(x)
r = e_s / e_data
print(json.dumps(dict(variant=variant, steps=steps, corrections=corrections, ancestral=ancestral, states=states, samples=count, std=round(x.std().item(), 3),
                      ratio=[round(float(v), 2) for v in r[1:17]], worst=round(float(np.abs(r[1:17] - 1).max()), 3))))
