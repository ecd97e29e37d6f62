# ---
# jupyter:
#   accelerator: GPU
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: accelerator
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A score model of Kolmogorov flow: schedules, training, sampling, assimilation
#
# Chapter 4a made the data: trajectories of 64 velocity states of two-dimensional Kolmogorov flow.
# This chapter builds the rest of score-based data assimilation (SDA) {cite}`rozet2023sda` as
# design document `002` describes it: a diffusion model learns the distribution of whole
# trajectories from short windows of them, and the same model, guided by a likelihood, turns
# sparse noisy observations into trajectories that are consistent with both the observations
# and the flow. We check three things against the original: the noise schedules, the network
# (its real size), and the assimilation residuals that the original reports.
#
# What the design document gets wrong, measured below: its schedule table rounds three rows with
# the wrong formula; its parameter count (~6.5M) is a third of the network it configures (22.9M);
# its training time (25 s an epoch) is 33x what one H100 needs; and its window of five states
# cannot hold the flow's largest scales, which a Gaussian process over the whole trajectory
# decides instead in labkit's sampler (the section on unconditional samples says why).

# %%
import sys

if "google.colab" in sys.modules:  # on Colab: install the labkit version this book was built from
    # %pip install -q "labkit @ git+https://github.com/labkit-book/labkit@v0.1.0"
    pass

# %%
import labkit

P = labkit.start(seed=0)
cfg = P.sda

# %%
import dataclasses
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

from labkit.bench import format_table, load_results
from labkit.data import default_root
from labkit.sda import KolmogorovFlow, plots, stats
from labkit.sda.assimilate import SCENARIOS, assimilate, observe, residual_std
from labkit.sda.data import DatasetSpec, generate, read_split
from labkit.sda.gaussian import SpaceTimeGaussian, with_handoff
from labkit.sda.nn import make_score, parameter_count
from labkit.sda.score import SEED_TABLE, VPSDE, schedule_table
from labkit.sda.train import TrainConfig, config_tag, load_score, train

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
plt.rcParams.update({"figure.dpi": 110})
notebook_started = time.perf_counter()

# %% [markdown]
# ## The data
#
# The profile's data set from chapter 4a (the full profile: 128 trajectories simulated at
# $256^2$ and stored at $64^2$, split 102 / 13 / 13). It is read from the cache if chapter 4a
# (or an earlier run of this one) made it, and generated otherwise.

# %%
spec = DatasetSpec(trajectories=cfg.trajectories, size=cfg.size, factor=cfg.factor, spinup=cfg.spinup,
                   length=cfg.length)
folder = default_root() / spec.slug()
files = generate(folder, spec, batch=cfg.batch, device=device, progress=True)
train_x, _ = read_split(files["train"])
test, _ = read_split(files["test"])
valid, _ = read_split(files["valid"])
print(f"{folder}: train {train_x.shape}, test {test.shape}, valid {valid.shape}")

# %% [markdown]
# ## Noise schedules
#
# The diffusion model corrupts a state $x$ into $x_t = \mu(t)\,x + \sigma(t)\,\epsilon$ with
# $\epsilon \sim \mathcal N(0, I)$ and $\sigma(t) = \sqrt{1 - \mu(t)^2 + \eta^2}$, for
# $t \in [0, 1]$. The original offers three $\mu$; all run from $\mu(0) = 1$ to $\mu(1) = \eta$:
#
# * `'cos'`: $\mu = \cos(\omega t)^2$, $\omega = \arccos\sqrt\eta$ (the *square* of a cosine:
#   not the cosine schedule of improved DDPM, $\cos(\pi t/2)$);
# * `'lin'`: $\mu = 1 - (1 - \eta)\,t$;
# * `'exp'`: $\mu = \exp(t^2 \log\eta)$ (azula's `VPSchedule`).
#
# The design document prints a table of the `'cos'` schedule with $\eta = 10^{-3}$. Recomputed:

