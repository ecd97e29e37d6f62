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
# # The kernel toolkit: log-domain matmul, scan, gates, recovery, presets
#
# Chapter 5a measured the tensor-train embedding of design document `000`. The same document
# reports six more changes as done (its items 2 to 7): a more accurate log-number-system ("LNS")
# matmul, differentiable on/off gates for the ranks of its AR-SSM layer, autotuned Triton
# kernels, a five-step recovery ladder for numerical failures, pinned library versions, and named
# configuration presets. Each came with an "expected effect"; none came with a measurement.
#
# The research notes read the code behind each item. The LNS kernel never compiled: it added a
# tile of `A` to a tile of `B` of a different shape, and its launch passed the block sizes its own
# autotuner was meant to choose. The "associative scan" that the AR-SSM layer called computed
# only a cumulative sum, and a wrong one, rather than the gated recurrence a state-space layer
# needs. The "Gumbel" gate added the wrong noise and switches a gate on too often. The recovery
# ladder declared success after its first step, so its new rollback and re-initialisation could
# not run, and its checkpoint kept references to the live optimizer state. The presets were
# shared objects that the recovery code changed in place.
#
# This chapter builds each piece in `labkit.htt` and measures it: a log-domain matmul that runs
# at matmul speed and is exact to fp32 rounding, and the forward algorithm of a hidden Markov
# model on it; a Triton scan for $h_t = a_t h_{t-1} + b_t$, timed against a device copy and
# against accelerated-scan; the AR-SSM layer with a decay, unbiased gates and real pruning; a
# recovery ladder that escalates, demonstrated on a NaN written into a weight mid-training; and
# frozen presets whose memory is measured on a GPU. Item 4 lives on in the kernels: they are
# autotuned without the launch overriding the tuner. Item 6 (pin `torch==2.1.0` and
# `triton==2.1.0`) labkit does differently: the package asks for recent lower bounds, because
# Colab ships its own torch and an exact pin would reinstall it, and the versions CI tested
# with are pinned in one file, `.ci/constraints.txt`.

# %%
import sys

if "google.colab" in sys.modules:  # on Colab: install the labkit version this book was built from
    # %pip install -q "labkit @ git+https://github.com/labkit-book/labkit@v0.1.0"
    pass

# %%
import labkit

P = labkit.start(seed=0)
cfg = P.toolkit

# %%
import dataclasses
import math
import time

import matplotlib.pyplot as plt
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from labkit.bench import describe_results, format_table, load_results
from labkit.htt import (AdaptiveRankSemiseparableLayer, Phase1ErrorRecovery, build_model, demos, gate_samples,
                        get_preset, hmm_forward_log, hmm_forward_scaled, linear_scan, linear_scan_reference,
                        list_presets, log_matmul, log_matmul_reference, plots_toolkit, print_preset_comparison,
                        seed_gumbel_gate)
