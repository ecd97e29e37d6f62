"""Sample again from runs of sda_recipe.py with other sampler settings: std and E(k) ratio k = 1..16.

    python3 bench/diagnostics/sda_resample.py VARIANT STEPS CORRECTIONS SAMPLES [DATA_DIR] [ANCESTRAL] [STATES]

VARIANT names the run (/tmp/run_VARIANT, as sda_recipe.py left it); DATA_DIR is its data set
(default /tmp/kf_64_48, the CPU proxy's); ANCESTRAL is VPSDE.sample's ``ancestral`` (default 0).
The samples are trajectories of STATES states (default 16) at tau = 0.5.
"""
import json, sys
from labkit.sda.train import load_score
from sda_judge import held_out, spectrum_ratio

variant, steps, corrections, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
folder = sys.argv[5] if len(sys.argv) > 5 else "/tmp/kf_64_48"
ancestral = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
states = int(sys.argv[7]) if len(sys.argv) > 7 else 16
test, _, e_data = held_out(folder)
score, _ = load_score(f"/tmp/run_{variant}")
score.eval()
judged = spectrum_ratio(score, e_data, count, states, test.shape[-1], steps, corrections, ancestral=ancestral)
print(json.dumps(dict(variant=variant, steps=steps, corrections=corrections, ancestral=ancestral, states=states,
                      samples=count, **judged)))