# %%
rows = schedule_table("cos", 1e-3)
print(f"{'t':>5s} {'mu':>9s} {'(seed)':>7s} {'sigma':>9s} {'(seed)':>7s} {'SNR':>11s}")
wrong = []
for t, mu, sigma, snr in rows:
    seed_mu, seed_sigma = SEED_TABLE[t]
    flags = ["mu"] * (round(mu, 2) != round(seed_mu, 2) and t not in (0.0, 1.0)) \
        + ["sigma"] * (round(sigma, 2) != round(seed_sigma, 2) and t not in (0.0, 1.0))
    wrong += [(t, f) for f in flags]
    print(f"{t:5.2f} {mu:9.4f} {seed_mu:7.3g} {sigma:9.4f} {seed_sigma:7.3g} {snr:11.4g}  {' '.join(flags)}")
limit = [(t, np.cos(np.pi * t / 2) ** 2) for t in (0.25, 0.5, 0.75)]
print("eta -> 0 limit cos(pi t / 2)^2:", ", ".join(f"mu({t}) = {m:.4f}" for t, m in limit))

# %% tags=["remove-cell"]
assert len(wrong) == 5, wrong  # the docstring of schedule_table lists them

# %% [markdown]
# The end rows are right. The three middle rows are off in the second decimal: they are the
# $\eta \to 0$ limit $\cos(\pi t/2)^2$ (for instance $\mu(0.5) = 0.50$ where the schedule gives
# 0.516), and $\sigma(0.25) = 0.53$ is $\sqrt{1 - 0.85^2}$, computed from the rounded $\mu$.
# Small errors, but a reader checking an implementation against that table would think a correct
# implementation wrong.
#
# The three schedules side by side, with the seed's table as crosses. The signal-to-noise ratio
# $\mu^2/\sigma^2$ shows where each spends its time: `'cos'` and `'exp'` stay at high SNR longer
# than `'lin'`, and all fall to $10^{-6}$ at $t = 1$.

# %%
t_grid = torch.linspace(0, 1, 201, dtype=torch.float64)


def schedule_curves(eta):
    curves = {}
    for alpha in ("cos", "lin", "exp"):
        sde = VPSDE(lambda x, t: x, (), alpha=alpha, eta=eta)
        curves[alpha] = (sde.mu(t_grid), sde.sigma(t_grid))
    return curves


fig = plots.schedules(t_grid, schedule_curves(1e-3), marks={"seed's table ('cos')": SEED_TABLE})

# %% [markdown]
# $\eta$ sets both ends: the noise left at $t = 0$ ($\sigma(0) = \eta$) and the signal left at
# $t = 1$ ($\mu(1) = \eta$). Move it (in the live notebook) to see the SNR range widen or shrink;
# the middle of the schedules hardly moves.

# %%
import ipywidgets as widgets


def show_schedules(eta=1e-3, alpha="all"):
    curves = schedule_curves(eta)
    if alpha != "all":
        curves = {alpha: curves[alpha]}
    fig = plots.schedules(t_grid, curves)
    plt.show()


widgets.interact(show_schedules, eta=widgets.FloatLogSlider(value=1e-3, base=10, min=-6, max=-1, step=0.25),
                 alpha=widgets.Dropdown(options=["all", "cos", "lin", "exp"], value="all"));

# %% [markdown]
# Forward noising of one state of the test set, shown as vorticity (the original's convention:
# grid units, sign flipped). By $t = 0.5$ the large vortices are still visible under the noise;
# by $t = 0.75$ ($\mu = 0.16$) they are gone to the eye.

