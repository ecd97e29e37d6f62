"""Issue 6: do the samples' large scales come back with more training?

Trains the CPU proxy's recipe (sda_recipe.py's quick profile: network (16, 32, 64) x 1, batch 4,
2 windows per trajectory) for VARIANT (LOSS@LR[+spec]) with a learning-rate schedule of EPOCHS
epochs, stopping at each of STAGES (train's ``stop_after``, then resuming: the run at its last
stage is bitwise the plain EPOCHS-epoch run). At each stage: valid loss, and unconditional samples
judged as sda_judge.spectrum_ratio (COUNT trajectories of STATES states, seed 1, STEPS predictor
steps, no corrector): std and E(k) ratio k = 1..16.

    python3 bench/diagnostics/sda_lowk_epochs.py VARIANT EPOCHS STAGE[,STAGE ...] RUN_DIR [STEPS] [COUNT] [STATES]
e.g. python3 sda_lowk_epochs.py eps@1e-3+spec 100 25,50,100 /tmp/run_ep100 64 4 16
(the data set /tmp/kf_64_48 must exist: sda_recipe.py with SCALE_TRAJECTORIES=48 makes it)
"""
import json
import sys
import time

import torch

from labkit.profile import profile
from labkit.sda.train import TrainConfig, load_score, train
from sda_judge import held_out, spectrum_ratio

variant, epochs, stages, run_dir = sys.argv[1], int(sys.argv[2]), [int(s) for s in sys.argv[3].split(",")], sys.argv[4]
steps = int(sys.argv[5]) if len(sys.argv) > 5 else 64
count = int(sys.argv[6]) if len(sys.argv) > 6 else 4
states = int(sys.argv[7]) if len(sys.argv) > 7 else 16
folder = "/tmp/kf_64_48"
cfg = profile("quick").sda
head, _, lr = variant.removesuffix("+spec").partition("@")
config = TrainConfig(epochs=epochs, batch_size=cfg.train_batch, hidden_channels=cfg.hidden_channels,
                     hidden_blocks=cfg.hidden_blocks, windows_per_trajectory=cfg.train_windows,
                     checkpoint_every=cfg.train_checkpoint_every, skip=True, loss=head,
                     lr=float(lr) if lr else TrainConfig.lr, skip_spectrum=variant.endswith("+spec"))
test, _, e_data = held_out(folder)
for i, stage in enumerate(stages):
    t0 = time.time()
    history = train(config, folder, run_dir, device="cpu", progress=False, stop_after=stage, resume=i > 0)
    train_s = time.time() - t0
    score, _ = load_score(run_dir)
    score.eval()
    t0 = time.time()
    judged = spectrum_ratio(score, e_data, count, states, test.shape[-1], steps, 0)
    print(json.dumps(dict(variant=variant, schedule_epochs=epochs, epoch=history[-1]["epoch"],
                          valid_loss=round(history[-1]["valid_loss"], 5), train_s=round(train_s, 1), steps=steps,
                          samples=count, states=states, **judged, sample_s=round(time.time() - t0, 1))), flush=True)
    torch.save(score.state_dict(), f"{run_dir}/score_epoch{stage}.pt")  # the stage's weights, for re-judging
