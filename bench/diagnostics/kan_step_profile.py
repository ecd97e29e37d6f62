"""Where one forward + backward of a KAN layer spends its time: GPU kernels and host calls.

For each IMPL:DTYPE (rows of the ``kan`` suite, 4096 x 768 -> 3072), prints the CUDA kernels of
10 steps from ``torch.profiler`` (time per step, launches per step), the host's time per step
while the GPU is kept busy (``labkit.bench.harness.host_ms``; taken after the profiler ran,
whose hooks stay and slow every launch: it read 0.7 to 0.9 ms for Linear+GELU's bf16 step on
two H100 machines, where the ``kan`` suite took 0.4 to 0.6 ms per call on the machines of that
day; compare these host times with each other only), and the host's 20 most expensive Python calls (cProfile, by own time).

    PYTHONPATH=$PWD python3 bench/diagnostics/kan_step_profile.py cheby_labkit_gemm:bf16 linear_gelu:bf16
"""
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from labkit.bench.harness import host_ms, host_profile
from labkit.kan import bench

dev = torch.device("cuda")
STEPS = 10


for case in sys.argv[1:]:
    impl, dtype = case.split(":")
    torch.manual_seed(0)
    step = bench.make_step(impl, dtype, 4096, 768, 3072, dev)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(STEPS):
            step()
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_time_total > 0]
    kernels.sort(key=lambda e: -e.device_time_total)
    total = sum(e.device_time_total for e in kernels) / STEPS
    print(f"===== {case}: kernels {total / 1e3:.3f} ms per step, host {host_ms(step):.3f} ms per step", flush=True)
    for e in kernels[:14]:
        print(f"  {e.device_time_total / STEPS:8.1f} us  x{e.count / STEPS:4.1f}  {e.key[:110]}")
    table = host_profile(step, 20, top=20)
    print("\n".join(line[:150] for line in table.splitlines()[4:30]), flush=True)