# %%
sde_cos = VPSDE(lambda x, t: x, (2, 64, 64), alpha="cos")
state = torch.as_tensor(test[0, 0], dtype=torch.float64)
noise = torch.randn(state.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
times = [0.0, 0.25, 0.5, 0.75, 1.0]
noised = [sde_cos.mu(torch.tensor(t)) * state + sde_cos.sigma(torch.tensor(t)) * noise for t in times]
fig = plots.vorticity_row([KolmogorovFlow.vorticity(x) for x in noised], [f"t = {t}" for t in times], vmax=2.5)

# %% [markdown]
# ## The score network and its real size
#
# The network predicts the noise $\epsilon$ of a *window* of five consecutive states (10 channels:
# $u, v$ of each), with one extra fixed input channel, the forcing $\sin(4y)$. It is the original's
# U-Net: three levels of 96, 192 and 384 channels, three residual blocks per level down and up,
# circular padding, a sinusoidal embedding of $t$ added in every block, a channel LayerNorm
# without parameters, and additive skips. `MCScoreNet` composes the score of a whole trajectory of
# any length from the windows (each state takes the output of the window centred on it; the first
# and last two take the first and last window's).

# %%
score_full = make_score(window=5)  # the original's configuration
total, trainable = parameter_count(score_full)
print(f"make_score(window=5): {total:,} parameters ({trainable:,} trainable)")
print(f"the design document's figure: about 6.5M, {total / 6.5e6:.1f}x too small")
print(f"this profile's network {cfg.hidden_channels} x {cfg.hidden_blocks}: "
      f"{parameter_count(make_score(window=5, hidden_channels=cfg.hidden_channels, hidden_blocks=cfg.hidden_blocks))[0]:,}")
del score_full

# %% tags=["remove-cell"]
assert total == 22_874_922, total

# %% [markdown]
# 22.9M, not 6.5M: the width that the document's count assumes is not the one its own
# configuration sets (the original's smaller variant, (64, 128, 256), has 10.2M).
#
# ## Training
#
# `labkit.sda.train` is the original's recipe (AdamW, learning rate $2\cdot10^{-4}$ decayed linearly
# to 0, weight decay $10^{-3}$, the $\epsilon$-matching loss with $t \sim U(0, 1)$, windows of 5
# states) with what a long run needs: atomic checkpoints and exact resumption (run the cell again
# after an interruption and it continues), metrics as CSV and JSON, bf16 autocast and channels-last
# memory on the GPU, and `torchrun` data parallelism. The command-line program does the same
# (`python -m labkit.sda.train --data DIR --out DIR --profile paper` is the original's 4,096
# epochs).
#
# The full profile trains the original network for about two minutes: 50 epochs of 16 random
# windows of each of the 102 training trajectories in batches of 128, 650 optimizer steps and
# 82k windows, 2.4% of the windows the original's run sees.
#
# One change to the original, `skip=True` (`labkit.sda.score.GaussianSkip`): the network predicts
# $\epsilon = \sigma x_t/(\mu^2+\sigma^2) + \mu F(x_t, t)$ instead of $\epsilon = F(x_t, t)$. The
# sampler's denoised estimate $\hat x = (x_t - \sigma\epsilon)/\mu$ divides by $\mu(1) = 10^{-3}$,
# so a plain network has to reproduce its input to about $10^{-3}$ at $t \approx 1$ before its
# samples stop growing without bound; after a short training it does not, and its samples blow up.
# With the skip the network's error reaches $\hat x$ as $-\sigma F$, undivided. In the full profile
# the skip's Gaussian term has the training states' power spectrum rather than white noise's
# (`skip_spectrum`), so that at high noise the skip alone already has the flow's spectrum.
#
# A second change, the loss (`loss="v"`). The original's $\epsilon$-matching loss weighs the
# network's error equally at every $t$; inside the skip the network's error reaches $\epsilon$
# multiplied by $\mu$, so its weight is $\mu^2$, $10^{-6}$ at $t = 1$. The network is then hardly
# trained at high noise, which is where the sampler decides the large scales. On a small CPU
# stand-in of this setup (`bench/results/cpu/diag-sda-lowk.log`) a network trained that way,
# asked to denoise pure noise, returned almost nothing of the mean flow $u \approx 0.45\sin 4y$
# (which carries a quarter of the energy at $k = 4$), and its samples had that mode with the wrong
# sign ($-0.19 \pm 0.20$); training 8x longer did not help. Dividing the error by $\mu^2$ (the
# v-prediction loss of Salimans and Ho) gives $0.43$, close to the data's $0.45$. The `paper`
# profile keeps the original parametrisation and loss.

# %%
config = TrainConfig(epochs=cfg.train_epochs, batch_size=cfg.train_batch, hidden_channels=cfg.hidden_channels,
                     hidden_blocks=cfg.hidden_blocks, windows_per_trajectory=cfg.train_windows,
                     checkpoint_every=cfg.train_checkpoint_every, skip=cfg.train_skip,
                     skip_spectrum=cfg.train_skip_spectrum, loss=cfg.train_loss, ema=cfg.train_ema,
                     channels_last=device.type == "cuda")
run_dir = default_root() / "runs" / f"sda-{P.name}-{spec.slug()}-{config_tag(config)}"  # one folder per recipe
started = time.perf_counter()
history = train(config, folder, run_dir, device=device)
training_s = time.perf_counter() - started
seconds = [row["seconds"] for row in history]
print(f"{len(history)} epochs, final train loss {history[-1]['train_loss']:.4f}, "
      f"validation loss {history[-1]['valid_loss']:.4f}")
print(f"this run: {training_s:.0f} s in this cell; median epoch {np.median(seconds):.2f} s "
      f"(first {seconds[0]:.2f} s) on {device}")
fig = plots.training_curve(history, loss=config.loss)

# %% tags=["remove-cell"]
assert history[-1]["valid_loss"] < 0.8 * history[0]["valid_loss"], (history[0], history[-1])

# %% [markdown]
# Both curves are the v loss, each window at one random $t$. The validation curve scores the same
# 208 windows (16 of each of the 13 validation trajectories) at the same $t$ and noise every
# epoch, so it falls smoothly; the training curve averages each epoch's fresh draws while the
# weights change. The two end together: no sign of overfitting in 50 epochs. (A window's loss
# depends strongly on its $t$. An earlier version scored one window per validation trajectory,
# 13 draws, and on the same training run ended at 0.320 against the training loss's 0.197:
# the gap was those 13 draws, not the data.)

# %% [markdown]
# ## Unconditional samples
#
# Sampling integrates from $t = 1$ (pure noise) to $t = 0$ with the original's sampler: an
# exponential-integrator predictor (DDIM with $\eta = 0$; `tests/test_sda_azula.py` checks it
# step by step against azula's samplers) and, in the original, one Langevin corrector step after
# each, of relative size $\tau = 0.5$. The full profile leaves the corrector out
# (`sample_corrections`): at full scale, with the original's loss, one correction left the
# samples' spectrum 3.2x off at some $k \le 16$, against 0.66 without (`diag-sda-gamma.log`).
# Whole trajectories of 64 states are sampled at once through `MCScoreNet`, though the network
# has only ever seen windows of five.
#
# ### The seed's window cannot hold the large scales
#
# The largest scales of the flow change slowly: on the training data the $k = 1$ Fourier modes
# keep a correlation of about 0.7 over 8 states (1.6 time units), while a window of 5 spans 0.8.
# `MCScoreNet` builds the score of each state from the window centred on it, so nothing in it can
# tie state 0 to state 8. How much that costs can be measured with no network at all: take an
# exact Gaussian process with the data's spectrum and time correlation, compose its score from
# windows of 5 the way `MCScoreNet` does, and sample. On a CPU stand-in of this data
# (`bench/results/cpu/diag-sda-lowk.log`, `sda_lowk_gp_window.py`) its samples had only 0.53 to
# 0.58 of the data's energy at $k = 1$; the same process over the whole trajectory gave 0.78 to
# 0.81. A perfectly trained window network inherits that limit, and the design document's
# configuration (window 5) cannot meet this chapter's spectrum target however long it trains.
#
# labkit's fix keeps the network and changes who decides the large scales
# (`labkit.sda.gaussian`): above a switch time (the profile's `sample_handoff`; the cell prints it
# and its $\mu$) the sampler uses the exact score of a Gaussian process over the *whole*
# trajectory, fitted to the training trajectories (their mean field, power spectrum and per-shell
# time correlation: `SpaceTimeGaussian`); below it, where the small scales and their
# non-Gaussian structure form, the trained network takes over (`Handoff`). The Gaussian part is
# a few FFTs and one small matrix product per wavevector, cheaper than one network call. Both
# samplers below start from the same noise.

# %%
score, _ = load_score(run_dir, device=device)
score.eval()
samplers = {"network alone (the original's sampler)": score}
gaussian = None
if cfg.sample_handoff is not None:
    # fitted once, for the longest trajectory sampled here (the scenarios below reuse it)
    longest = max(cfg.sample_length, *(s.length for s in SCENARIOS.values()))
    gaussian = SpaceTimeGaussian.fit(torch.as_tensor(train_x), longest)
    samplers[f"hand-off at t = {cfg.sample_handoff}"] = with_handoff(score, gaussian, cfg.sample_length,
                                                                     cfg.sample_handoff)
    t_switch, schedule = torch.tensor(cfg.sample_handoff), VPSDE(score, ())
    mu_switch, sigma_switch = schedule.mu(t_switch).item(), schedule.sigma(t_switch).item()
    print(f"hand-off at t = {cfg.sample_handoff}: mu = {mu_switch:.2f}, signal-to-noise mu^2/sigma^2 = "
          f"{(mu_switch / sigma_switch)**2:.2f}")
sampled = {}
for name, eps in samplers.items():
    prior = VPSDE(eps, (cfg.sample_length, 2, 64, 64)).to(device)
    torch.manual_seed(1)
    started = time.perf_counter()
    x = prior.sample((cfg.sample_count,), steps=cfg.sample_steps, corrections=cfg.sample_corrections, tau=0.5)
    sampling_s = time.perf_counter() - started
    sampled[name] = x.float().cpu()
    print(f"{name}: {cfg.sample_count} trajectories of {cfg.sample_length} states, {cfg.sample_steps} steps x "
          f"(1 + {cfg.sample_corrections}) calls: {sampling_s:.1f} s")
samples = sampled[list(samplers)[-1]]  # the profile's sampler

every = max(1, cfg.sample_length // 6)
picks = list(range(0, cfg.sample_length, every))[:6]
rows = {"data": [KolmogorovFlow.vorticity(torch.as_tensor(test[0, i])) for i in picks]}
rows.update({name.split(" (")[0]: [KolmogorovFlow.vorticity(x[0, i]) for i in picks] for name, x in sampled.items()})
fig = plots.vorticity_grid(rows, [f"state {i} (t = {0.2 * i:.1f})" for i in picks])

# %% [markdown]
# Whether the samples have the flow's statistics: the energy spectrum of the samples against
# that of held-out data (validation and test trajectories), and the statistics of chapter 4a.

# %%
held_out = np.concatenate([valid, test])
k, e_data = stats.energy_spectrum(held_out)
spectra = {"held-out data": e_data}
worst_by = {}
for name, x in sampled.items():
    spectra[name] = stats.energy_spectrum(x)[1]
    ratio = spectra[name] / e_data
    worst_by[name] = np.abs(ratio[1:17] - 1).max()
    print(f"{name}\n  E(k) samples / data:", ", ".join(f"k={i}: {ratio[i]:.2f}" for i in (1, 2, 4, 8, 12, 16)))
    print(f"  largest deviation for 1 <= k <= 16: {worst_by[name]:.0%} (target: 25%)")
worst = worst_by[list(samplers)[-1]]
fig = plots.spectra_comparison(k, spectra)
summaries = {"data": stats.summary(held_out)}
summaries.update({name.split(" (")[0]: stats.summary(x) for name, x in sampled.items()})
print(f"{'':18s}" + "".join(f"{name:>21s}" for name in summaries))
for key in ("std_u", "std_v", "kinetic_energy", "jet_amplitude", "vorticity_std", "vorticity_p99",
            "vorticity_kurtosis", "corr_lag1", "corr_lag5"):
    print(f"{key:18s}" + "".join(f"{row[key]:21.3f}" for row in summaries.values()))

# %% [markdown]
# The network alone misses the target at the largest scales: its samples have 0.58 of the data's
# energy at $k = 1$ and 0.61 at $k = 2$, a largest deviation of 42% for $k \le 16$. That is the
# window's limit measured above with an exact Gaussian process (0.53-0.58 at $k = 1$), now with a
# trained network. With the hand-off at $t = 0.4$ the same network's samples have 0.81 and 0.79
# there, and a largest deviation of 21%, inside the 25% target. The switch time is not tuned to the
# spectrum: at $t = 0.4$ the signal-to-noise ratio is 0.8, about where noise stops hiding the large
# scales, and pushing the switch towards $t = 0$ would meet any spectrum target with the Gaussian
# process alone while losing the flow's non-Gaussian small-scale structure. At full scale a switch
# at 0.6 left $k = 4$ to 8 at 0.69 to 0.75 of the data (`diag-sda-handoff.log`).
#
# A matched spectrum is not a matched flow, and the pictures above show it. The spectrum is a
# second-order statistic: a Gaussian field with the right spectrum meets it exactly. The flow's
# coherent vortices and thin filaments live in the higher moments, and the samples have neither;
# they look like smooth random fields. The table says the same in numbers. The vorticity's
# kurtosis is 4.39 in the data, 3.05 in the hand-off's samples and 3.46 in the network's alone (a
# Gaussian field has 3). The hand-off's samples have 19% less kinetic energy (0.83 against 1.03)
# and a 17% smaller vorticity standard deviation (0.35 against 0.43), and their strongest
# vorticity (the 99th percentile of $|w|$) is 0.92 against the data's 1.29. Fifty epochs in two
# minutes see 2.4% of the windows the original's training sees, and what the network has learned
# by then is mostly second order. Whether the original's 4,096 epochs (the `paper` profile, 51
# minutes compiled on an H100) give samples with the flow's structure is not measured in this book.
#
# ## Data assimilation
#
# Given observations $y = A(x) + \text{noise}$ of a trajectory, SDA samples the posterior by
# adding the gradient of a Gaussian likelihood to the prior's score: with the denoised estimate
# $\hat x = (x_t - \sigma\hat\epsilon)/\mu$,
# $\log p(y \mid x_t) \approx \log\mathcal N\big(y \mid A(\hat x),\ \sigma_y^2 + \gamma\,(\sigma/\mu)^2\big)$,
# with $\gamma$ the profile's `assimilate_gamma` (the paper's $10^{-2}$, the full profile's $10^{-3}$).
# The $\gamma$ term is what keeps the guidance stable early on, when $\mu \approx 10^{-3}$
# magnifies the network's errors a thousandfold. The baseline, DPS, uses a normalised gradient of
# $\|y - A(\hat x)\|^2$ instead and ignores $\sigma_y$. Both guide the same prior, the
# profile's sampler from above (the hand-off, its fitted process cut to each scenario's number of states).
#
# In full-scale runs of this recipe on an H100 the guidance's $\gamma$ mattered more than anything
# else: with the original's loss, the coarse residual was 0.17 at $\gamma = 10^{-2}$ with one
# correction and 0.10 at $10^{-3}$ without (`diag-sda-gamma.log`); with the v loss it was 0.38 at
# $10^{-2}$ and 0.08 at $10^{-3}$ (`diag-sda-handoff.log`).
#
# A posterior sample should leave a residual $A(x) - y$ that looks like the noise: standard
# deviation close to $\sigma_y$. That is the one number the original reports for its Kolmogorov
# figures. Two of its scenarios: coarse, intermittent observations (every 4th state of 29,
# $8\times8$ block means, $\sigma_y = 0.1$), and a non-linear operator (the saturated vorticity
# $w/(1+|w|)$ of coarsened states 0, 3, 6, centre crop, $\sigma_y = 0.05$).

# %%
results = {}
posteriors = {}
priors = {name: with_handoff(score, gaussian, SCENARIOS[name].length, cfg.sample_handoff)
          for name in ("coarse", "saturating")}
for name, index in (("coarse", 1), ("saturating", 2)):
    scenario = SCENARIOS[name]
    truth = torch.as_tensor(test[min(index, len(test) - 1), :scenario.length]).to(device)
    y = observe(scenario, truth, torch.Generator().manual_seed(index))
    for method in ("sda", "dps"):
        torch.manual_seed(0)
        started = time.perf_counter()
        x = assimilate(priors[name], y, scenario, method, steps=cfg.sample_steps,
                       corrections=cfg.assimilate_corrections, gamma=cfg.assimilate_gamma)
        seconds = time.perf_counter() - started
        results[name, method] = residual_std(scenario, x, y).item()
        posteriors[name, method] = x[0].float().cpu()
        print(f"{name:10s} {method}: residual std {results[name, method]:.3f} (sigma_y {scenario.std}, "
              f"original {scenario.original[method]}), {seconds:.1f} s")
    posteriors[name, "truth"] = truth.float().cpu()

# %%
print(f"{'scenario':10s} {'sigma_y':>7s} {'SDA':>7s} {'DPS':>7s} {'SDA/sigma_y':>12s}   original SDA / DPS")
for name in ("coarse", "saturating"):
    s = SCENARIOS[name]
    print(f"{name:10s} {s.std:7.2f} {results[name, 'sda']:7.3f} {results[name, 'dps']:7.3f} "
          f"{results[name, 'sda'] / s.std:12.2f}   {s.original['sda']} / {s.original['dps']}")

coarse = SCENARIOS["coarse"]
shown = list(range(0, coarse.length, 4))[:7]
y_coarse = coarse.A(posteriors["coarse", "truth"][None])[0]  # noise-free, for the picture
fig = plots.vorticity_grid(
    {"truth": [KolmogorovFlow.vorticity(posteriors["coarse", "truth"][i]) for i in shown],
     "observed (8x8)": [KolmogorovFlow.vorticity(y_coarse[j]) / 8 for j in range(len(shown))],
     "SDA": [KolmogorovFlow.vorticity(posteriors["coarse", "sda"][i]) for i in shown],
     "DPS": [KolmogorovFlow.vorticity(posteriors["coarse", "dps"][i]) for i in shown]},
    [f"state {i}" for i in shown], vmax=2.0)

# %% [markdown]
# SDA's residuals are at the noise level in both scenarios: 0.083 for the coarse observations
# ($\sigma_y = 0.1$, so $0.83\,\sigma_y$) and 0.050 for the saturating ones ($\sigma_y = 0.05$,
# $1.01\,\sigma_y$). The original reports 0.11 and 0.061 for its own model. DPS, which ignores
# $\sigma_y$, stays far above it (0.875 and 0.497; the original: 0.857 and 0.548): its posterior
# samples do not agree with the observations to within their noise.
#
# A residual at the noise level says that the posterior agrees with what was observed, here
# $8\times8$ averages of every fourth state; the scales in between come from the prior. In the
# pictures SDA puts the large structures where the truth has them (the strong vortices of states 0
# and 8), but its fine scales are the prior's smooth random field, not the truth's filaments: the
# same missing structure as in the unconditional samples. The original trains its network on 41
# times as many windows.

# %% tags=["remove-cell"]
# The chapter's targets, checked after both sections ran so that a miss still leaves every output.
if P.name == "full":
    for name in ("coarse", "saturating"):
        assert results[name, "sda"] <= 1.2 * SCENARIOS[name].std, results
    assert worst <= 0.25, worst_by

# %% [markdown]
# (The observed row is the vorticity of the $8\times8$ averages, divided by 8 to put it in the fine
# grid's units: the convention's unit is one grid spacing, 8 times larger on the $8\times8$ grid.
# It is all the assimilation gets of states 0, 4, 8, ...; the states between are not observed.)
#
# The saturating scenario, states 0 to 7 (only 0, 3 and 6 are observed, and only their centre):

# %%
fig = plots.vorticity_grid(
    {name.upper() if name != "truth" else name: [KolmogorovFlow.vorticity(posteriors["saturating", name][i])
                                                 for i in range(8)]
     for name in ("truth", "sda", "dps")},
    [f"state {i}" for i in range(8)], vmax=2.0)

# %% [markdown]
# ## Speed
#
# The benchmark suite `sda` (`python -m labkit.bench sda`) times one training step of the
# original network at the original's batch of 32 and converts it into an epoch (26 steps, the
# original's 819 training trajectories), and one sampling run of a 64-state trajectory, each in
# the original's formulation (float32, PyTorch eager) and with bf16 autocast, channels-last memory
# and `torch.compile`:

# %%
sda_bench = load_results("sda")
print(sda_bench["environment"]["device"])
print(format_table(sda_bench["results"], ["name", "amp", "channels_last", "compile", "median_ms",
                                          "peak_mib", "epoch_seconds", "seconds_256_steps"]))

# %% [markdown]
# The design document's 25 s per epoch (28 hours for 4,096 epochs) is what its hardware gave; on
# the H100 the original's own formulation already takes 1.8 s per epoch, and bf16 with
# channels-last memory and `torch.compile` takes 0.75 s (2.4x the original formulation on the same
# GPU, 33x the document's figure; target 1.25 s): the original's 4,096 epochs in 51 minutes.
# Compilation costs about two and a half minutes once, which is why the notebook itself trains
# uncompiled. A 64-state trajectory with 256 steps and one correction each takes 12 s in float32
# eager and 5 s compiled in bf16.
#
# ## Summary
#
# * The `'cos'` schedule is $\cos(\omega t)^2$; the design document's table rounds its middle
#   rows with the $\eta \to 0$ formula (five entries off in the second decimal).
# * The original network has 22.9M parameters, not 6.5M.
# * One epoch of the original recipe takes 0.75 s on an H100 (the document: 25 s).
# * After two minutes of training, the window network alone leaves the largest scales short (0.58 of
#   the data's energy at $k = 1$, 0.61 at $k = 2$; a largest deviation of 42%); a window of five
#   states cannot tie together states far enough apart to hold them. Handing the noisy part of
#   sampling ($t > 0.4$) to a Gaussian process over the whole trajectory brings every $k \le 16$
#   within 25% (a largest deviation of 21%).
# * Guided by the Gaussian likelihood with $\gamma = 10^{-3}$, SDA's residual is at the noise level
#   ($0.83\,\sigma_y$ for the coarse observations, $1.01\,\sigma_y$ for the saturating ones); DPS's
#   residuals are $8.8\,\sigma_y$ and $9.9\,\sigma_y$.
# * The samples match the spectrum, not the flow's structure: no coherent vortices or filaments,
#   vorticity kurtosis 3.05 against the data's 4.39 (3 for a Gaussian field).

# %%
print(f"notebook wall time: {time.perf_counter() - notebook_started:.0f} s (profile {P.name}, device {device.type})")
