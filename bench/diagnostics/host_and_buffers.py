"""Host time against kernel time for the KAN layers and the scan, and the split-GEMM feature buffer.

Each case is timed four ways: ``event`` one call starting on an idle GPU (what the suites'
``median_ms`` is), ``loop`` calls back to back, ``graph`` a CUDA-graph replay (kernels only),
``host`` the host's time per call while the GPU is kept busy; plus ``peak`` extra memory (MiB).

    PYTHONPATH=$PWD python3 bench/diagnostics/host_and_buffers.py [host] [sweep] [scan]
"""
import sys
import torch
from labkit.bench.harness import host_ms, host_profile, peak_memory_mib, time_fn, time_graph, time_loop
from labkit.kan import bench, gemm_bspline, split_gemm

dev = torch.device("cuda")
parts = sys.argv[1:] or ["host", "sweep", "scan"]


def kan_step(impl, dtype):
    torch.manual_seed(0)
    return bench.make_step(impl, dtype, 4096, 768, 3072, dev)


def timings(fn):
    out = {"event": time_fn(fn, dev, warmup=3, repeats=20)["median_ms"]}
    loop = time_loop(fn, dev)
    out["loop"] = loop and loop["median_ms"]
    graph = time_graph(fn, dev)
    out["graph"] = graph and graph["median_ms"]
    out["host"] = host_ms(fn)
    out["peak"] = peak_memory_mib(fn, dev)
    return " ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in out.items())


def profile_host(fn, title, n=20):
    table = host_profile(fn, n, top=18)
    print(f"----- host profile {title} ({n} calls)\n" + "\n".join(table.splitlines()[6:32]), flush=True)


if "host" in parts:
    for dtype in ("fp32", "bf16"):
        for impl in ("linear_gelu", "bspline_labkit_gemm", "bspline_labkit", "cheby_labkit_gemm", "cheby_labkit"):
            print(f"{impl:22s} {dtype}: {timings(kan_step(impl, dtype))}", flush=True)
    profile_host(kan_step("cheby_labkit_gemm", "bf16"), "cheby gemm bf16")
    profile_host(kan_step("bspline_labkit_gemm", "fp32"), "bspline gemm fp32")

if "sweep" in parts:
    for mib in (32, 64, 128):
        split_gemm.FEATURE_BUFFER_BYTES = mib * 2**20
        for stacked in (False, True):
            gemm_bspline.STACKED_FORWARD = stacked
            for impl in ("bspline_labkit_gemm", "cheby_labkit_gemm"):
                if stacked and impl.startswith("cheby"):
                    continue
                for dtype in ("fp32", "bf16"):
                    if stacked and dtype == "bf16":
                        continue
                    try:
                        print(f"buf {mib:3d} MiB stacked={stacked:d} {impl:20s} {dtype}: {timings(kan_step(impl, dtype))}",
                              flush=True)
                    except torch.cuda.OutOfMemoryError:
                        print(mib, stacked, impl, dtype, "OOM")
                    torch.cuda.empty_cache()
    split_gemm.FEATURE_BUFFER_BYTES = 32 * 2**20
    gemm_bspline.STACKED_FORWARD = False

if "scan" in parts:
    from labkit.htt.scan import linear_scan
    from labkit.htt.triton_scan import scan_forward, tuned_configs
    a = torch.rand(8, 1536, 4096, device=dev) * 0.1 + 0.9
    b = torch.randn(8, 1536, 4096, device=dev)
    a2, b2 = a.view(-1, 4096), b.view(-1, 4096)
    with torch.no_grad():
        print("linear_scan fwd:", timings(lambda: linear_scan(a, b, backend="triton")), flush=True)
    print("scan_forward tuned:", timings(lambda: scan_forward(a2, b2)), flush=True)
    cfg = dict(BLOCK_R=1, CHUNK=4096, PREFETCH=False, num_warps=8)
    print("scan_forward raw:", timings(lambda: scan_forward(a2, b2, config=cfg)), flush=True)
    print("tuned:", tuned_configs())
    ar, br = a.clone().requires_grad_(), b.clone().requires_grad_()
    dh = torch.randn_like(a)
    print("linear_scan fwd+bwd:", timings(lambda: torch.autograd.grad(linear_scan(ar, br, backend="triton"), (ar, br), dh)),
          flush=True)
    try:
        from accelerated_scan.scalar import scan as acc
        print("accelerated-scan fwd:", timings(lambda: acc(a, b)), flush=True)
        print("accelerated-scan fwd+bwd:", timings(lambda: torch.autograd.grad(acc(ar, br), (ar, br), dh)), flush=True)
    except Exception as e:  # noqa: BLE001
        print("accelerated-scan:", type(e).__name__, e)
    with torch.no_grad():
        profile_host(lambda: linear_scan(a, b, backend="triton"), "linear_scan fwd", n=50)
