"""Benchmark suite ``logmatmul``: the log-domain matmul against the broadcast-``logsumexp`` reference.

``python -m labkit.bench logmatmul`` measures, at ``M = K = N = 1024`` in fp32 with inputs
uniform in ``[-80, 80]`` (the issue's configuration):

* forward, and forward + backward (gradients of both operands for a random ``G``), of
  ``log_matmul`` with the Triton kernels (dot precision ``ieee`` and ``tf32x3``) and with the
  PyTorch implementation of the same algorithm, the chunked broadcast ``torch.logsumexp``
  reference (the baseline of the issue's 20x target), ``torch.compile`` of that reference, the
  max-only ("max-log") approximation, and a plain fp32 ``A @ B`` for scale;
* for each: the median time, ``x_reference`` (time / reference time of the same case) and
  ``speedup_vs_reference`` (its inverse), peak extra memory, and the error against float64:
  ``max_rel_err = max |C - C64| / |C64|`` and ``max_abs_err`` over the finite entries, and
  ``grad_rel_err = max |dX - dX64| / max |dX64|`` over both gradients;
* an adversarial case (``A_ik + B_kj`` small exactly where one of them is large) where every
  tile takes the slow, exact path: the price of the fallback;
* a sweep over sizes (``n x n x n`` for ``n`` from 256 to 4096) for the chapter's plot.

The float64 oracle is the reference in float64 for ``C`` and the explicit sums
``dA_ik = sum_j G_ij exp(A_ik + B_kj - C_ij)`` (likewise ``dB``) in float64, in chunks of rows;
it does not use labkit's algorithm.
"""
from __future__ import annotations

import sys
import time

import torch

from labkit.backend import use_triton
from labkit.bench.harness import KeepRowsOnInterrupt, peak_memory_mib, time_fn
from labkit.htt.logmatmul import _fp32_matmul, log_matmul, log_matmul_maxonly, log_matmul_reference

_CHUNK = 2 ** 24  # elements of the float64 oracle's intermediates
_COMPILED = "reference under torch.compile"


def uniform_inputs(m: int, k: int, n: int, device, low: float = -80.0, high: float = 80.0, seed: int = 0):
    """``A (m, k)``, ``B (k, n)`` and an upstream gradient ``G (m, n)`` (CPU generator, then moved)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(m, k, generator=g) * (high - low) + low
    b = torch.rand(k, n, generator=g) * (high - low) + low
    return a.to(device), b.to(device), torch.randn(m, n, generator=g).to(device)


def adversarial_inputs(m: int, k: int, n: int, device, seed: int = 0):
    """Inputs where every factorisation underflows: the large entries of ``A``'s rows sit where
    ``B``'s columns are small and vice versa (``A + B ~ 0`` for every term, each maximum ~ 80)."""
    g = torch.Generator().manual_seed(seed)
    sign = torch.where(torch.arange(k) % 2 == 0, 1.0, -1.0)
    a = 80 * sign[None, :] + torch.randn(m, k, generator=g)
    b = -80 * sign[:, None] + torch.randn(k, n, generator=g)
    return a.to(device), b.to(device), torch.randn(m, n, generator=g).to(device)


