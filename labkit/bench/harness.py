"""Timing and memory measurement shared by every benchmark suite.

GPU timings use CUDA events around each repeat, after warm-up (compilation, autotuning
and allocator growth stay out of the numbers); the median and the 20th/80th percentiles
of the repeats are reported. On CPU the same loop runs with ``time.perf_counter``.
Peak memory is the CUDA allocator's peak during one call minus what was allocated
before it: the *extra* memory the operation needs (activations saved for backward,
workspaces, outputs). It is ``None`` on CPU.
"""
from __future__ import annotations

import cProfile
import io
import json
import os
import platform
import pstats
import re
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from labkit.backend import cublas_allows_tf32
from labkit.data import atomic_write

RESULTS_DIR = Path(__file__).resolve().parents[2] / "bench" / "results"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], device: torch.device | str, warmup: int = 5, repeats: int = 30) -> dict:
    """Median and spread (ms) of ``repeats`` calls of ``fn`` after ``warmup`` calls."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    if device.type == "cuda":
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=5) if len(times) >= 5 else [min(times)] * 4
    return {
        "median_ms": statistics.median(times),
        "p20_ms": q[0],
        "p80_ms": q[-1],
        "min_ms": min(times),
        "repeats": repeats,
    }


def time_loop(fn: Callable[[], object], device: torch.device | str, calls: int = 20, repeats: int = 10) -> dict | None:
    """Per-call time of ``calls`` back-to-back calls of ``fn`` with no sync between them (median of ``repeats``).

    :func:`time_fn` waits for the GPU after every call, so each call starts on an idle GPU and its
    host overhead (Python, launches) is on the clock. In a training loop the host runs ahead of
    the GPU and that overhead hides behind the GPU work of earlier calls, unless the host is the
    slower of the two. This is that steady state: max(host time, GPU time) per call, roughly.
    ``None`` off CUDA.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    for _ in range(3):
        fn()
    _sync(device)
    per_call = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        per_call.append(start.elapsed_time(end) / calls)
    return {"median_ms": statistics.median(per_call), "min_ms": min(per_call), "calls": calls, "repeats": repeats}


def time_graph(fn: Callable[[], object], device: torch.device | str, repeats: int = 30) -> dict | None:
    """Like :func:`time_fn` for ``fn`` captured once in a CUDA graph and replayed.

    A replay launches the captured kernels without Python, so this is the GPU's share of the
    time: what ``fn`` costs when host overhead is out of the way (a training step under
    ``torch.compile(mode="reduce-overhead")`` or a hand-made graph). ``None`` off CUDA or when
    ``fn`` cannot be captured (a host sync, a CPU tensor in the way).
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    try:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up outside the graph, on a side stream as capture wants
            for _ in range(3):
                fn()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local, as torch.compile's CUDA graphs do: autograd runs backward on a worker
        # thread, which the default global mode also polices (the TT lookup's fwd+bwd was captured
        # this way on an H100, not in a global-mode diagnostic run).
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            fn()
    except Exception:  # noqa: BLE001 - any capture failure means "not capturable"
        torch.cuda.synchronize(device)
        return None
    return time_fn(graph.replay, device, warmup=3, repeats=repeats)


def _host_alone(fn: Callable[[], object]) -> None:
    """Warm ``fn`` up, then keep a CUDA GPU (if any) busy for about a second, so that the calls
    timed next never wait for it: what they cost is the host's own time."""
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda._sleep(int(2e9))  # about one second of GPU spinning


def host_ms(fn: Callable[[], object], calls: int = 20) -> float:
    """The host's time (ms) per call of ``fn`` while the GPU is kept busy, so that no launch
    waits for the GPU: what the host costs a step, apart from the kernels. Keep ``calls``
    small: a queue of more launches than CUDA holds blocks the host and inflates it."""
    _host_alone(fn)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = (time.perf_counter() - start) / calls * 1e3
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return elapsed


