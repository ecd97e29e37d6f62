"""Forward scan at (8*1536, L) fp32 on the GPU: every explicit config, against copy and accelerated-scan.

The suite had the forward at L = 4,096 at 45% of the copy (accelerated-scan's Triton scan: 77%);
this times the kernel alone at each configuration (do_bench: many calls back to back). Run:
    PYTHONPATH=$PWD python3 bench/diagnostics/scan_configs.py
"""
import itertools, sys
import torch
from triton.testing import do_bench
from labkit.htt.triton_scan import scan_forward

rows = 8 * 1536
for L in (4096, 16384):
    a = torch.rand(rows, L, device="cuda") * 0.1 + 0.9
    b = torch.randn(rows, L, device="cuda")
    copy_src = torch.randn(3 * rows * L // 2, device="cuda")
    copy_dst = torch.empty_like(copy_src)
    t_copy = do_bench(lambda: copy_dst.copy_(copy_src), return_mode="median")
    results = []
    try:
        from accelerated_scan.scalar import scan as acc
        t = do_bench(lambda: acc(a.view(8, 1536, L), b.view(8, 1536, L)), return_mode="median")
        results.append((t, "accelerated-scan triton"))
    except Exception as e:  # noqa: BLE001
        print("accelerated-scan:", type(e).__name__, e)
    for br, chunk, warps, pf in itertools.product((1, 2, 4), (512, 1024, 2048, 4096), (1, 2, 4, 8, 16), (False, True)):
        if br * chunk > 8192 or chunk > L or chunk < 32 * warps:
            continue
        cfg = dict(BLOCK_R=br, CHUNK=chunk, PREFETCH=pf, num_warps=warps)
        try:
            t = do_bench(lambda: scan_forward(a, b, config=cfg), return_mode="median")
        except Exception as e:  # noqa: BLE001
            print(cfg, "failed:", type(e).__name__, str(e)[:80])
            continue
        results.append((t, str(cfg)))
    print(f"L={L}: copy of the forward's bytes {t_copy:.3f} ms")
    for t, name in sorted(results)[:15]:
        print(f"  {t:.3f} ms  {t_copy / t:5.1%} of copy  {name}")
    sys.stdout.flush()
