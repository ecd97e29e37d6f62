"""Benchmark suite ``flow``: how fast the Kolmogorov-flow solver makes data.

``python -m labkit.bench flow`` times one transition (0.2 time units: ``substeps`` IMEX steps of
5 stages each) of a batch of 256^2 trajectories, for several batch sizes and both dtypes, and
reports the throughput in simulated time units per second together with the time the original
data set would take: 1,024 trajectories x 128 snapshots (64 spin-up + 64 kept) = 26,214 time
units. (The original made it with 1,024 CPU jobs of about 5 minutes each.)

``python -m labkit.bench flow-cpu`` sets labkit against ``jax_cfd.spectral`` on the same CPU
(needs the ``jaxcfd`` extra; see :mod:`labkit.sda.jaxcfd`).
"""
from __future__ import annotations

import torch

from labkit.bench.harness import peak_memory_mib, time_fn
from labkit.sda.flow import KolmogorovFlow
from labkit.sda.nn import make_score
from labkit.sda.score import VPSDE

DATASET_TIME_UNITS = 1024 * 128 * 0.2  # trajectories x snapshots x dt


def _row(name: str, flow: KolmogorovFlow, batch: int, dtype: torch.dtype, device, repeats: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    x = flow.prior(batch, generator=generator, dtype=dtype).to(device)
    x = flow.trajectory(x, 5)[:, -1]  # a developed state, not the smooth initial one
    timing = time_fn(lambda: flow.transition(x), device, warmup=1, repeats=repeats)
    units_per_s = batch * flow.dt / (timing["median_ms"] / 1e3)
    return {"name": name, "size": flow.size, "batch": batch, "dtype": str(dtype).removeprefix("torch."),
            "substeps": flow.substeps, **timing, "peak_mib": peak_memory_mib(lambda: flow.transition(x), device),
            "time_units_per_s": units_per_s, "dataset_minutes": DATASET_TIME_UNITS / units_per_s / 60}


def run(device: torch.device, quick: bool) -> tuple[dict, list[dict]]:
    on_gpu = device.type == "cuda"
    size = 256 if on_gpu and not quick else 64
    batches = (64, 256, 1024) if on_gpu and not quick else (4,)
    repeats = 5 if on_gpu and not quick else 2
    rows = []
    for courant in (0.5, 1.0):
        flow = KolmogorovFlow(size=size, courant=courant)
        for batch in batches:
            rows.append(_row(f"labkit courant={courant}", flow, batch, torch.float32, device, repeats))
    flow = KolmogorovFlow(size=size)
    rows.append(_row("labkit courant=0.5", flow, batches[1 if len(batches) > 1 else 0], torch.float64, device, repeats))
    config = {"size": size, "dt": 0.2, "dataset_time_units": DATASET_TIME_UNITS,
              "note": "one transition = 0.2 time units; dataset_minutes extrapolates to 1,024 x 128 snapshots"}
    return config, rows


def run_cpu_comparison(device: torch.device, quick: bool) -> tuple[dict, list[dict]]:
    """labkit vs jax-cfd's spectral solver on this CPU, plus how closely they agree (float64)."""
    from labkit.sda.jaxcfd import agreement, compare_cpu_speed

    if device.type != "cpu":
        raise ValueError("flow-cpu compares CPU solvers; run it with --device cpu")
    size, batch = (64, 2) if quick else (256, 4)
    rows = compare_cpu_speed(size=size, batch=batch, repeats=2 if quick else 3)
    sizes = (64,) if quick else (64, 128, 256)
    config = {"size": size, "batch": batch,
              "agreement_note": "max relative L2 difference of vorticity after 1 time unit, float64, "
                                "one random initial state; 'labkit mask' gives jax-cfd labkit's 2/3 filter",
              "agreement_labkit_mask": {n: agreement(n, "labkit") for n in sizes},
              "agreement_jaxcfd_mask": {n: agreement(n, "jaxcfd") for n in sizes}}
    return config, rows


# --- suite ``sda``: the score network's training epoch and trajectory sampling -----------------------

SEED_EPOCH_SECONDS = 25.0  # the seed's figure: ~25 s per epoch (26 batches of 32) for its run
SEED_BATCHES_PER_EPOCH = 26  # 819 training trajectories, one random window each, batches of 32


def _score_setup(device, amp: bool, channels_last: bool, compile: bool, quick: bool):
    """A fresh trajectory network of the original's size (tiny when quick), its memory format and autocast."""
    torch.manual_seed(0)
    kwargs = dict(hidden_channels=(16, 32, 64), hidden_blocks=(1, 1, 1)) if quick else {}
    score = make_score(window=5, **kwargs)
    memory = torch.channels_last if channels_last else torch.contiguous_format
    score = score.to(device, memory_format=memory)
    if compile:
        score.kernel.compile()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)
    return score, memory, autocast


