"""Benchmark suite ``presets``: does each preset's model fit its memory budget?

``python -m labkit.bench presets`` builds every preset's model (:func:`labkit.htt.presets.build_model`)
and runs its workload once measured (:func:`labkit.htt.presets.measure_preset_memory`: a full
AdamW training step, or one forward pass for ``inference``), recording the allocator's peaks,
the budget and the step time. On CPU (or ``--quick``) the presets are shrunk to a toy size so
the code path runs; only the GPU numbers say anything about the budgets.
"""
from __future__ import annotations

import torch

from labkit.bench.harness import KeepRowsOnInterrupt
from labkit.htt.presets import PRESETS, measure_preset_memory


def run(device: torch.device, quick: bool) -> tuple[dict, list[dict]]:
    quick = quick or device.type != "cuda"
    rows = []
    names = list(PRESETS)
    with KeepRowsOnInterrupt("presets", rows) as stop:
        _measure_all(names, quick, device, rows)
    config = {"interrupted": stop.interrupted,
              "note": "peak_*_gib: the CUDA allocator's peaks during one measured step above what was allocated "
                      "before the model was built; fits: reserved peak + 0.5 GiB CUDA context <= budget"}
    return config, rows


def _measure_all(names: list[str], quick: bool, device: torch.device, rows: list[dict]) -> None:
    for name in names:
        preset = PRESETS[name]
        config = preset.replace(d_model=64, n_layers=2, seq_len=64, batch_size=2, vocab_size=1000) if quick else preset
        report = measure_preset_memory(config, device)
        rows.append({**report, "d_model": config.d_model, "n_layers": config.n_layers,
                     "batch_size": config.batch_size, "seq_len": config.seq_len, "htt_rank": config.htt_rank,
                     "ar_ssm_max_rank": config.ar_ssm_max_rank,
                     "gradient_checkpointing": config.use_gradient_checkpointing})
        print(f"{name:15s} peak reserved {report['peak_reserved_gib']} GiB of {report['budget_gib']} "
              f"-> fits {report['fits']} ({report['seconds']:.2f} s; build {report['build_seconds']:.1f} s, "
              f"warm-up {report['warmup_seconds']:.1f} s)", flush=True)