from labkit.htt.arssm import GATE_MODES
from labkit.htt.presets import count_parameters

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
plt.rcParams.update({"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3})
notebook_started = time.perf_counter()

# %% [markdown]
# ## Log-domain matmul
#
# Given the logarithms $A = \log X$ and $B = \log Y$ of two non-negative matrices, the logarithm of
# their product is
#
# $$C_{ij} = \log \sum_k \exp(A_{ik} + B_{kj}).$$
#
# Computing it without leaving the log domain means nothing overflows or underflows however large
# or small the entries of $X$ and $Y$ are: this is the step of the forward algorithm of a hidden
# Markov model, of CRF and CTC losses, and of any product of many probabilities. The seed's first
# kernel approximated each sum by its largest term, $\max_k (A_{ik} + B_{kj})$ ("max-log"). Item 2
# replaced that with a pairwise update, $\max(x, y) + \log(1 + e^{-|x - y|})$. That is not an
# approximation with a correction, as the document says, but the exact logarithm of a sum of two
# terms, applied once per term: an `exp` and a `log1p` for every multiply-add.
#
# `labkit.htt.log_matmul` takes the maxima out once per row and column instead. With
# $r^A_i = \max_k A_{ik}$, $r^B_j = \max_k B_{kj}$, $A' = A - r^A \le 0$ and $B' = B - r^B \le 0$,
#
# $$C_{ij} = r^A_i + r^B_j + \log \big(e^{A'} e^{B'}\big)_{ij},$$
#
# and $e^{A'} e^{B'}$ is an ordinary fp32 matmul: $MK + KN$ exponentials instead of $MNK$. The one
# way this fails is underflow, when the largest entry of row $i$ of $A$ and the largest entry of
# column $j$ of $B$ sit at different $k$ and every product is tiny; the kernel finds those entries
# and recomputes them exactly (the docstring of `labkit.htt.logmatmul` derives the error bound).
# The Triton kernels do this tile by tile on the GPU; elsewhere the same algorithm runs in PyTorch.
#
# ### Accuracy
#
# Three methods against float64, on inputs uniform in $[-80, 80]$ (log-probabilities that span
# 70 orders of magnitude) and in $[-1, 1]$, for growing $K$. Errors are absolute, in nats: an
# error $\varepsilon$ in $C$ is a relative error of about $\varepsilon$ in the product itself.
# Max-only is low by between 0 (one term dominates) and $\log K$ (all $K$ terms equal).

# %%
started = time.perf_counter()
accuracy = []
for low, high in ((-80.0, 80.0), (-1.0, 1.0)):
    accuracy += demos.accuracy_vs_k(cfg.acc_ks, cfg.acc_size, low, high, device=device)
print(f"A ({cfg.acc_size} x K) @ B (K x {cfg.acc_size}), fp32 inputs, errors against float64 "
      f"({time.perf_counter() - started:.1f} s)")
print(format_table([{**r, "max_abs_err": f"{r['max_abs_err']:.1e}", "max_rel_err": f"{r['max_rel_err']:.1e}"}
                    for r in accuracy], ["inputs", "K", "method", "max_abs_err", "max_rel_err"]))
plots_toolkit.plot_accuracy_vs_k(accuracy)
plt.show()

# %%
acc = {(r["inputs"], r["K"], r["method"]): r for r in accuracy}
k_max = max(cfg.acc_ks)
labkit_worst = max(r["max_abs_err"] for r in accuracy if r["method"].startswith("labkit"))
maxonly_flat = acc[("uniform [-1, 1]", k_max, "max-only (max-log)")]["max_abs_err"]
maxonly_wide = acc[("uniform [-80, 80]", k_max, "max-only (max-log)")]["max_abs_err"]
labkit_rel_wide = acc[("uniform [-80, 80]", k_max, "labkit log_matmul (fp32)")]["max_rel_err"]
print(f"labkit: worst absolute error over every K and range {labkit_worst:.2e} nats; relative error at K={k_max} "
      f"on +-80 inputs {labkit_rel_wide:.1e}")
print(f"max-only at K={k_max}: {maxonly_wide:.2f} nats low on +-80 inputs, {maxonly_flat:.2f} nats on +-1 inputs "
      f"(log K = {math.log(k_max):.2f}), i.e. the product is off by a factor of up to {math.exp(maxonly_flat):.0f}")

# %% tags=["remove-cell"]
assert labkit_worst < 1e-4 and labkit_rel_wide <= 1e-5
assert maxonly_flat > 0.5 * math.log(k_max)
assert all(r["max_abs_err"] < 1e-4 for r in accuracy if r["method"].startswith("logsumexp"))

# %% [markdown]
# labkit's error is the size of the fp32 `logsumexp` reference's, at every $K$; max-only's grows
# with $K$, the faster the flatter the inputs.
#
# ### Zeros: $\log 0 = -\infty$
#
# A log-domain matrix holds $-\infty$ wherever the probability is 0: a transition that cannot
# happen, a padded position. The pairwise update forms $(-\infty) - (-\infty)$ when both of its
# terms are $-\infty$, which is NaN. `log_matmul` replaces an all-$-\infty$ row's maximum by 0
# before subtracting, so such a row gives $-\infty$ and a zero gradient.

# %%
x = y = torch.tensor(float("-inf"))
m = torch.maximum(x, y)
print("pairwise update of two -inf terms:", (m + torch.log1p(torch.exp(torch.minimum(x, y) - m))).item())

ninf = float("-inf")
A = torch.tensor([[0.0, ninf, 1.0], [ninf, ninf, ninf], [-3.0, 2.0, ninf]], device=device, requires_grad=True)
B = torch.tensor([[1.0, ninf], [ninf, ninf], [0.5, -2.0]], device=device, requires_grad=True)
C = log_matmul(A, B)
print("log_matmul:\n", C.detach().cpu())
print("reference: \n", log_matmul_reference(A.detach(), B.detach()).cpu())
gA, gB = torch.autograd.grad(C.masked_fill(C == ninf, 0).sum(), (A, B))
print("dC/dA:\n", gA.cpu())

# %% tags=["remove-cell"]
assert not torch.isnan(C).any() and torch.equal(C.isinf(), log_matmul_reference(A.detach(), B.detach()).isinf())
assert torch.isfinite(gA).all() and torch.isfinite(gB).all() and (gA[1] == 0).all()

# %% [markdown]
# ### The forward algorithm of an HMM
#
# A hidden Markov model with $S$ states, transition matrix $A_{ij} = p(z_t = j \mid z_{t-1} = i)$
# and emission probabilities $b_t(s) = p(x_t \mid z_t = s)$ has the forward recursion
#
# $$\alpha_t = (\alpha_{t-1} A) \odot b_t, \qquad p(x_1, \dots, x_t) = \textstyle\sum_s \alpha_t(s),$$
#
# one vector-matrix product per observation. The probability of a long sequence is astronomically
# small, so the recursion written as it stands underflows. The classical fix (Rabiner's scaling)
# renormalises $\alpha_t$ at every step and keeps the logarithms of the normalisers; the log-space
# version runs $\log \alpha_t = \mathrm{log\_matmul}(\log \alpha_{t-1}, \log A) + \log b_t$ and needs
# no bookkeeping. The example below has sparse transitions (each state moves to itself or one of
# the next two), so $\log A$ is mostly $-\infty$.

# %%
hmm = demos.hmm_example(cfg.hmm_states, cfg.hmm_symbols, cfg.hmm_length)
pi, trans, b_obs = (hmm[k].to(device) for k in ("pi", "A", "B_obs"))
print(f"{cfg.hmm_states} states, {cfg.hmm_symbols} symbols, {cfg.hmm_length} observations; "
      f"{(trans == 0).float().mean().item():.0%} of the transition matrix is zero")

started = time.perf_counter()
naive = {}
for dtype in (torch.float32, torch.float64):
    p_t = demos.hmm_forward_unscaled(pi.to(dtype), trans.to(dtype), b_obs.to(dtype)).sum(dim=1)
    naive[dtype] = p_t.double().log().cpu()
    zero = (p_t == 0).nonzero()
    print(f"unscaled forward in {str(dtype)[6:]}: p(x_1..t) is exactly 0 from t = "
          f"{int(zero[0]) + 1 if len(zero) else 'never'}")
log_b = b_obs.float().log().requires_grad_()
loglik32, log_alpha32 = hmm_forward_log(pi.float().log(), trans.float().log(), log_b)
loglik64, log_alpha64 = hmm_forward_scaled(pi, trans, b_obs)
(posterior,) = torch.autograd.grad(loglik32, log_b)  # d log p(x) / d log b_t(s) = p(z_t = s | x)
seconds = time.perf_counter() - started
hmm_rel_err = abs(loglik32.item() - loglik64.item()) / abs(loglik64.item())
print(f"log-space forward (fp32, log_matmul):   log p(x) = {loglik32.item():.4f}")
print(f"scaled forward (float64, Rabiner):      log p(x) = {loglik64.item():.4f}   "
      f"relative difference {hmm_rel_err:.1e}")
row_sums = posterior.sum(dim=1)
decoded = (posterior.argmax(dim=1).cpu() == hmm["states"]).float().mean().item()
print(f"posterior from autograd: rows sum to 1 within {(row_sums - 1).abs().max().item():.1e}; its argmax is the "
      f"true state at {decoded:.0%} of the steps (chance: {1 / cfg.hmm_states:.0%}); {seconds:.1f} s in all")
curves = {"unscaled, float32": naive[torch.float32], "unscaled, float64": naive[torch.float64],
          "log space, fp32": torch.logsumexp(log_alpha32.detach(), dim=1).double().cpu(),
          "scaled, float64": torch.logsumexp(log_alpha64, dim=1).cpu()}
plots_toolkit.plot_hmm_loglik(curves, reference="scaled, float64")
plt.show()

# %% tags=["remove-cell"]
assert torch.isinf(naive[torch.float32]).any() and torch.isfinite(curves["log space, fp32"]).all()
assert hmm_rel_err < 1e-4 and (row_sums - 1).abs().max().item() < 1e-3
assert decoded > 2 / cfg.hmm_states

# %% [markdown]
# The unscaled recursion hits exactly zero after a few dozen observations in float32 and a few
# hundred in float64; the log-space version in fp32 stays within fp32 rounding of the float64
# scaled one over the whole sequence. Because every step is differentiable, one backward pass
# gives the posterior marginals $p(z_t = s \mid x)$: the forward-backward algorithm for free.
#
# ### Speed
#
# The benchmark suite `logmatmul` (`python -m labkit.bench logmatmul`) times the forward and the
# forward + backward at $M = K = N = 1024$ in fp32 on inputs uniform in $\pm 80$, against the
# chunked broadcast `logsumexp` reference (which builds the $M \times K \times N$ sums in chunks of
# rows), `torch.compile` of that reference, max-only, and a plain fp32 matmul of the same size for
# scale. Errors are against float64 (`grad_rel_err` is the largest gradient error relative to the
# largest gradient). The target: at least 20 times faster than the reference, with a
# relative error of at most $10^{-5}$. A second set of inputs is adversarial: every entry
# underflows, so every tile takes the exact slow path.

# %%
lm_bench = load_results("logmatmul")
lm_gpu = describe_results(lm_bench)
if not lm_gpu:
    print("CPU quick run: the numbers below are placeholders at toy sizes; the book shows the GPU run")
head = [dict(r) for r in lm_bench["results"] if not r.get("sweep") and r["status"] == "ok"]
# Ratios against the reference and the plain matmul rows of this same table (not the size sweep's).
ref_ms = {(r["inputs"], r["case"]): r["median_ms"] for r in head if r["name"].startswith("reference: chunked")}
matmul_ms = {(r["inputs"], r["case"]): r["median_ms"] for r in head if r["name"].startswith("fp32 matmul")}
for r in head:
    key = (r["inputs"], r["case"])
    r["speedup_vs_reference"] = ref_ms[key] / r["median_ms"] if key in ref_ms else None
    r["x_matmul"] = r["median_ms"] / matmul_ms[key] if key in matmul_ms else None
columns = ["name", "case", "M", "median_ms", "speedup_vs_reference", "x_matmul", "max_rel_err", "max_abs_err",
           "grad_rel_err", "peak_mib"]
errors = ("max_rel_err", "max_abs_err", "grad_rel_err")
for inputs in ("uniform +-80", "adversarial"):
    print(f"\ninputs: {inputs}")
    print(format_table([{**r, **{k: f"{r[k]:.1e}" for k in errors if r.get(k) is not None}}
                        for r in head if r["inputs"] == inputs], columns))
if plots_toolkit.plot_logmatmul_sweep(lm_bench) is not None:
    plt.show()

# %%
by_name = {(r["inputs"], r["name"], r["case"]): r for r in head}
lm_verdict = None
if lm_gpu:
    for precision in ("ieee", "tf32x3"):
        row = by_name.get(("uniform +-80", f"labkit triton ({precision})", "forward"))
        if row is None:
            print(f"labkit triton ({precision}): no result")
            continue
        if row["speedup_vs_reference"] is None or row["x_matmul"] is None:
            print(f"labkit triton ({precision}): the reference or the matmul row is missing")
            continue
        speed_ok, err_ok = row["speedup_vs_reference"] >= 20, row["max_rel_err"] <= 1e-5
        print(f"labkit triton ({precision}), forward at {row['M']}^3: {row['speedup_vs_reference']:.1f}x the "
              f"reference (target >= 20: {'met' if speed_ok else 'not met'}), max relative error "
              f"{row['max_rel_err']:.1e} (target <= 1e-5: {'met' if err_ok else 'not met'}), "
              f"{row['x_matmul']:.1f}x the time of a plain fp32 matmul")
        if precision == "ieee":
            lm_verdict = (row["speedup_vs_reference"], row["M"], row["max_rel_err"], speed_ok and err_ok)
    slow = by_name.get(("adversarial", "labkit triton (ieee)", "forward"))
    if slow is not None and slow["speedup_vs_reference"] is not None:
        print(f"adversarial inputs (every tile exact, one exp per term): {slow['median_ms']:.2f} ms, "
              f"{slow['speedup_vs_reference']:.2f}x the reference")
else:
    print("no verdict on the targets from a CPU run")

# %% [markdown]
# What the committed H100 run shows:
#
# * **The target is met.** At $1024^3$ the Triton forward (`ieee`) takes 0.36 ms against 13.8 ms
#   for the chunked reference, 38x, with a relative error of $6.5 \times 10^{-8}$ (the reference's
#   own is $5.5 \times 10^{-8}$). The same kernel at the same size took 0.22 ms (64x) in the
#   size sweep of the same run and 0.25 ms in an earlier run, so read the speed-up as 40-60x.
#   `torch.compile` of the reference gets it to 2.05 ms: the kernel is 6-9x faster than that, and
#   uses 8 MiB where the reference needs 404 MiB.
# * **Forward and backward** take 1.18 ms against 28.3 ms (24x) with 20 MiB against 4.5 GiB; the
#   compiled reference is slower than the eager one here (34.5 ms).
# * **Against a plain matmul**: a fp32 matmul of the same size takes 0.07-0.09 ms, so the
#   log-domain product costs 3-4 of them at $1024^3$ and 1.6 at $4096^3$. `tf32x3` (three TF32
#   tensor-core products) changes the forward little but halves the backward at $4096^3$
#   (19.8 ms against 36.8 ms), at the same error.
# * **Where the kernel is not the best choice.** From $2048^3$ up, the same algorithm written in
#   PyTorch (two exp passes and one cuBLAS matmul) catches up: at $4096^3$ it takes 3.49 ms
#   forward against 4.29 ms, and 10.4 ms forward and backward against 36.8 ms. The fused kernels
#   exponentiate each operand tile again for every output tile, and the backward does that for
#   both gradients; at large sizes that extra work outweighs what fusion saves. So `log_matmul`
#   now hands the backward of problems above $2^{31}$ multiply-adds to the PyTorch formulation
#   when no tile needs the exact path (`LIBRARY_BACKWARD_MIN_MACS`, chosen from these two
#   measured sizes); the forward stays in Triton at every size. The committed run predates that
#   switch: its `labkit triton` rows at $2048^3$ and $4096^3$ are the Triton backward.
# * **Adversarial inputs**, where every tile underflows and takes the exact per-term path, cost
#   2.7 ms forward (5x faster than the reference, still at $1.2 \times 10^{-7}$ relative error)
#   and 5.0 ms forward and backward. The PyTorch version handles them with a `logsumexp` per
#   flagged entry and falls to 31 ms, below the reference: the Triton kernel's tile-level fallback
#   is what keeps the worst case fast.
#
# ## Associative scan
#
# A gated linear recurrence,
#
# $$h_t = a_t h_{t-1} + b_t,$$
#
# is the state update of linear RNNs and state-space layers (Mamba, Griffin, the AR-SSM below).
# The pairs $(a_t, b_t)$ compose associatively, $(a_l, b_l) \circ (a_r, b_r) = (a_l a_r, a_r b_l + b_r)$,
# so a parallel prefix scan computes every $h_t$ in logarithmic depth. The seed's kernel did not
# do this: it scanned with `+` (a cumulative sum, no gates), added the raw input rather than the
# partial sums at each doubling step, carried nothing from one block to the next, and launched
# one kernel per row from a Python loop. The notes' exact emulation of it gets almost every output
# wrong.
#
# labkit's Triton scan (`labkit/htt/triton_scan.py`) gives each program a few rows and walks each
# row in chunks, scanning a chunk with `tl.associative_scan` and carrying the last state into the
# next chunk. The forward reads $a$ and $b$ and writes $h$, once each: three streams of fp32, which
# is also the least any implementation must move. So the yardstick is a device copy of the same
# bytes: a scan cannot beat it, and a good one comes close. The backward is the same scan run from
# the end, $g_t = \partial L/\partial h_t + a_{t+1} g_{t+1}$, with $\partial L / \partial b_t = g_t$ and
# $\partial L / \partial a_t = g_t h_{t-1}$. Off the GPU, a vectorised PyTorch scan takes over.
#
# First, a check against the definition (a Python loop), values and gradients:

# %%
g = torch.Generator().manual_seed(0)
a = (0.9 + 0.1 * torch.rand(2, 8, 1000, generator=g)).to(device).requires_grad_()
b = torch.randn(2, 8, 1000, generator=g).to(device).requires_grad_()
dh = torch.randn(2, 8, 1000, generator=g).to(device)
h = linear_scan(a, b)
h_ref = linear_scan_reference(a.double(), b.double())
grads = torch.autograd.grad(h, (a, b), dh)
grads_ref = torch.autograd.grad(h_ref, (a, b), dh.double())
scan_err = (h.double() - h_ref).abs().max().item()
scan_grad_err = max(((x.double() - y).abs().max() / y.abs().max()).item() for x, y in zip(grads, grads_ref))
print(f"linear_scan on {device} (gates in (0.9, 1), L = 1000): max |h - h_float64| = {scan_err:.1e}, "
      f"largest gradient error relative to the largest gradient {scan_grad_err:.1e}")

# %% tags=["remove-cell"]
assert scan_err < 1e-4 and scan_grad_err < 1e-4

# %% [markdown]
# The suite `scan` (`python -m labkit.bench scan`) times the forward and the forward + backward
# at the shape, $(8, 1536, L)$ in fp32 with $L$ up to 65,536, against accelerated-scan's
# Triton scan and its CUDA warp scan (the fastest public scans of this recurrence that we know of),
# `torch.cumsum` (the $a = 1$ special case, for scale) and the copy. Bandwidth is the modelled
# bytes (forward 12 per element, forward + backward 32) over the median time.

# %%
scan_bench = load_results("scan")
scan_gpu = describe_results(scan_bench)
if not scan_gpu:
    print("CPU quick run: the numbers below are placeholders at toy sizes; the book shows the GPU run")
for name, why in scan_bench["config"].get("skipped", {}).items():
    print(f"skipped {name}: {why}")
print(format_table(scan_bench["results"], ["name", "case", "L", "median_ms", "gbps", "x_copy",
                                           "speedup_vs_accelerated_scan", "peak_mib"]))
plots_toolkit.plot_scan_bandwidth(scan_bench)
plt.show()

# %%
scan_rows = {(r["name"], r["case"], r["L"]): r for r in scan_bench["results"]}
scan_verdict = None
if scan_gpu:
    # The targets are set at its shape, the longest length; the shorter ones are reported.
    longest = max(scan_bench["config"]["lengths"])
    fwd = scan_rows.get(("labkit triton", "forward", longest))
    if fwd is not None:
        fwd_ok = fwd["x_copy"] >= 0.9
        print(f"forward at (8, 1536, {longest}): {fwd['gbps']:.0f} GB/s = {fwd['x_copy']:.0%} of the copy "
              f"(target >= 90%: {'met' if fwd_ok else 'not met'})")
    fb_ok = None
    for length in scan_bench["config"]["lengths"]:
        fb = scan_rows.get(("labkit triton", "fwd+bwd", length))
        if fb is None or fb.get("speedup_vs_accelerated_scan") is None:
            print(f"fwd+bwd at L={length}: no accelerated-scan timing to compare with")
            continue
        line = (f"fwd+bwd at L={length}: {fb['median_ms']:.2f} ms, {fb['speedup_vs_accelerated_scan']:.3f}x "
                "accelerated-scan's Triton scan per call")
        if fb.get("loop_speedup_vs_accelerated_scan") is not None:
            line += f", {fb['loop_speedup_vs_accelerated_scan']:.3f}x back to back"
        if length == longest:
            fb_ok = fb["speedup_vs_accelerated_scan"] >= 1
            line += f" (target >= 1 per call at the issue's shape: {'met' if fb_ok else 'not met'})"
        print(line)
    if fwd is not None:
        scan_verdict = (fwd["x_copy"], fwd_ok and bool(fb_ok))
    for direction, picks in scan_bench["config"].get("autotuned", {}).items():
        for key, config in picks.items():
            print(f"autotuner's pick, {direction}, key {key}: {config}")
else:
    print("no verdict on the targets from a CPU run")

# %% [markdown]
# What the committed run on an H100 shows (rows of 8 x 1536, fp32). Each row has three clocks:
# one call that starts on an idle GPU (the table's `median_ms`, the figure the targets use),
# twenty calls back to back (`loop_ms`: the host runs ahead, as in training) and a replay from
# a CUDA graph (`graph_ms`: the kernels alone).
#
# * **Forward against the copy.** At $L$ = 65,536 labkit's scan moves 2.90 TB/s, 96% of the
#   copy's 3.02 TB/s: the target (90%) is met, and accelerated-scan's Triton scan is level with it
#   (3.33 against 3.32 ms). At 16,384 labkit reaches 93% of the copy and is 2.5% faster than
#   accelerated-scan (0.874 against 0.895 ms); at 4,096, 80% (0.260 against 0.232 ms) per call,
#   but level back to back (0.203 against 0.207 ms). The CUDA warp scan stays near 75% at every
#   length and `torch.cumsum`, which has no gates to read, near 54%.
# * **Forward and backward against accelerated-scan.** At the shape, $L$ = 65,536, labkit
#   takes 8.91 ms per call against 8.95 ms (1.004x; 1.014x back to back): the target "at least as
#   fast" is met, narrowly. At the shorter lengths one call is slower, 0.98x at 16,384 (2.40
#   against 2.35 ms) and 0.81x at 4,096 (0.73 against 0.59 ms), while back to back labkit is
#   ahead at both (1.014x and 1.019x) and so are its kernels alone (graph replay: 2.17 against
#   2.21 ms and 0.537 against 0.554 ms). Against the CUDA warp scan labkit is faster back to back
#   at every length, and per call everywhere but forward + backward at 4,096 (0.73 against 0.64 ms).
# * **Where the short rows lose.** One call pays the host's work before and between the kernels
#   whenever that work outlasts the kernels. For forward + backward at 4,096 the call takes
#   0.18 ms longer than a call back to back for labkit, 0.03 ms for accelerated-scan. The previous
#   run of this suite measured 0.77 ms per call there; since then the entry point has lost its
#   broadcasting checks for equal shapes and its reshapes (the kernels take the $(B, C, L)$
#   tensors as they come), which brought it to 0.73 ms. What is left sits in the launch path
#   (Triton's autotuner and launcher, autograd's call of the backward), which we have not
#   profiled yet. In a training loop, where calls run back to back, it does not show.
# * **What the autotuner picked**: one row per program, chunks of 4,096 elements and 8 warps at
#   every length, forward and backward (listed above).
#
# ## AR-SSM: a decaying state and gates that prune
#
# The seed's AR-SSM layer mixed the sequence with $r$ rank channels, each a running sum
# $\sum_{s \le t} u_s$ of a projection of the input (no decay: $a_t = 1$), times a gate computed
# from the token. labkit's layer (`labkit.htt.AdaptiveRankSemiseparableLayer`) keeps the shape,
# a depthwise causal convolution plus $r$ channels, and changes three things:
#
# * **a decay**: channel $k$ runs $h_t = a_t h_{t-1} + (1 - a_t) u_t$ with
#   $a_t = \sigma(x_t \cdot A_k + c_k) \in (0, 1)$, through `linear_scan`. The state is a weighted
#   average of past inputs, so $|h_t| \le \max_s |u_s|$ at every length, even as $a_t \to 1$;
# * **one gate per channel**, a learned logit, rather than a function of the token, applied once.
#   A channel that is off is off for every input, so at evaluation it is not computed at all. The
#   seed computed every channel always, so its gates saved nothing;
# * **gates that are unbiased** (below).
#
# Unrolled, channel $k$ is a lower-triangular matrix with entries
# $v_t \big(\prod_{j=s+1}^{t} a_j\big)(1 - a_s) u_s$: 1-semiseparable, the scalar-decay form of
# Mamba-2's state-space duality with one state per channel.
#
# ### A bounded state
#
# The running maximum of $|h_t|$ over a long sequence of inputs $x_t \sim \mathcal{N}(1, 1)$ (real
# inputs rarely average to zero), for the layer at its initialisation (decays between 0.9 and
# 0.99), for the same layer with every decay forced to $1 - 10^{-4}$ (a memory of 10,000 steps),
# and for the seed's undecayed sum of the same $u_t$, which grows in proportion to $t$:

# %%
torch.manual_seed(0)
layer = AdaptiveRankSemiseparableLayer(8, 4).to(device)
x_long = 1 + torch.randn(1, cfg.state_length, 8, device=device)
with torch.no_grad():
    u = layer.u_proj(x_long)[0]
    h_init = layer.states(x_long)[0]
    slow = AdaptiveRankSemiseparableLayer(8, 4).to(device)
    slow.load_state_dict(layer.state_dict())
    slow.decay_proj.bias.fill_(math.log((1 - 1e-4) / 1e-4))  # a = 1 - 1e-4 (the input part is small)
    h_slow = slow.states(x_long)[0]
    seed_sum = torch.cumsum(u, dim=0)
bound = u.abs().max().item()
print(f"L = {cfg.state_length}: max |u| = {bound:.2f}; max |h| at init {h_init.abs().max().item():.2f}, "
      f"with decays 1 - 1e-4 {h_slow.abs().max().item():.2f}; the seed's running sum reaches "
      f"{seed_sum.abs().max().item():.0f}")
plots_toolkit.plot_state_growth({"labkit, decays at init (0.9 to 0.99)": h_init,
                                 "labkit, decays 1 - 1e-4": h_slow, "seed: running sum, no decay": seed_sum},
                                bound)
plt.show()

# %% tags=["remove-cell"]
assert h_init.abs().max().item() <= bound * (1 + 1e-5) and h_slow.abs().max().item() <= bound * (1 + 1e-5)
assert seed_sum.abs().max().item() > 10 * bound

# %% [markdown]
# ### Gates: soft, straight-through, Gumbel
#
# Each channel's gate has three training modes, all with a gradient into its logit $\ell$:
# `soft` multiplies by $\sigma(\ell)$ (never exactly 0, so nothing can be pruned); `ste` uses the
# hard value $\mathbb{1}[\ell > 0]$ forward and the gradient of $\sigma(\ell)$ backward (the
# straight-through estimator); `gumbel` draws a hard Bernoulli sample with
# $P(\text{on}) = \sigma(\ell)$ forward and takes the gradient of a relaxed sample
# $\sigma((\ell + n)/T)$ backward (the Binary Concrete relaxation of Maddison et al. and Jang
# et al.). For a binary gate the noise $n$ must be logistic, $\log U - \log(1 - U)$: the
# difference of two Gumbel samples. The seed added a single Gumbel sample, $-\log(-\log U)$, and
# never hardened the gate. Its gate is "on" (above 1/2) when $\ell + G > 0$, which at $\ell = 0$
# happens with probability $P(G > 0) = 1 - 1/e$ instead of 1/2, at every temperature.

# %%
logits = torch.linspace(-4, 4, 17)
draws = gate_samples(logits, "gumbel", temperature=1.0, n=cfg.gate_draws, generator=torch.Generator().manual_seed(0))
seed_draws = seed_gumbel_gate(logits, temperature=1.0, n=cfg.gate_draws, generator=torch.Generator().manual_seed(0))
p_labkit, p_seed, mean_seed = draws.mean(0), (seed_draws > 0.5).float().mean(0), seed_draws.mean(0)
se = (0.25 / cfg.gate_draws) ** 0.5  # the standard error of a frequency near 1/2
bias_labkit = (p_labkit - torch.sigmoid(logits)).abs().max().item()
mid = len(logits) // 2
print(f"{cfg.gate_draws} draws per logit; at logit 0 the gate is on in {p_labkit[mid]:.3f} of labkit's draws and "
      f"{p_seed[mid]:.3f} of the seed's (1 - 1/e = {1 - math.exp(-1):.3f}); the seed's mean gate value there is "
      f"{mean_seed[mid]:.3f}")
print(f"labkit: largest |P(on) - sigmoid(logit)| over the grid {bias_labkit:.4f} ({bias_labkit / se:.1f} standard "
      f"errors); the seed's: {(p_seed - torch.sigmoid(logits)).abs().max().item():.3f}")
plots_toolkit.plot_gate_bias(logits, {"labkit gumbel: P(gate = 1)": p_labkit,
                                      "seed: P(gate > 1/2)": p_seed, "seed: mean gate value": mean_seed})
plt.show()

# %% tags=["remove-cell"]
assert bias_labkit < 5 * se and p_seed[mid].item() > 0.6

# %% [markdown]
# Every mode passes a gradient to the logits (in `ste` and `gumbel` mode the forward value is an
# exact 0 or 1):

# %%
torch.manual_seed(0)
x_small = torch.randn(4, 32, 16, device=device)
grad_rows = []
for mode in GATE_MODES:
    torch.manual_seed(1)
    gated = AdaptiveRankSemiseparableLayer(16, 8, gate_init=0.5).to(device).set_gate_mode(mode, 0.5).train()
    values = gated.gates(batch=4).detach()
    gated(x_small).square().mean().backward()
    grad = gated.gate_logits.grad
    grad_rows.append({"mode": mode, "forward gate values": sorted({round(v, 3) for v in values.flatten().tolist()}),
                      "nonzero logit gradients": f"{int((grad != 0).sum())} of 8",
                      "gradient norm": grad.norm().item()})
print(format_table(grad_rows, ["mode", "forward gate values", "nonzero logit gradients", "gradient norm"]))

# %% tags=["remove-cell"]
assert all(r["nonzero logit gradients"] == "8 of 8" for r in grad_rows)

# %% [markdown]
# ### Ranks used against the temperature
#
# To see what the gates learn, a student layer is fitted to a fixed teacher layer with fewer
# channels (the teacher's convolution is zeroed, so its whole output comes from its channels),
# with a penalty on the expected number of channels on, $\lambda \sum_k \sigma(\ell_k) / r$. In
# `gumbel` mode the temperature $T$ does not change the forward sample at all, only the gradient:
# the relaxed sample's slope, $\sigma'((\ell + n)/T)/T$, is at most $1/(4T)$. A high temperature
# therefore damps the task's pull on every logit while the penalty's pull stays the same; a low
# one concentrates the gradient on the draws that land near the threshold. `ste` and `soft` are
# trained once for reference. Every run sees the same batches.

# %%
task = demos.TeacherTask(cfg.task_d_model, cfg.task_rank, cfg.task_length, cfg.task_batch, device=device)
started = time.perf_counter()
gate_runs = []
for seed in cfg.gate_seeds:
    for temperature in cfg.temperatures:
        run = demos.train_gated(task, cfg.max_rank, "gumbel", temperature, cfg.gate_penalty, cfg.gate_steps, seed=seed)
        gate_runs.append({**run, "seed": seed})
for mode in ("ste", "soft"):
    gate_runs.append({**demos.train_gated(task, cfg.max_rank, mode, 1.0, cfg.gate_penalty, cfg.gate_steps),
                      "seed": cfg.gate_seeds[0]})
print(f"teacher: {cfg.task_rank} channels; student: {cfg.max_rank}; penalty {cfg.gate_penalty}; "
      f"{cfg.gate_steps} steps per run; {len(gate_runs)} runs in {time.perf_counter() - started:.0f} s")
print(format_table([{"mode": r["mode"], "T": r["temperature"] if r["mode"] == "gumbel" else None, "seed": r["seed"],
                     "channels on (eval)": r["active"], "expected rank": r["expected"],
                     "training MSE (last tenth)": r["train_mse"], "held-out MSE": r["held_out"]} for r in gate_runs],
                   ["mode", "T", "seed", "channels on (eval)", "expected rank", "training MSE (last tenth)",
                    "held-out MSE"]))
plots_toolkit.plot_rank_sweep([r for r in gate_runs if r["mode"] != "soft"], cfg.max_rank, cfg.task_rank)
plt.show()

# %%
mean_active = {t: sum(r["active"] for r in gate_runs if r["mode"] == "gumbel" and r["temperature"] == t)
               / len(cfg.gate_seeds) for t in cfg.temperatures}
print("channels on at the end, mean over seeds: "
      + ", ".join(f"T={t:g}: {v:.1f}" for t, v in mean_active.items()))
soft_run = next(r for r in gate_runs if r["mode"] == "soft")
print(f"soft gates: every logit {'is' if (soft_run['layer'].gate_logits < 0).all() else 'is not'} negative, the "
      f"expected rank is {soft_run['expected']:.2f}, and all {cfg.max_rank} channels are still computed at evaluation")

# %% tags=["remove-cell"]
assert mean_active[max(cfg.temperatures)] < mean_active[min(cfg.temperatures)]
assert all(math.isfinite(r["held_out"]) for r in gate_runs)

# %% [markdown]
# The temperature sets how many channels survive a given penalty: the higher it is, the weaker
# the task's gradient on the logits and the fewer channels stay on. In the committed run (three
# seeds, 1,000 steps, a teacher with 4 channels) 3.7 channels stay on at $T = 0.1$, 3.0 at 0.3,
# 2.0 at 1 and 0.3 at 3, where in two seeds of three every logit ends below zero. Those channels
# are still drawn "on" in a good share of training steps (a logit of $-1$ is on with probability
# $\sigma(-1)$; the expected rank at $T = 3$ is still about 4), so the model keeps fitting with
# them during training, but the evaluation gate, the sign of the logit, switches them all off:
# the training error at $T = 3$ is 0.2-0.3 and the held-out error 0.6-1.0, against 0.002-0.003
# held out at $T \le 0.3$. A soft gate has the opposite problem: the penalty drives its logits
# down (all 16 end negative, an expected rank of 0.44), but $\sigma(\ell)$ is never zero, so the
# model keeps using every channel and none can be pruned.
#
# ### Pruning at evaluation
#
# With hard gates, eval mode computes only the channels that are on: their rows of the input
# projections and their column of the output projection. The FLOPs counted by PyTorch's
# `FlopCounterMode`, with half the channels off:

# %%
torch.manual_seed(0)
pruned_layer = AdaptiveRankSemiseparableLayer(64, 32).to(device).set_gate_mode("ste").eval()
with torch.no_grad():
    pruned_layer.gate_logits[::2] = -1.0  # 16 of 32 channels off
x_eval = torch.randn(4, 256, 64, device=device)
outputs, flops = {}, {}
for name, kwargs in (("every channel", {"prune": False}), ("pruned", {})):
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        outputs[name] = pruned_layer(x_eval, **kwargs)
    flops[name] = counter.get_total_flops()
flops_all, flops_pruned = flops["every channel"], flops["pruned"]
prune_diff = (outputs["every channel"] - outputs["pruned"]).abs().max().item()
print(f"{pruned_layer.active_ranks().numel()} of 32 channels on: {flops_pruned / 1e6:.1f} MFLOP pruned vs "
      f"{flops_all / 1e6:.1f} MFLOP computing every channel ({flops_pruned / flops_all:.0%}); "
      f"outputs differ by at most {prune_diff:.1e}; {pruned_layer.num_active_parameters():,} parameters read of "
      f"{sum(p.numel() for n, p in pruned_layer.named_parameters() if n != 'gate_logits'):,}")

# %% tags=["remove-cell"]
assert flops_pruned < 0.6 * flops_all and prune_diff < 1e-5

# %% [markdown]
# ## Recovering from a numerical failure
#
# `Phase1ErrorRecovery` guards each training step: it runs the forward and backward, checks the
# loss and the gradients (non-finite, or a gradient norm far above its running average), and
# applies the update only to a healthy step. On a failure it applies the seed's five strategies in
# its order, one per retry of the same batch, escalating only while the step still fails: halve
# the learning rate, raise the spike threshold, turn on gradient clipping, roll back to the last
# healthy checkpoint, re-initialise the layer that holds non-finite weights. A healthy step resets
# the ladder. In the seed, the first strategy reported success whenever an optimizer was passed
# and a cap of three attempts then ended recovery, so the last two could not run. The training
# loop of the demo is the usual one with the step wrapped:
#
# ```python
# recovery = Phase1ErrorRecovery(model, optimizer, checkpoint_every=25)
# for step in range(steps):
#     x, y = batch(step)
#
#     def closure():
#         loss = F.mse_loss(model(x), y)
#         loss.backward()
#         return loss
#
#     recovery.guarded_step(closure)  # never applies a non-finite update
# ```
#
# The model is an AR-SSM layer, a LayerNorm and a linear layer, trained on the teacher task. At
# one step a NaN is written into one entry of a weight, as a faulty kernel or a corrupted
# reduction would. Three runs see the same batches: no fault; the fault; the fault with rollback
# switched off.

# %%
started = time.perf_counter()
clean = demos.train_with_recovery(task, cfg.max_rank, cfg.recovery_steps, checkpoint_every=cfg.checkpoint_every)
faulty = demos.train_with_recovery(task, cfg.max_rank, cfg.recovery_steps, fault_step=cfg.fault_step,
                                   checkpoint_every=cfg.checkpoint_every)
no_rollback = demos.train_with_recovery(task, cfg.max_rank, cfg.recovery_steps, fault_step=cfg.fault_step,
                                        checkpoint_every=cfg.checkpoint_every, enable_rollback=False)
print(f"{cfg.recovery_steps} steps each, NaN written before step {cfg.fault_step}; "
      f"{time.perf_counter() - started:.1f} s")
ladders = {}
for name, run in (("with rollback", faulty), ("rollback off", no_rollback)):
    rec = run["recovery"]
    ladders[name] = [(e["action"], e["applied"]) for e in rec.log if e["action"] != "checkpoint"]
    print(f"\n{name}:")
    for e in rec.log:
        if e["action"] != "checkpoint":
            print(f"  step {e['step']}: {e['action']:16s} {'applied' if e['applied'] else 'skipped'}: {e['detail']}")
    fault_row = rec.history[cfg.fault_step]
    print(f"  losses of the attempts at step {cfg.fault_step}: {[round(v, 4) for v in fault_row['attempt_losses']]}")
print()
print(format_table([{"run": name, "steps ok": sum(r["ok"] for r in run["recovery"].history),
                     "strategies applied": sum(1 for e in run["recovery"].log
                                               if e["action"] != "checkpoint" and e["applied"]),
                     "lr scale": run["recovery"].lr_scale, "held-out MSE": run["held_out"]}
                    for name, run in (("no fault", clean), ("fault, with rollback", faulty),
                                      ("fault, rollback off", no_rollback))],
                   ["run", "steps ok", "strategies applied", "lr scale", "held-out MSE"]))
plots_toolkit.plot_recovery({"no fault": clean["recovery"].history, "fault, with rollback": faulty["recovery"].history,
                             "fault, rollback off (re-initialised)": no_rollback["recovery"].history},
                            cfg.fault_step, faulty["recovery"].log)
plt.show()

# %% tags=["remove-cell"]
assert ladders["with rollback"] == [("reduce_lr", True), ("raise_threshold", True), ("enable_clipping", True),
                                    ("rollback", True)]
assert ladders["rollback off"][-1] == ("reinit_unstable", True)
assert all(r["ok"] for run in (clean, faulty, no_rollback) for r in run["recovery"].history)
assert all(torch.isfinite(p).all() for run in (faulty, no_rollback) for p in run["model"].parameters())
assert faulty["held_out"] < 0.5 and no_rollback["held_out"] < 0.5

# %% [markdown]
# The first three strategies change the next update, not the weights, so they cannot repair a
# NaN that is already in a weight: each is tried once, the retry fails again, and the ladder
# climbs. The rollback then restores the last checkpoint and the same batch goes through; the run
# loses the steps since that checkpoint and keeps the halved learning rate and the clipping. With
# rollback off, the fifth strategy finds the module that owns the NaN and re-initialises only that
# one (a LayerNorm would get weight 1 and bias 0; the seed zeroed every 1-D parameter, norm
# weights included, which silences the layer).
#
# ### A checkpoint must be a copy
#
# `optimizer.state_dict()` returns the optimizer's live tensors, not copies. The seed copied the
# top level of that dictionary and kept it as the checkpoint, so the "saved" Adam moments kept
# changing with every step. labkit's checkpoint clones every tensor:

# %%
model, recovery = faulty["model"], faulty["recovery"]
optimizer = recovery.optimizer
recovery.save_checkpoint()
shallow = dict(optimizer.state_dict())  # the seed's checkpoint of the optimizer
moment_before = recovery.checkpoint["optimizer"]["state"][0]["exp_avg"].clone()
x_more, y_more = task.batch(10**5)
for _ in range(3):
    optimizer.zero_grad()
    F.mse_loss(model(x_more), y_more).backward()
    optimizer.step()
live = optimizer.state_dict()["state"][0]["exp_avg"]
print("the seed's copy is the live tensor:", shallow["state"][0]["exp_avg"] is live)
print("labkit's saved moment unchanged after 3 steps:",
      torch.equal(recovery.checkpoint["optimizer"]["state"][0]["exp_avg"], moment_before),
      "| the live moment moved:", not torch.equal(live.cpu(), moment_before))
recovery.rollback()
restored = all(torch.equal(v.cpu(), recovery.checkpoint["model"][k]) for k, v in model.state_dict().items())
restored_moment = torch.equal(optimizer.state_dict()["state"][0]["exp_avg"].cpu(), moment_before)
print("after rollback: weights equal the checkpoint:", restored, "| Adam moment equals the checkpoint:",
      restored_moment)

# %% tags=["remove-cell"]
assert shallow["state"][0]["exp_avg"] is live and restored and restored_moment
assert torch.equal(recovery.checkpoint["optimizer"]["state"][0]["exp_avg"], moment_before)

# %% [markdown]
# ## Presets
#
# The seed's six presets and their aliases are kept, with their memory budgets, ranks and
# switches. They set no model size, so a "fits in 8 GB" could not be checked; labkit gives each a
# model (width, depth, batch and sequence length at GPT-2's vocabulary) and measures one full
# training step (AdamW, bf16 autocast; one forward pass for `inference`) on a GPU with the
# `presets` suite (`python -m labkit.bench presets`). The measured peak is the CUDA allocator's
# reserved memory; a preset fits when that plus half a GiB for the CUDA context is within its
# budget. The `inference` preset switched on the seed's LNS kernel, which did not compile; labkit's
# model has no LNS path, and the table says so.

# %%
presets_bench = load_results("presets")
presets_gpu = describe_results(presets_bench)
if presets_gpu:
    measured = {r["name"]: r["peak_reserved_gib"] for r in presets_bench["results"]}
    print_preset_comparison(measured)
else:
    print("CPU quick run: the suite ran shrunken presets, so no memory was measured; the book shows the GPU run")
    print_preset_comparison()
print()
print(format_table(presets_bench["results"], ["name", "purpose", "params", "tokens", "peak_allocated_gib",
                                              "peak_reserved_gib", "budget_gib", "fits", "seconds"]))
fits = [r["name"] for r in presets_bench["results"] if r["fits"]]
if presets_gpu:
    print(f"\nfits its budget: {len(fits)} of {len(presets_bench['results'])} presets "
          f"({', '.join(fits) if fits else 'none'})")

# %% [markdown]
# All six presets fit their budgets in the committed run (an H200), each with 2-5 GiB to spare
# after the half GiB for the context: `8gb` peaks at 4.5 GiB reserved, `10gb` at 7.2, `24gb` at
# 20.6, `inference` at 5.4, `max_quality` at 34.4 of 40 and `max_efficiency` at 3.0 of 6. So no
# model size needs to shrink; the sizes could grow a little, but a real 8 GB card also runs a
# display and a driver, and the margin is what keeps the names honest. Two caveats:
#
# * In `24gb` and `max_quality` (width 1,280 at TT rank 32 and width 2,048 at rank 64) the fused
#   TT backward needs more shared memory than one block may use (it stages two fp32 tiles of the
#   output gradient and a core per 16 tokens), so the lookup ran its PyTorch backward there, with
#   a warning; the peaks above include that. Cards with less shared memory than a Hopper GPU
#   (about 100 KB per block on consumer cards against 227 KB) fall back at smaller ranks too.
# * The peaks were measured on a 141 GB card. The allocator's peak does not depend on the card's
#   size, but fragmentation under real memory pressure can add to it; the measurement says the
#   step fits, not that it fits with nothing else on the GPU.
#
# Names are case-insensitive and accept aliases; an unknown name says what exists:

# %%
for alias in ("memory_oriented", "Balanced", "speed-oriented", "quality", "efficiency"):
    print(f"{alias!r:20} -> {get_preset(alias).name}")
try:
    get_preset("12gb")
except ValueError as error:
    unknown_message = str(error)
    print(f"ValueError: {error}")
print(list_presets())

# %% [markdown]
# The seed's `get_preset` returned the one shared instance, and its recovery code raised that
# instance's `stability_threshold` in place, for every later caller. labkit's presets are frozen;
# a variant is made with `replace`, and a recovery works on its own copy of the settings:

# %%
preset = get_preset("8gb")
try:
    preset.stability_threshold = 1e4
except dataclasses.FrozenInstanceError as error:
    frozen_message = str(error)
    print(f"FrozenInstanceError: {error}")
small = preset.replace(d_model=64, n_layers=2, vocab_size=1000)
print(f"replace(d_model=64, n_layers=2, vocab_size=1000): {build_model(small).num_parameters():,} parameters "
      f"(count_parameters says {count_parameters(small):,})")
probe = nn.Linear(2, 2)
guard = Phase1ErrorRecovery(probe, torch.optim.SGD(probe.parameters(), lr=0.1), config=preset, enable_rollback=False)
guard.step_failed("demo")  # strategy 1: halve the learning rate
guard.step_failed("demo")  # strategy 2: raise the threshold
print(f"after strategy 2: the recovery's threshold {guard.config.stability_threshold:g}, the preset's "
      f"{get_preset('8gb').stability_threshold:g}")

# %% tags=["remove-cell"]
assert "valid presets" in unknown_message and "cannot assign" in frozen_message
assert get_preset("8gb").stability_threshold == 100.0 and guard.config.stability_threshold == 1000.0
assert build_model(small).num_parameters() == count_parameters(small)

# %% [markdown]
# ## Summary
#
# What the seed reported for items 2 to 7, and what this chapter found, with the numbers of this
# run (the benchmark rows come from the committed result files):

# %%
summary = [
    ("2. log-domain matmul: accuracy", "a pairwise log-add 'correction'; the kernel did not compile",
     f"labkit within {labkit_worst:.0e} nats of float64 at every K; max-only low by up to {maxonly_flat:.2f} nats "
     f"at K={k_max} (log K = {math.log(k_max):.2f})"),
    ("2. log-domain matmul: speed", "no measurement",
     f"{lm_verdict[0]:.1f}x the logsumexp reference at {lm_verdict[1]}^3, relative error {lm_verdict[2]:.1e}: "
     f"target {'met' if lm_verdict[3] else 'not met'}" if lm_verdict else "GPU run pending"),
    ("2. HMM forward algorithm", "-",
     f"the unscaled fp32 recursion reaches 0 at t = {int(torch.isinf(naive[torch.float32]).nonzero()[0]) + 1}; "
     f"log space in fp32 within {hmm_rel_err:.0e} (relative) of float64 after {cfg.hmm_length} steps"),
    ("3. Gumbel gate", "one Gumbel sample, never hardened",
     f"P(on) at logit 0: labkit {p_labkit[mid]:.3f}, the seed's {p_seed[mid]:.3f}"),
    ("3. rank gates", "every channel always computed",
     f"channels on, mean over seeds: {mean_active[min(cfg.temperatures)]:.1f} at T={min(cfg.temperatures):g}, "
     f"{mean_active[max(cfg.temperatures)]:.1f} at T={max(cfg.temperatures):g}; with half the channels off, "
     f"evaluation takes {flops_pruned / flops_all:.0%} of the FLOPs"),
    ("4. autotuned kernels: the scan", "a wrong cumulative sum; 'faster than torch.cumsum' never measured",
     f"forward at {scan_verdict[0]:.0%} of the copy's bandwidth; targets {'met' if scan_verdict[1] else 'not met'}"
     if scan_verdict else "GPU run pending"),
    ("5. recovery", "rollback and re-initialisation unreachable; the checkpoint held live tensors",
     f"a NaN weight at step {cfg.fault_step} repaired by {ladders['with rollback'][-1][0]} after "
     f"{len(ladders['with rollback']) - 1} strategies that could not; held-out MSE {faulty['held_out']:.4f} "
     f"against {clean['held_out']:.4f} without the fault"),
    ("7. presets", "shared mutable instances; budgets never checked",
     f"frozen; {len(fits)} of {len(presets_bench['results'])} fit their budget (measured)" if presets_gpu
     else "frozen; memory: GPU run pending"),
]
for item, seed_said, found in summary:
    print(f"{item}\n    seed: {seed_said}\n    here: {found}")

# %%
print(f"notebook wall time: {time.perf_counter() - notebook_started:.0f} s (profile {P.name}, device {device})")
