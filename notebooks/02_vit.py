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
# # A Vision Transformer with a KAN feed-forward: counting and training honestly
#
# The second half of design document `001` (Chinese in the original) swaps the feed-forward
# network of a Vision Transformer {cite}`dosovitskiy2021vit` for two Chebyshev KAN layers
# {cite}`ss2024chebykan` and reports a table for five ViT sizes on the 3,670 flower photos of
# tf_flowers. Read at face value it says: the KAN ViT has **three times fewer parameters** and
# **three times fewer FLOPs** than the MLP ViT, trains somewhat slower, and reaches **46-49%**
# validation accuracy against 50-54% for the MLP ViT.
#
# None of the three claims survives a recount. This chapter rebuilds the models in `labkit.vit`,
# counts them from their parameters and their operations, times them on a GPU, and then does
# what the seed's table could not: it trains MLP, ChebyKAN and B-spline KAN feed-forwards from
# scratch, at matched parameter counts and several seeds, and compares what they learn.

# %%
import sys

if "google.colab" in sys.modules:  # on Colab: install the labkit version this book was built from
    # %pip install -q "labkit @ git+https://github.com/labkit-book/labkit@v0.1.0"
    pass

# %%
import labkit

P = labkit.start(seed=0)
cfg = P.vit

# %%
import math
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

