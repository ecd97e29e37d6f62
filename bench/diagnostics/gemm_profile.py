"""Where the split-GEMM KAN paths spend their GPU time, kernel by kernel (4096 x 768 -> 3072, fp32 and bf16).

Then the B-spline path's fp32 forward stacked into one GEMM against three (``STACKED_FORWARD``).

    PYTHONPATH=$PWD python3 bench/diagnostics/gemm_profile.py
"""
import torch
from torch.profiler import ProfilerActivity, profile

from labkit.kan import bench

dev = torch.device("cuda")
for impl in ("bspline_labkit_gemm", "cheby_labkit_gemm", "cheby_labkit"):
    for dtype in ("fp32", "bf16"):
        torch.manual_seed(0)
        step = bench.make_step(impl, dtype, 4096, 768, 3072, dev)
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                step()
            torch.cuda.synchronize()
        print(f"===== {impl} {dtype}: CUDA time per step by kernel (ms)")
        rows = []
        for e in prof.key_averages():
            t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
            if t > 0 and e.device_type.name == "CUDA":
                rows.append((t / 5 / 1000, e.count // 5, e.key[:110]))
        total = sum(r[0] for r in rows)
        for t, c, k in sorted(rows, reverse=True)[:14]:
            print(f"{t:8.3f} ms  x{c:3d}  {k}")
        print(f"  GPU total {total:.3f} ms per step")

# The stacked fp32 forward (one GEMM over [F_hi | F_hi | F_lo]) against three GEMMs, forward+backward and forward.
from triton.testing import do_bench
from labkit.kan import gemm_bspline

for stacked in (False, True, False, True):
    gemm_bspline.STACKED_FORWARD = stacked
    torch.manual_seed(0)
    forward, params = bench.make_case("bspline_labkit_gemm", 4096, 768, 3072, dev)
    x = (torch.rand(4096, 768, device=dev) * 2 - 1).requires_grad_()
    dy = torch.randn(4096, 3072, device=dev)

    def fb():
        for t in [x, *params]:
            t.grad = None
        forward(x).backward(dy)

    def fwd():
        with torch.no_grad():
            forward(x)

    print(f"stacked={stacked}: fwd+bwd {do_bench(fb, return_mode='median'):.3f} ms, "
          f"forward {do_bench(fwd, return_mode='median'):.3f} ms", flush=True)