def _training_row(name, device, batch, amp, channels_last, compile, quick, repeats) -> dict:
    score, memory, autocast = _score_setup(device, amp, channels_last, compile, quick)
    net = score.kernel
    sde = VPSDE(net, (10, 64, 64)).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-4, weight_decay=1e-3,
                                  fused=device.type == "cuda")
    x = torch.randn(batch, 10, 64, 64, device=device).contiguous(memory_format=memory)

    def step():
        with autocast:
            loss = sde.loss(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    timing = time_fn(step, device, warmup=3 if compile else 2, repeats=repeats)
    epoch_s = SEED_BATCHES_PER_EPOCH * timing["median_ms"] / 1e3
    return {"name": name, "batch": batch, "amp": "bf16" if amp else "fp32", "channels_last": channels_last,
            "compile": compile, **timing, "peak_mib": peak_memory_mib(step, device),
            "epoch_seconds": epoch_s, "speedup_vs_seed_25s": SEED_EPOCH_SECONDS / epoch_s,
            "hours_4096_epochs": 4096 * epoch_s / 3600}


def _sampling_row(name, device, amp, channels_last, compile, quick, steps, repeats, length=64) -> dict:
    score, memory, autocast = _score_setup(device, amp, channels_last, compile, quick)
    score.eval()
    sde = VPSDE(score, (length, 2, 64, 64)).to(device)

    def sample():
        with autocast:
            return sde.sample((1,), steps=steps, corrections=1, tau=0.5, progress=False)

    timing = time_fn(sample, device, warmup=1, repeats=repeats)
    per_step = timing["median_ms"] / steps
    return {"name": name, "states": length, "steps": steps, "corrections": 1, "amp": "bf16" if amp else "fp32",
            "channels_last": channels_last, "compile": compile, **timing, "peak_mib": None,
            "ms_per_step": per_step, "seconds_256_steps": 256 * per_step / 1e3}


def run_score(device: torch.device, quick: bool) -> tuple[dict, list[dict]]:
    """Training step and sampling of the original's score network (22.9M parameters), several ways.

    The seed's formulation is PyTorch eager in float32 (TF32 convolutions: PyTorch's default);
    the others add bf16 autocast, channels-last memory and ``torch.compile``. An epoch is
    26 optimizer steps of batch 32 (the seed's 819 training trajectories, one window each);
    the data path (stacking 32 windows already in memory) is not in the timing.
    Sampling: one 64-state trajectory, the paper's predictor + 1 Langevin correction per step,
    timed over ``steps`` steps and scaled to 256 (the cost per step is constant).
    """
    on_gpu = device.type == "cuda"
    quick = quick or not on_gpu
    batch, repeats = 32, (20 if on_gpu else 2)
    variants = [("seed: fp32 eager", False, False, False),
                ("bf16 autocast", True, False, False),
                ("bf16 + channels-last", True, True, False),
                ("bf16 + channels-last + compile", True, True, True)]
    if quick:
        variants = variants[:2]
    rows = [_training_row("train step, " + name, device, batch, *flags, quick, repeats)
            for name, *flags in variants]
    steps = 16 if on_gpu else 2
    for name, *flags in variants:
        rows.append(_sampling_row("sample, " + name, device, *flags, quick, steps, 3 if on_gpu else 1,
                                  length=64 if on_gpu else 8))
    config = {"network": "make_score(window=5)" + (" tiny (16, 32, 64)" if quick else " (96, 192, 384) x 3"),
              "batch": batch, "batches_per_epoch": SEED_BATCHES_PER_EPOCH,
              "seed_epoch_seconds": SEED_EPOCH_SECONDS,
              "note": "epoch_seconds = 26 x median step; sampling scaled from `steps` to 256 steps"}
    return config, rows