from labkit.bench import describe_results, format_table, load_results
from labkit.data import default_root
from labkit.vit import create_model, ffn_kinds
from labkit.vit.accounting import count_flops, count_parameters, matched_mlp_ratio, seed_parameter_count
from labkit.vit.seed_report import SEED_TABLE, comparison_rows
from labkit.vit.train import config_from_profile, train

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
plt.rcParams.update({"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3})
notebook_started = time.perf_counter()

# %% [markdown]
# ## The model
#
# `labkit.vit.VisionTransformer` follows the seed's model: a convolutional patch embedding, a
# class token (and optionally a distillation token), a learned position embedding, pre-norm
# blocks with stochastic depth, an optional representation ("pre-logits") layer and a linear
# head. Attention goes through `torch.nn.functional.scaled_dot_product_attention`, which picks a
# fused kernel on the GPU; the seed's explicit softmax is kept as `attn_impl="explicit"` for the
# benchmark. The block's feed-forward is pluggable: `ffn="mlp"` (Linear, GELU, Linear),
# `"chebykan"` (two `ChebyKANLayer`s from chapter 1) or `"kan"` (two B-spline `KANLinear`s), and
# `register_ffn` adds more. The factories are the seed's (`vit_base_patch16_224`, ...,
# `vit_huge_patch14_224_in21k`) plus small ones for 28 x 28 and 32 x 32 images.

# %%
print("feed-forward kinds:", ffn_kinds())
tiny = create_model("vit_tiny_patch4_28", ffn="chebykan")
print(tiny.blocks[0])
x = torch.randn(2, 1, 28, 28)
print("logits:", tuple(tiny(x).shape))
try:
    tiny(torch.randn(2, 1, 32, 32))
except ValueError as error:  # a wrong image size names the expected one
    print("ValueError:", error)

# %% [markdown]
# ## The seed's table, recounted
#
# For each model of the seed's table we build labkit's version on PyTorch's `meta` device (shapes
# without memory, so even the 1.9-billion-parameter ChebyKAN ViT-H/14 costs nothing) with five
# classes, as on tf_flowers, and count:
#
# * `params_m`: every parameter, summed over `model.parameters()`;
# * `seed_rule_m`: the seed's rule applied to our model. Its summary tool visits each sub-module
#   and adds up the attributes called `weight` and `bias`, nothing else
#   (`labkit.vit.accounting.seed_parameter_count`);
# * `head_params`: the classification head, plus the representation layer where there is one;
# * `gmacs`: multiply-adds per image of the forward pass, from
#   `torch.utils.flop_counter.FlopCounterMode` (which counts 2 FLOPs per multiply-add, so
#   `gflops = 2 x gmacs`; the seed's tool counted multiply-adds).

# %%
rows = comparison_rows()
print(format_table(rows, ["model", "ffn", "seed_params_m", "seed_rule_m", "params_m", "seed_trainable",
                          "head_params", "seed_gflops", "gmacs", "seed_valid_acc"]))

# %% [markdown]
# Three things stand out.
#
# **The seed's rule reproduces its own column exactly**, to the parameter (for example 85,650,437
# for ViT-B/16), and the true count differs from it for the ChebyKAN models by a factor of about
# nine. A `ChebyKANLayer` keeps its coefficients in a tensor called `cheby_coeffs`, which the
# summary never looks at, so all that remained of each KAN block was its LayerNorms and attention.
# The MLP models lose only the class token and the position embedding (about 0.15M). With every
# parameter counted, a degree-3 ChebyKAN feed-forward has $4 \times$ the MLP's weights (one
# coefficient per Chebyshev polynomial $T_0 \dots T_3$ on every edge), and the KAN ViT-B/16 has
# 255.6M parameters against 85.8M.
#
# **The KAN models' FLOPs are missing the KAN layers.** For the MLP models the seed's figure
# matches our multiply-add count (17.57 G against 17.56 G for B/16; its L/16 row says 64.58 where
# the run's own summary printed 61.58). For the KAN models it reports 6.45 G against our 51.0 G
# for B/16. The seed's figure is close to what is left of the MLP model once its feed-forward
# layers are taken out (6.41 G, the cell below): its tool counted `nn.Linear` and `nn.Conv2d`
# modules and never saw the KAN layers' contractions.
#
# **Only the head was trained.** The seed's "trainable params" equal our `head_params` in every row
# (3,845 = 768 x 5 + 5 for B/16): the backbone was frozen, and since no pretrained weights were
# loaded it was frozen at its random initialisation. The accuracies of 45-54% are those of a
# linear classifier on random features; they say nothing about MLP versus KAN blocks.

# %%
kan_b16 = next(r for r in rows if r["model"] == "ViT-B/16" and r["ffn"] == "chebykan")
mlp_b16 = next(r for r in rows if r["model"] == "ViT-B/16" and r["ffn"] == "mlp")
print(f"ViT-B/16: ChebyKAN / MLP parameters {kan_b16['params_m'] / mlp_b16['params_m']:.2f}x "
      f"(seed's table: {kan_b16['seed_params_m'] / mlp_b16['seed_params_m']:.2f}x), "
      f"multiply-adds {kan_b16['gmacs'] / mlp_b16['gmacs']:.2f}x "
      f"(seed's table: {kan_b16['seed_gflops'] / mlp_b16['seed_gflops']:.2f}x)")

with torch.device("meta"):
    b16 = create_model("vit_base_patch16_224", num_classes=5)
tokens = b16.patch_embed.num_patches + 1
mlp_ffn_gmacs = len(b16.blocks) * tokens * 2 * b16.embed_dim * int(b16.embed_dim * b16.mlp_ratio) / 1e9
print(f"ViT-B/16 MLP model without its feed-forward layers: {mlp_b16['gmacs']:.2f} - {mlp_ffn_gmacs:.2f} = "
      f"{mlp_b16['gmacs'] - mlp_ffn_gmacs:.2f} G multiply-adds; the seed's figure for the KAN model: "
      f"{kan_b16['seed_gflops']:.2f}")

fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
labels = [r["model"].removeprefix("ViT-") for r in rows if r["ffn"] == "mlp"]
pos = np.arange(len(labels))
for ax, (ours, theirs, unit) in zip(axes, (("params_m", "seed_params_m", "parameters (M)"),
                                           ("gmacs", "seed_gflops", "G multiply-adds per image"))):
    for k, (ffn, color) in enumerate((("mlp", "C0"), ("chebykan", "C1"))):
        sel = [r for r in rows if r["ffn"] == ffn]
        ax.bar(pos + (k - 0.5) * 0.4, [r[ours] for r in sel], 0.38, color=color, label=f"{ffn}: counted")
        ax.scatter(pos + (k - 0.5) * 0.4, [r[theirs] for r in sel], color="k", marker="_", s=200, zorder=3,
                   label="seed's table" if k else None)
    ax.set(xticks=pos, xticklabels=labels, yscale="log", ylabel=unit)
    ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Speed and memory on a GPU
#
# The benchmark suite `vit` (`python -m labkit.bench vit`) times a full training step of ViT-B/16
# at batch 64 and 224 x 224 (forward, cross-entropy, backward, AdamW) with bf16 autocast, for
# labkit's MLP ViT with SDPA attention, the same model with the seed's explicit softmax attention,
# labkit's ChebyKAN ViT (the chapter-1 Triton kernels) and timm's `vit_base_patch16_224`, all in
# one run. The table is the committed result.

# %%
vit_bench = load_results("vit")
vit_gpu = describe_results(vit_bench)
steps = [r for r in vit_bench["results"] if r["case"] == "train step"]
print(format_table(steps, ["name", "median_ms", "images_per_s", "peak_gib", "params", "gflops_per_image",
                           "x_labkit_mlp", "skipped"]))

# %%
if vit_gpu:
    by_name = {r["name"]: r for r in steps}
    mlp, kan = by_name["labkit ViT (MLP, SDPA)"], by_name["labkit ViT (ChebyKAN degree 3)"]
    timm_row = by_name.get("timm vit_base_patch16_224", {})
    if "median_ms" in timm_row:
        print(f"labkit MLP ViT-B/16 {mlp['median_ms']:.1f} ms vs timm {timm_row['median_ms']:.1f} ms "
              f"({timm_row['median_ms'] / mlp['median_ms']:.2f}x; target >= 1)")
    print(f"ChebyKAN ViT-B/16 {kan['median_ms']:.1f} ms = {kan['x_labkit_mlp']:.2f}x the MLP ViT (target <= 3.5; "
          f"its FLOPs are {kan['gflops_per_image'] / mlp['gflops_per_image']:.2f}x), peak {kan['peak_gib']:.1f} GiB "
          f"(target <= 16)")
else:
    print("CPU quick run: no GPU timing to compare")

# %% [markdown]
# What the committed run shows (an H100; batch 64 at 224 x 224, bf16 autocast, a full AdamW step;
# the four models resident together and timed in turns, six rounds of eight steps):
#
# * labkit's MLP ViT-B/16 takes 31.6 ms a step against 32.7 ms for timm's `vit_base_patch16_224`
#   with the same parameter count (86.6M), FLOPs and 5.6 GiB peak. Both attend through SDPA, and
#   the two are the same speed within the rounds' spread (28.9-33.4 ms and 29.0-34.1 ms). Timed one
#   model after the other, two earlier runs on an H100 put them 15% apart in opposite directions
#   (34.8 against 29.4 ms, then 30.5 against 33.9 ms; committed beside it as
#   `vit-sequential-a.json` and `-b.json`), which is why the suite now times them in turns.
# * The seed's explicit softmax attention (scores materialised, softmax, then the product) costs
#   43% more time (45.2 ms) and 2 GiB more memory (7.6 GiB): that is what the fused kernel saves.
# * The ChebyKAN ViT-B/16 (degree 3, chapter 1's fused Triton kernels) takes 72.8 ms, 2.30x the
#   MLP ViT, for 2.91x its FLOPs, and peaks at 7.8 GiB. The measurement of the seed's own
#   ChebyKAN ViT-B/16 on an H100 was 196.7 ms and 31.9 GiB: the fused kernels never build the
#   (tokens x features x degree) tensor of Chebyshev values that the seed's einsum formulation keeps
#   for backward.
#
# This run is from before chapter 1's layers chose their Triton path by size: every KAN layer took
# the fused kernels. Layers of ViT-B/16's size (12,608 tokens, 768 -> 3072) now take the
# split-GEMM path by default (`path="auto"`): for one ChebyKAN layer of 4096 rows, 768 -> 3072,
# chapter 1 measured 0.73 ms per bf16 call on that path against 1.10 ms on the fused kernels.
# This suite has not been re-run with it yet. The small ViTs
# trained below are unaffected: their layers stay on the fused kernels.
#
# The same run also trained each of the ten models of the seed's table alone on the GPU for a few
# steps (three to warm up, ten timed) at batch 64 with 5 classes, as the seed's tf_flowers head has:
# the step time and the peak memory of that step, next to the true parameter count and the
# forward FLOPs per image.

# %%
table = [r for r in vit_bench["results"] if r["case"] == "seed table"]
if any("step_ms" in r or "step_skipped" in r for r in table):
    print(format_table(table, ["name", "params", "seed_rule_params", "gflops_per_image", "step_batch", "step_ms",
                               "step_peak_gib", "step_skipped"]))
    timed = [r for r in table if "step_ms" in r]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ffn, color in (("mlp", "C0"), ("chebykan", "C1")):
        sel = [r for r in timed if r["ffn"] == ffn]
        axes[0].scatter([r["gflops_per_image"] for r in sel], [r["step_ms"] for r in sel], color=color, label=ffn)
        axes[1].scatter([r["params"] / 1e6 for r in sel], [r["step_peak_gib"] for r in sel], color=color, label=ffn)
        for r in sel:
            axes[0].annotate(r["name"].split()[0].removeprefix("ViT-"), (r["gflops_per_image"], r["step_ms"]),
                             fontsize=7, xytext=(3, 3), textcoords="offset points")
    axes[0].set(xscale="log", yscale="log", xlabel="forward GFLOPs per image", ylabel="training step (ms), batch 64")
    axes[1].set(xscale="log", yscale="log", xlabel="parameters (M)", ylabel="peak memory of the step (GiB)")
    for ax in axes:
        ax.legend()
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}" if str(v)[0] in "25" else ""))
    plt.tight_layout()
    plt.show()
    pairs = {(r["name"].split()[0], r["ffn"]): r for r in timed}
    for size in dict.fromkeys(name for name, _ in pairs):
        if (size, "mlp") in pairs and (size, "chebykan") in pairs:
            m, k = pairs[size, "mlp"], pairs[size, "chebykan"]
            print(f"{size:9s} ChebyKAN / MLP: step {k['step_ms'] / m['step_ms']:.2f}x, FLOPs "
                  f"{k['gflops_per_image'] / m['gflops_per_image']:.2f}x, parameters {k['params'] / m['params']:.2f}x, "
                  f"peak memory {k['step_peak_gib'] / m['step_peak_gib']:.2f}x")
else:
    print("this result file has no timed seed-table models; run `python -m labkit.bench vit` on a GPU")

# %% tags=["remove-cell"]
if vit_gpu:  # the targets, on the committed GPU run
    assert mlp["median_ms"] <= timm_row["median_ms"], (mlp["median_ms"], timm_row)
    assert kan["x_labkit_mlp"] <= 3.5 and kan["peak_gib"] <= 16, kan
    assert len(table) == 10 and all("step_ms" in r for r in table), [r["name"] for r in table if "step_ms" not in r]

# %% [markdown]
# Every model of the table fits on one 80 GB H100 at batch 64, ViT-H/14 with ChebyKAN included
# (1.89 billion parameters, 51.5 GiB at the peak of an AdamW step, 0.53 s a step). A ChebyKAN
# feed-forward costs 1.6x (B/32) to 2.8x (H/14) the MLP model's step for 2.9x its FLOPs. The
# extra memory is the extra parameters' fp32 weights, gradients and two AdamW moments, 16 bytes
# each: 2.5 GiB more for B/16 and 18.7 GiB for H/14, against measured differences of 2.2 and
# 17.3 GiB (the KAN blocks keep slightly fewer activations than the MLP's). These are the true
# parameter counts of the table above, 3.0x the MLP's rather than the 0.34x the seed printed; in
# the seed's runs the frozen backbone hid the difference, since only the head was trained.
#
# ## Replacement training, from scratch
#
# The fair question is the one the seed meant to ask: with everything trained, does a KAN
# feed-forward learn better or worse than the MLP it replaces? Training a ViT-B on 3,670 photos
# from scratch would mostly measure overfitting, so the book's experiment is the tiny ViT
# (`vit_tiny_patch4_28`: 6 blocks of width 192, 7 x 7 patches of 4 pixels) on MNIST (the offline
# subset: 4,000 training and 1,000 test images), trained by `labkit.vit.train` with AdamW, a
# linear warm-up and a cosine decay. The seed's schedule starts from a tiny learning rate, which
# without pretrained weights starves training.
#
# To compare feed-forwards rather than model sizes, each KAN block gets the hidden width that
# gives it the MLP block's parameter count (`matched_mlp_ratio`): a degree-3 ChebyKAN edge
# carries 4 coefficients and a B-spline edge (grid 5, order 3) carries 10 numbers, so their
# hidden widths are a quarter and a tenth of the MLP's 768.

# %%
dim = create_model(cfg.model, **cfg.model_kwargs).embed_dim
for kind in cfg.ffns:
    ratio = matched_mlp_ratio(kind, dim)
    model = create_model(cfg.model, **{**cfg.model_kwargs, "mlp_ratio": ratio}, ffn=kind)
    print(f"{kind:9s} hidden {int(dim * ratio):4d}  parameters {count_parameters(model)['total']:>10,}  "
          f"forward {count_flops(model, (1, 1, 28, 28))['per_image'] / 1e6:6.1f} MFLOPs per image")

# %%
runs_root = default_root() / "runs" / "ch2-vit" / P.name
histories = {}
for kind in cfg.ffns:
    for seed in cfg.seeds:
        config = config_from_profile(cfg, ffn=kind, seed=seed, match_params=True)
        out = runs_root / f"{kind}-seed{seed}"
        histories[kind, seed] = train(config, out, device=device, progress=True)
        last = histories[kind, seed][-1]
        print(f"{kind:9s} seed {seed}: test accuracy {last['test_acc']:.4f}, "
              f"{sum(r['seconds'] for r in histories[kind, seed]) / len(histories[kind, seed]):.2f} s per epoch")

# %%
summary = []
for kind in cfg.ffns:
    runs = [histories[kind, s] for s in cfg.seeds]
    acc = np.array([h[-1]["test_acc"] for h in runs])
    finite = all(math.isfinite(r["train_loss"]) for h in runs for r in h)
    config = config_from_profile(cfg, ffn=kind, seed=cfg.seeds[0], match_params=True)
    summary.append({"ffn": kind, "seeds": len(runs), "test_acc_mean": acc.mean(),
                    "test_acc_std": acc.std(ddof=1) if len(acc) > 1 else float("nan"),
                    "test_acc_min": acc.min(), "s_per_epoch": np.mean([r["seconds"] for h in runs for r in h]),
                    "finite_losses": finite, "amp": "bf16" if device.type == "cuda" else "none"})
print(f"{cfg.model}, {cfg.epochs} epochs, batch {cfg.batch_size}, on {device.type}")
print(format_table(summary, list(summary[0])))

fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for k, kind in enumerate(cfg.ffns):
    for s in cfg.seeds:
        h = histories[kind, s]
        epochs = [r["epoch"] for r in h]
        axes[0].plot(epochs, [r["train_loss"] for r in h], color=f"C{k}", alpha=0.7,
                     label=kind if s == cfg.seeds[0] else None)
        axes[1].plot(epochs, [100 * r["test_acc"] for r in h], color=f"C{k}", alpha=0.7,
                     label=kind if s == cfg.seeds[0] else None)
axes[0].set(xlabel="epoch", ylabel="training loss", yscale="log")
axes[1].set(xlabel="epoch", ylabel="test accuracy (%)", ylim=(80, 100) if device.type == "cuda" else None)
for ax in axes:
    ax.legend()
plt.tight_layout()
plt.show()

# %%
mlp_acc = next(r for r in summary if r["ffn"] == "mlp")["test_acc_mean"]
verdict = ("met" if mlp_acc >= 0.95 else "not met") if P.name == "full" else f"applies to the full profile, not {P.name}"
print(f"MLP ViT on the offline subset's test split: {100 * mlp_acc:.1f}% (target >= 95%: {verdict})")

# %% [markdown]
# What the committed run shows (an H100, 25 epochs, three seeds each, bf16 autocast):
#
# * **The MLP ViT reaches 95.7% (+- 0.6, worst seed 95.3%)**, meeting the 95% target. The B-spline
#   KAN feed-forward at the same parameter count reaches 95.8% (+- 0.3): a tie. The ChebyKAN
#   feed-forward is about a point lower, 94.6% (+- 0.3), every seed under the MLP's worst.
# * **Every loss stayed finite in bf16**, ChebyKAN included: its layer evaluates the polynomials by
#   the recurrence $T_n = 2t\,T_{n-1} - T_{n-2}$ (chapter 1) instead of the seed's
#   $\cos(n \arccos(\tanh x))$, whose gradient is infinite where `tanh` saturates at +-1.
# * **Time per epoch** (31 steps of 128 images plus the 1,000-image test pass): 0.57 s for the MLP,
#   0.77-0.78 s for ChebyKAN and 0.87-0.98 s for the B-spline KAN once their kernels are tuned. The
#   first run of each KAN kind also pays for the Triton autotuning, once per process: 3.3 s and
#   2.0 s per epoch there, which is why the table's means (1.6 s and 1.3 s) sit above the steady
#   state.
#
# So once every parameter trains, neither KAN feed-forward learns this task better than the MLP it
# replaces; the seed's 46-49% against 50-54% measured only what a 3,845-parameter head can do on
# top of random features. The larger published comparisons point the same way at ImageNet scale:
# in the KAT paper {cite}`yang2025kat` a ViT-T with B-spline KAN feed-forwards (Vision-KAN), with
# 12.8M parameters, reaches 64.9% top-1 against 72.7% for the 5.7M-parameter MLP ViT-T; the
# B-spline ViT-B diverges (NaN); only KAT's group-rational KAN, at the MLP's parameter count, beats
# the MLP (74.6% for KAT-T).
#
# ## The full tf_flowers experiment on a workstation
#
# The seed's setting, done properly (every parameter trained, a warm-up and cosine schedule, bf16
# on one GPU), is one command per feed-forward; the data set downloads once into `~/.cache/labkit`
# (or `$LABKIT_DATA`), and an interrupted run resumes from its last epoch when the same command is
# run again:
#
# ```bash
# python -m labkit.vit.train --profile paper --ffn mlp      --out runs/flowers-mlp
# python -m labkit.vit.train --profile paper --ffn chebykan --out runs/flowers-chebykan --match-params
# # two GPUs, data-parallel:
# torchrun --nproc_per_node 2 -m labkit.vit.train --profile paper --ffn mlp --out runs/flowers-mlp-ddp
# ```
#
# The paper profile trains ViT-B/16 at 224 x 224 for its epochs at batch 64; `metrics.csv` and
# `history.json` in the output folder hold one row per epoch. Expect an MLP ViT-B trained from
# scratch on 2,936 images to overfit: published from-scratch ViTs need far more data or strong
# augmentation, which is why this chapter's comparison runs on MNIST.

# %%
print(f"notebook wall time: {time.perf_counter() - notebook_started:.0f} s (profile {P.name}, device {device})")
