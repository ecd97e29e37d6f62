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