@torch.no_grad()
def exact_float64(a: torch.Tensor, b: torch.Tensor, grad: torch.Tensor):
    """``C``, ``dA`` and ``dB`` in float64 by explicit sums over chunks of rows (the oracle)."""
    a, b, grad = a.double(), b.double(), grad.double()
    m, k = a.shape
    n = b.shape[1]
    c = log_matmul_reference(a, b, chunk=max(1, _CHUNK // (k * n)))
    grad_a = torch.empty_like(a)
    grad_b = torch.zeros_like(b)
    rows = max(1, _CHUNK // (k * n))
    zero = torch.zeros((), dtype=torch.float64, device=a.device)
    for i in range(0, m, rows):
        ci = c[i:i + rows, None, :]
        p = torch.where(ci > float("-inf"), torch.exp(a[i:i + rows, :, None] + b[None] - ci), zero)
        p = torch.nan_to_num(p, nan=0.0) * grad[i:i + rows, None, :]
        grad_a[i:i + rows] = p.sum(dim=2)
        grad_b += p.sum(dim=0)
    return c, grad_a, grad_b


def errors(c: torch.Tensor, c64: torch.Tensor, grads=None, grads64=None) -> dict:
    fin = torch.isfinite(c64)
    diff = (c.double() - c64)[fin].abs()
    out = {"max_abs_err": diff.max().item() if diff.numel() else 0.0,
           "max_rel_err": (diff / c64[fin].abs().clamp_min(1e-30)).max().item() if diff.numel() else 0.0,
           "same_inf": bool(torch.equal(torch.isinf(c), torch.isinf(c64)))}
    if grads is not None:
        out["grad_rel_err"] = max(((g.double() - g64).abs().max() / g64.abs().max().clamp_min(1e-300)).item()
                                  for g, g64 in zip(grads, grads64))
    return out


def fp32_matmul(a, b):
    """``a @ b`` in plain fp32 (no TF32), the scale of a matmul of this size."""
    with _fp32_matmul(a.device):
        return a @ b


def variants(device: torch.device) -> dict:
    """name -> ``f(A, B)``; the Triton rows only where the kernels run (CUDA, or the interpreter)."""
    out = {}
    probe = torch.empty(0, device=device)
    if use_triton(probe):
        out["labkit triton (ieee)"] = lambda a, b: log_matmul(a, b, backend="triton", precision="ieee")
        out["labkit triton (tf32x3)"] = lambda a, b: log_matmul(a, b, backend="triton", precision="tf32x3")
    out["labkit torch (same algorithm)"] = lambda a, b: log_matmul(a, b, backend="torch")
    out["reference: chunked broadcast logsumexp"] = log_matmul_reference
    out["max-only (max-log approximation)"] = log_matmul_maxonly
    out["fp32 matmul A @ B (scale)"] = fp32_matmul
    if device.type == "cuda":  # measured last: compiling the chunk loop takes a while
        out[_COMPILED] = torch.compile(log_matmul_reference)
    return out


def autotuned_configs() -> dict:
    """The configuration each autotuned kernel chose, per key ``(M, N, K, precision, dtypes...)``."""
    from labkit.htt import triton_logmatmul as kernels

    out = {}
    for name in ("_log_matmul_fwd_kernel", "_log_matmul_bwd_a_kernel", "_log_matmul_bwd_b_kernel"):
        cache = getattr(getattr(kernels, name), "cache", {})
        out[name.strip("_")] = {str(key): str(config) for key, config in cache.items()}
    return out


def _status(exc: Exception) -> str:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "out of memory"
    return f"error: {type(exc).__name__}: {str(exc)[:200]}"


def _measure(name, fn, a, b, grad, device, repeats, oracle, backward: bool) -> dict:
    """Time and memory of the forward (or forward + backward) of ``fn``, and its error."""
    row = {"name": name, "case": "fwd+bwd" if backward else "forward", "M": a.shape[0], "K": a.shape[1],
           "N": b.shape[1], "dtype": str(a.dtype).replace("torch.", "")}
    try:
        if backward:
            a_, b_ = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
            step = lambda: torch.autograd.grad(fn(a_, b_), (a_, b_), grad)  # noqa: E731
        else:
            step = lambda: fn(a, b)  # noqa: E731
        row.update(time_fn(step, device, warmup=2, repeats=repeats))
        row["peak_mib"] = peak_memory_mib(step, device)
        if oracle is not None and not name.startswith("fp32 matmul"):
            if backward:
                c = fn(a_, b_)
                grads = torch.autograd.grad(c, (a_, b_), grad)
                row.update(errors(c.detach(), oracle[0], grads, oracle[1:]))
            else:
                with torch.no_grad():
                    row.update(errors(fn(a, b), oracle[0]))
        row["status"] = "ok"
    except Exception as exc:  # a variant that fails at this size is a result, not a crash of the suite
        row["status"] = _status(exc)
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    # One line per row on stderr: the suite runs for minutes, and a killed run should say how far it got.
    print(f"[logmatmul] {name:40s} {row['case']:7s} n={row['M']:5d} {row.get('median_ms', float('nan')):9.3f} ms "
          f"{row['status']}", file=sys.stderr, flush=True)
    return row


def _add_ratios(rows: list[dict], reference: str = "reference: chunked broadcast logsumexp") -> None:
    key = lambda r: (r["case"], r.get("inputs"), r.get("sweep", False), r["M"], r["K"], r["N"])  # noqa: E731
    base = {key(r): r["median_ms"] for r in rows if r["name"] == reference and r["status"] == "ok"}
    for r in rows:
        t = base.get(key(r))
        if t is not None and r["status"] == "ok":
            r["x_reference"] = r["median_ms"] / t
            r["speedup_vs_reference"] = t / r["median_ms"]


def run(device: torch.device, quick: bool) -> tuple[dict, list[dict]]:
    on_gpu = device.type == "cuda"
    quick = quick or not on_gpu
    size = 64 if quick else 1024
    repeats = 3 if quick else 30
    impls = variants(device)
    rows = []

    # Three stages: the headline at 1024^3 fp32 (inputs uniform in [-80, 80], then adversarial), a
    # sweep over sizes, and torch.compile of the reference. Ctrl-C (or SIGTERM from `timeout`, which
    # `python -m labkit.bench` turns into it) stops the suite and keeps the rows measured so far.
    sweep = (32, 64) if quick else (256, 512, 1024, 2048, 4096)
    sweep_names = [n for n in impls if n.startswith(("labkit", "reference: chunked", "fp32"))]
    with KeepRowsOnInterrupt("logmatmul", rows) as stop:
        for inputs, make in (("uniform +-80", uniform_inputs), ("adversarial", adversarial_inputs)):
            a, b, grad = make(size, size, size, device)
            oracle = exact_float64(a, b, grad)
            names = [n for n in impls if n != _COMPILED] if inputs.startswith("uniform") else sweep_names
            for backward in (False, True):
                for name in names:
                    rows.append({"inputs": inputs, **_measure(name, impls[name], a, b, grad, device, repeats,
                                                              oracle, backward)})
            if inputs.startswith("uniform"):
                uniform_case = (a, b, grad, oracle)  # the compiled reference's rows reuse it

        # Size sweep (forward, and fwd+bwd where the reference's saved intermediates fit).
        for n in sweep:
            a, b, grad = uniform_inputs(n, n, n, device, seed=1)
            oracle = exact_float64(a, b, grad) if n <= 2048 else None
            reps = max(3, min(repeats, int(repeats * (1024 / n) ** 2)))
            for backward in (False, True):
                for name in sweep_names:
                    reference = name.startswith("reference")
                    if reference and backward and n * n * n * 4 > 2 ** 33:  # saves n^3 fp32 for backward
                        continue
                    row = _measure(name, impls[name], a, b, grad, device,
                                   3 if reference and n > 2048 else reps, oracle, backward)
                    rows.append({"inputs": "uniform +-80", "sweep": True, **row})

        # torch.compile of the reference last: compiling its chunk loop (forward, then backward)
        # takes the longest of anything here, and compile workers may not stop on Ctrl-C.
        if _COMPILED in impls:
            a, b, grad, oracle = uniform_case
            for backward in (False, True):
                rows.append({"inputs": "uniform +-80", **_measure(_COMPILED, impls[_COMPILED], a, b, grad, device,
                                                                  repeats, oracle, backward)})

    _add_ratios(rows)
    config = {"size": size, "dtype": "float32", "inputs": "A, B uniform in [-80, 80]; G ~ N(0, 1)",
              "autotuned": autotuned_configs() if on_gpu else None,
              "sweep": list(sweep), "interrupted": stop.interrupted, "float64_oracle": "reference in float64 and explicit gradient sums",
              "target": "forward >= 20x faster than the chunked broadcast-logsumexp reference at 1024^3 on an "
                        "H100, fp32 relative error <= 1e-5",
              "note": "x_reference = time / reference time of the same case and inputs; errors against float64 "
                      "(grad_rel_err: max |dX - dX64| / max |dX64|); the fp32 matmul runs without TF32"}
    return config, rows


if __name__ == "__main__":  # a quick look; the suite is run by python -m labkit.bench logmatmul
    from labkit.bench.harness import format_table

    _, result = run(torch.device("cuda" if torch.cuda.is_available() else "cpu"), quick=True)
    print(format_table(result, ["name", "inputs", "case", "M", "median_ms", "x_reference", "max_rel_err",
                                "grad_rel_err", "peak_mib", "status"]))
