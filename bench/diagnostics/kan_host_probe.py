"""How much Python one ChebyKAN split-GEMM step costs the host, on the CPU, with no GPU at all.

The step of the ``kan`` suite (bf16 autocast, forward + backward) at a tiny size, under
``TRITON_INTERPRET=1`` with every Triton launch stubbed out: what remains is the Python and the
PyTorch dispatch of the layer's own code, next to ``Linear+GELU``'s step. On a GPU machine the
launches add to both. Microseconds per step (2,000 steps, one thread); ``prof`` adds a cProfile.

    TRITON_INTERPRET=1 PYTHONPATH=$PWD python3 bench/diagnostics/kan_host_probe.py [prof]
"""
import sys
import time

import torch

from labkit.bench.harness import host_profile
from labkit.kan import gemm_chebyshev, ops, split_gemm


def no_launch(*args, **kwargs):
    return None


gemm_chebyshev.launch = split_gemm.launch = no_launch
torch.set_num_threads(1)
rows, d_in, d_out, degree = 8, 16, 16, 3
x = torch.rand(rows, d_in).requires_grad_()
coeffs = torch.randn(d_in, d_out, degree + 1).requires_grad_()
linear = torch.nn.Linear(d_in, d_out)
dy = torch.randn(rows, d_out, dtype=torch.bfloat16)


def cheby_step():
    x.grad = coeffs.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ops.chebykan(x, coeffs, backend="triton", path="gemm")
    y.backward(dy)


def linear_gelu_step():
    x.grad = None
    for p in linear.parameters():
        p.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = torch.nn.functional.gelu(linear(x))
    y.backward(dy.to(y.dtype))


for name, step in (("Linear+GELU", linear_gelu_step), ("ChebyKAN split GEMM", cheby_step)):
    for _ in range(50):
        step()
    start = time.perf_counter()
    for _ in range(2000):
        step()
    print(f"{name:20s} {(time.perf_counter() - start) / 2000 * 1e6:6.0f} us per step", flush=True)
if "prof" in sys.argv[1:]:
    table = host_profile(cheby_step, 2000, top=15)
    print("\n".join(line[:150] for line in table.splitlines()[4:26]))
