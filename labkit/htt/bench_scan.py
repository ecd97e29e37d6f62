"""Benchmark suite ``scan``: ``linear_scan`` against a device copy and accelerated-scan.

``python -m labkit.bench scan`` measures, at the issue's configuration ``(8, 1536, L)`` fp32
for ``L`` in 4,096, 16,384 and 65,536 (``--quick``: ``(2, 16, L)`` for ``L`` in 256, 1,024):

* the forward pass and forward + backward (gradients of ``a`` and ``b``) of labkit's Triton
  scan and of its PyTorch fallback (fallback only up to ``L`` = 16,384 on the GPU: its
  temporaries at 65,536 would take most of an 80 GB card next to the other tensors);
* the same for accelerated-scan's Triton scan (``accelerated_scan.scalar.scan``) and its
  CUDA warp scan (``accelerated_scan.warp.scan``, which compiles its CUDA source with nvcc
  when imported); each is skipped, with the reason in ``config["skipped"]``, when it does not
  import;
* ``torch.cumsum`` (the ``a = 1`` case of the recurrence, for scale), and the sequential
  Python loop (:func:`labkit.htt.scan.linear_scan_reference`, quick mode only);
* a device-to-device copy ``dst.copy_(src)`` that moves the same bytes as the scan's forward.

Byte model (``gbps`` = these bytes / median time, 1 GB = 1e9 B). With ``N`` elements of 4
bytes: forward reads ``a`` and ``b`` and writes ``h``, ``3 * 4N`` bytes; backward reads
``a``, ``h`` and ``dh`` and writes ``da`` and ``db``, ``5 * 4N``, so forward + backward is
``8 * 4N`` (what both labkit's and accelerated-scan's kernels move; a fallback that moves
more is still charged only this, so its ``gbps`` is an *effective* bandwidth).
``torch.cumsum`` moves ``2 * 4N`` forward and ``4 * 4N`` forward + backward. The copy row
copies ``1.5N`` elements: it reads and writes ``3 * 4N`` bytes, the forward's traffic, so
its ``gbps`` is the copy bandwidth counted as read + write (2 streams) and its time is
directly comparable to a forward pass. ``x_copy`` = ``gbps`` / the copy's ``gbps`` at the
same ``L``; ``speedup_vs_accelerated_scan`` = accelerated-scan Triton's time / this time
(same case; > 1 is faster).

Three clocks on the GPU. ``median_ms`` (and the ratios) time one call that starts on an idle
GPU, so the host's time until the first kernel starts, and any gap while the host prepares the
next kernel, counts: the latency of one call. ``loop_ms`` is the per-call time of 20 calls back
to back (:func:`labkit.bench.harness.time_loop`), the steady state of a training loop where the
host runs ahead. ``graph_ms`` replays the call from a CUDA graph (no host work at all): the
kernels' own time. An H100 diagnostic at L = 4,096 found labkit's forward + backward at 0.54 ms
of kernel time against accelerated-scan's 0.56 ms, but 0.81 against 0.62 ms per isolated call:
the difference was host time (bench/diagnostics/host_and_buffers.py).
"""
from __future__ import annotations

import torch

from labkit.backend import use_triton
from labkit.bench.harness import peak_memory_mib, time_fn, time_graph, time_loop
from labkit.htt.scan import linear_scan, linear_scan_reference

FULL = dict(batch=8, channels=1536, lengths=(4096, 16384, 65536))
QUICK = dict(batch=2, channels=16, lengths=(256, 1024))
FALLBACK_MAX_LENGTH_GPU = 16384