def host_profile(fn: Callable[[], object], calls: int = 20, top: int = 20) -> str:
    """cProfile's table (the ``top`` functions by own time) of ``calls`` calls of ``fn``, timed
    as :func:`host_ms` times them."""
    _host_alone(fn)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    profiler.disable()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def peak_memory_mib(fn: Callable[[], object], device: torch.device | str) -> float | None:
    """Extra CUDA memory (MiB) that one call of ``fn`` needs at its peak; None off CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    fn()  # warm: autotuning and caches must not count
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def environment(device: torch.device | str) -> dict:
    """Device, versions and commit: enough to tell two result files apart."""
    device = torch.device(device)
    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "allow_tf32": cublas_allows_tf32(),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:
        env["triton"] = None
    env["triton_interpret"] = os.environ.get("TRITON_INTERPRET") == "1"
    env["host_cpu"] = _host_cpu()  # the host issues the kernels: small steps' per-call times depend on it
    try:
        git = lambda *args: subprocess.run(["git", *args], capture_output=True, text=True, check=True,  # noqa: E731
                                           cwd=Path(__file__).parent).stdout.strip()
        env["git_commit"] = git("rev-parse", "--short", "HEAD")
        # True: the code that ran had uncommitted changes to tracked files (the commit alone is not it)
        env["git_dirty"] = bool(git("status", "--porcelain", "--untracked-files=no"))
    except Exception:
        env["git_commit"] = env["git_dirty"] = None
    return env


def _host_cpu() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_slug(env: dict) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``; CPU results go under ``cpu``."""
    if env["device_type"] != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", env["device"].lower()).strip("-")


def write_results(suite: str, rows: list[dict], env: dict, config: dict, out_dir: Path | None = None) -> Path:
    """Write ``{suite, environment, config, results}`` as JSON under ``bench/results/<device>/<suite>.json``."""
    out_dir = Path(out_dir or RESULTS_DIR) / device_slug(env)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{suite}.json"
    document = json.dumps({"suite": suite, "environment": env, "config": config, "results": rows}, indent=2)
    return atomic_write(path, lambda tmp: tmp.write_text(document))  # never a truncated file


def load_results(suite: str, device: str | None = None, results_dir: Path | None = None) -> dict:
    """Read a committed result file; ``device`` is the folder name (default: the only/first GPU one)."""
    base = Path(results_dir or RESULTS_DIR)
    if device is None:
        candidates = sorted(p.parent.name for p in base.glob(f"*/{suite}.json"))
        gpu = [c for c in candidates if c != "cpu"]
        if not candidates:
            raise FileNotFoundError(f"no results for suite {suite!r} under {base}; run: python -m labkit.bench {suite}")
        device = (gpu or candidates)[0]
    path = base / device / f"{suite}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run: python -m labkit.bench {suite} on that device")
    return json.loads(path.read_text())


class KeepRowsOnInterrupt:
    """``with KeepRowsOnInterrupt(suite, rows) as stop:`` around a suite's measuring loops.

    Ctrl-C, or SIGTERM from `timeout` (which ``python -m labkit.bench`` turns into a
    KeyboardInterrupt), ends the block instead of the process: the rows measured so far are
    kept, ``stop.interrupted`` says so, and the suite writes them with ``"interrupted": True``.
    """

    def __init__(self, suite: str, rows: list):
        self.suite, self.rows, self.interrupted = suite, rows, False

    def __enter__(self) -> "KeepRowsOnInterrupt":
        return self

    def __exit__(self, kind, value, traceback) -> bool:
        if kind is None or not issubclass(kind, KeyboardInterrupt):
            return False
        self.interrupted = True
        print(f"[{self.suite}] interrupted after {len(self.rows)} rows; writing the rows measured so far",
              file=sys.stderr, flush=True)
        return True


def describe_results(document: dict) -> bool:
    """Print where a result file was measured (device, torch, triton); True for a full-size GPU run.

    Notebooks state a target as met or not only from such a run, never from a CPU ``--quick`` one.
    """
    env = document["environment"]
    print(env["device"], "| torch", env["torch"], "| triton", env.get("triton"))
    return env["device_type"] == "cuda" and not document["config"].get("quick")


def format_table(rows: list[dict], columns: list[str]) -> str:
    """Plain-text table of ``rows`` (dicts); floats get 3 significant decimals, missing cells stay empty."""
    def cell(value) -> str:
        if value is None:
            return ""
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    table = [columns] + [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    return "\n".join("  ".join(v.rjust(w) if j else v.ljust(w) for j, (v, w) in enumerate(zip(line, widths)))
                     for line in table)
