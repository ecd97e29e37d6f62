"""Issue 6 at the full profile's scale on a GPU: loss weighting, EMA and learning rate (with the skip).

Per variant: train exactly the full profile's recipe (50 epochs, batch 128, 16 windows per trajectory),
then 2 unconditional 64-state trajectories (256 steps, 1 correction, tau 0.5) -> std and E(k) ratio
k = 1..16, and the coarse scenario's SDA residual. A variant is LOSS[:EMA][@LR][+spec|+modes], e.g.
``v:0.999@8e-4`` (``+spec``: the skip with the training data's power spectrum; ``+modes``: that,
and the network's term scaled mode by mode, ``TrainConfig.skip_modes``).
Usage: python3 bench/diagnostics/sda_recipe.py eps v@8e-4   (SCALE_PROFILE / SCALE_DEVICE /
SCALE_EPOCHS / SCALE_STEPS / SCALE_TRAJECTORIES shrink it for a CPU run; SCALE_CORRECTIONS=0,1
samples each trained model once per number of Langevin corrections, SCALE_CORRECTIONS= only trains; SCALE_WINDOW sets the score's
window of states, 5 by default, and a run of another window is kept as /tmp/run_VARIANT_wN)
"""
import json, os, sys, time
from labkit.profile import profile
from labkit.sda.data import DatasetSpec, generate
from labkit.sda.train import TrainConfig, load_score, train
from sda_judge import coarse_residual, held_out, spectrum_ratio

cfg = profile(os.environ.get("SCALE_PROFILE", "full")).sda
dev = os.environ.get("SCALE_DEVICE", "cuda")
epochs = int(os.environ.get("SCALE_EPOCHS", cfg.train_epochs))
steps = int(os.environ.get("SCALE_STEPS", 256))
# e.g. "0,1": sample each trained model twice; "" (set but empty): train only
corrections_list = [int(c) for c in os.environ.get("SCALE_CORRECTIONS", "1").split(",") if c]
trajectories = int(os.environ.get("SCALE_TRAJECTORIES", cfg.trajectories))
window = int(os.environ.get("SCALE_WINDOW", TrainConfig.window))
spec = DatasetSpec(trajectories=trajectories, size=cfg.size, factor=cfg.factor, spinup=cfg.spinup,
                   length=cfg.length)
folder = f"/tmp/kf_{cfg.size}_{trajectories}"
t0 = time.time()
generate(folder, spec, batch=cfg.batch, device=dev, progress=False)
print(f"data {time.time() - t0:.0f} s", flush=True)
test, held, e_data = held_out(folder)
for variant in sys.argv[1:]:
    variant_head, _, lr = variant.removesuffix("+spec").removesuffix("+modes").partition("@")  # "v:0.99@8e-4"
    loss, _, ema = variant_head.partition(":")
    config = TrainConfig(epochs=epochs, batch_size=cfg.train_batch, hidden_channels=cfg.hidden_channels,
                         hidden_blocks=cfg.hidden_blocks, windows_per_trajectory=cfg.train_windows, window=window,
                         checkpoint_every=cfg.train_checkpoint_every, skip=True, loss=loss,
                         ema=float(ema) if ema else None, channels_last=dev == "cuda",
                         lr=float(lr) if lr else TrainConfig.lr, skip_spectrum=variant.endswith(("+spec", "+modes")),
                         skip_modes=variant.endswith("+modes"))
    t0 = time.time()
    run_dir = f"/tmp/run_{variant}" + (f"_w{window}" if window != TrainConfig.window else "")
    history = train(config, folder, run_dir, device=dev, progress=False, resume=False)
    trained = dict(variant=variant, window=window, steps=steps, train_s=round(time.time() - t0, 1),
                   valid_loss=history[-1]["valid_loss"])
    score, _ = load_score(run_dir, device=dev)
    score.eval()
    for corrections in corrections_list:
        t0 = time.time()
        judged = spectrum_ratio(score, e_data, 2, cfg.sample_length, 64, steps, corrections, device=dev)
        out = dict(trained, corrections=corrections, sample_s=round(time.time() - t0, 1),
                   data_std=round(float(held.std()), 3), **judged)
        out["coarse_sda_residual"] = coarse_residual(score, test, steps, corrections, device=dev)
        print(json.dumps(out), flush=True)