def _accelerated_scan(skipped: dict) -> dict:
    """accelerated-scan's scans that import here: name -> ``scan(gates, tokens)``."""
    found = {}
    for name, module in (("accelerated-scan triton", "accelerated_scan.scalar"),
                         ("accelerated-scan warp (CUDA)", "accelerated_scan.warp")):
        try:
            found[name] = __import__(module, fromlist=["scan"]).scan
        except Exception as exc:  # ImportError, or nvcc/ninja missing when warp compiles its kernel
            skipped[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    return found


def _variants(device: torch.device, quick: bool, length: int, skipped: dict, external: dict) -> dict:
    """name -> (forward function of (a, b), bytes per element forward, forward + backward, needs a)."""
    on_gpu = device.type == "cuda"
    variants = {}
    if on_gpu and use_triton(torch.empty(0, device=device)):
        variants["labkit triton"] = (lambda a, b: linear_scan(a, b, backend="triton"), 12, 32, True)
    else:
        skipped["labkit triton"] = ("not on a GPU with triton (Triton's CPU interpreter checks correctness; "
                                    "it is not worth timing)")
    if not on_gpu or length <= FALLBACK_MAX_LENGTH_GPU:
        variants["labkit torch fallback"] = (lambda a, b: linear_scan(a, b, backend="torch"), 12, 32, True)
    else:
        skipped[f"labkit torch fallback, L={length}"] = "memory: temporaries of ~8 full-size tensors"
    for name, scan in external.items():
        variants[name] = (scan, 12, 32, True)
    variants["torch.cumsum (a = 1)"] = (lambda a, b: torch.cumsum(b, dim=-1), 8, 16, False)
    if quick:
        variants["sequential loop (reference)"] = (linear_scan_reference, 12, 32, True)
    return variants


def _copy_row(n: int, device, repeats: int) -> dict:
    src = torch.rand(3 * n // 2, device=device)
    dst = torch.empty_like(src)
    timing = time_fn(lambda: dst.copy_(src), device, warmup=5, repeats=max(repeats, 10))
    moved = 2 * src.numel() * src.element_size()
    return {**timing, "bytes": moved, "gbps": moved / timing["median_ms"] / 1e6}


def run(device: torch.device, quick: bool) -> tuple[dict, list[dict]]:
    on_gpu = device.type == "cuda"
    quick = quick or not on_gpu
    sizes = QUICK if quick else FULL
    batch, channels = sizes["batch"], sizes["channels"]
    repeats = 3 if quick else 20
    skipped: dict[str, str] = {}
    rows = []
    external = _accelerated_scan(skipped) if on_gpu else {}  # imported once: warp compiles CUDA
    g = torch.Generator().manual_seed(0)
    for length in sizes["lengths"]:
        shape = (batch, channels, length)
        n = batch * channels * length
        copy = _copy_row(n, device, repeats)
        base = {"B": batch, "C": channels, "L": length, "dtype": "float32"}
        rows.append({"name": "device copy (forward's bytes)", "case": "copy", **base, **copy, "x_copy": 1.0})
        # Gates in (0.9, 1): long memory, as in a linear RNN; drawn on the CPU generator (as htt's bench).
        a = (0.9 + 0.1 * torch.rand(shape, generator=g)).to(device)
        b = torch.randn(shape, generator=g).to(device)
        dh = torch.randn(shape, generator=g).to(device)
        case_rows = {}
        for name, (scan, fwd_b, fb_b, needs_a) in _variants(device, quick, length, skipped, external).items():
            a_req, b_req = a.detach().requires_grad_(needs_a), b.detach().requires_grad_(True)
            leaves = (a_req, b_req) if needs_a else (b_req,)

            def forward(scan=scan):
                with torch.no_grad():
                    return scan(a, b)

            def fwd_bwd(scan=scan, leaves=leaves):
                return torch.autograd.grad(scan(a_req, b_req), leaves, dh)

            reps = 1 if name.startswith("sequential") else repeats
            warm = 1 if name.startswith("sequential") else 3
            for case, fn, per_element in (("forward", forward, fwd_b), ("fwd+bwd", fwd_bwd, fb_b)):
                timing = time_fn(fn, device, warmup=warm, repeats=reps)
                moved = per_element * n
                gbps = moved / timing["median_ms"] / 1e6
                row = {"name": name, "case": case, **base, **timing, "bytes": moved, "gbps": gbps,
                       "x_copy": gbps / copy["gbps"], "peak_mib": peak_memory_mib(fn, device)}
                if on_gpu:  # the steady state and the kernels alone (see the module docstring)
                    loop, graph = time_loop(fn, device), time_graph(fn, device)
                    row["loop_ms"] = loop["median_ms"]
                    row["graph_ms"] = graph["median_ms"] if graph else None
                rows.append(row)
                case_rows[(name, case)] = row
            if on_gpu:
                torch.cuda.empty_cache()
        for (name, case), row in case_rows.items():
            ref = case_rows.get(("accelerated-scan triton", case))
            row["speedup_vs_accelerated_scan"] = ref["median_ms"] / row["median_ms"] if ref else None
            if ref and row.get("loop_ms") and ref.get("loop_ms"):
                row["loop_speedup_vs_accelerated_scan"] = ref["loop_ms"] / row["loop_ms"]
        del a, b, dh
        if on_gpu:
            torch.cuda.empty_cache()

    config = {**sizes, "lengths": list(sizes["lengths"]), "dtype": "float32", "gates": "uniform in (0.9, 1)",
              "skipped": skipped, "autotuned": _tuned(),
              "note": "gbps = modelled bytes / median time (forward 12 B per element: a, b, h; forward + "
                      "backward 32 B: + a, h, dh read and da, db written; cumsum 8 and 16 B); the copy row moves "
                      "the forward's bytes (read + write); x_copy = gbps / copy gbps; "
                      "speedup_vs_accelerated_scan = its Triton scan's time / this time"}
    return config, rows


def _tuned() -> dict:
    """The configurations the autotuner picked, per key (empty off the GPU or before any run)."""
    try:
        from labkit.htt.triton_scan import tuned_configs
    except Exception:  # triton missing
        return {}
    return tuned_configs()


def bandwidth_plot(rows: list[dict], case: str = "forward", ax=None):
    """Effective bandwidth (GB/s) against sequence length, one line per implementation."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(5.5, 3.6))[1]
    wanted = [r for r in rows if r.get("case") in (case, "copy") and r.get("gbps")]
    for name in dict.fromkeys(r["name"] for r in wanted):
        pts = sorted((r["L"], r["gbps"]) for r in wanted if r["name"] == name)
        style = "k--" if name.startswith("device copy") else "o-"
        ax.plot(*zip(*pts), style, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length L")
    ax.set_ylabel(f"{case}: effective GB/s")
    ax.legend(fontsize=8)
    return ax
