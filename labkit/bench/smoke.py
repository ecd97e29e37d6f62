"""The ``smoke`` suite: Linear+GELU forward+backward, a sanity check of the harness itself.

It runs anywhere (CPU or GPU) in seconds, so CI can check that a valid JSON comes out.
"""
from __future__ import annotations

import torch

from labkit.bench.harness import peak_memory_mib, time_fn


def run(device: torch.device, quick: bool) -> tuple[dict, list[dict]]:
    rows_, d_in, d_out = (256, 128, 512) if quick or device.type == "cpu" else (4096, 768, 3072)
    config = {"rows": rows_, "in": d_in, "out": d_out}
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        layer = torch.nn.Linear(d_in, d_out, device=device)
        x = torch.randn(rows_, d_in, device=device, requires_grad=True)

        def step():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                y = torch.nn.functional.gelu(layer(x))
            y.sum().backward()

        timing = time_fn(step, device, warmup=3, repeats=10 if quick else 50)
        results.append({"name": "linear_gelu", "dtype": str(dtype).removeprefix("torch."), **timing,
                        "peak_mib": peak_memory_mib(step, device)})
    return config, results
