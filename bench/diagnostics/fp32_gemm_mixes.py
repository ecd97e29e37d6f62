"""Issue 3: could the fp32 split-GEMM B-spline layer spend less on its GEMMs than 3xTF32?

The layer's fp32 step is three products (forward, input gradient, weight gradient), each done
today as three TF32 GEMMs on split operands (``a_hi b_hi + a_hi b_lo + a_lo b_hi``,
``labkit.kan.split_gemm.Product``). The two cross terms are 2^-11 of the product, so they may
not need TF32's 10-bit mantissa: bf16 (7 bits) runs at twice TF32's rate on an H100. This
times, at the layer's shapes (4096 rows, one 4032-wide block of features, 3072 outputs), and
checks against float64:

* ``ieee``: one fp32 GEMM without TF32 (what ``Linear`` does in fp32);
* ``tf32``: one TF32 GEMM (fast, ~1e-3 relative error: not fp32);
* ``3xtf32``: today's three TF32 GEMMs;
* ``tf32+bf16``: ``a_hi b_hi`` in TF32 plus both cross terms as one bf16 GEMM over the
  concatenated operands ``[a_hi | a_lo] @ [b_lo ; b_hi]``, added into the fp32 result.

Operands are prepared before timing (in the layer, the feature kernel would write them).
Usage: PYTHONPATH=. python3 bench/diagnostics/fp32_gemm_mixes.py
"""
import torch

from labkit.bench.harness import time_fn

torch.manual_seed(0)
dev = "cuda"
ROWS, K, OUT = 4096, 4032, 3072


def split(t):
    hi = (t.view(torch.int32) & -8192).view(torch.float32)  # TF32-exact part
    return hi, t - hi


def strategies(a, b):
    a_hi, a_lo = split(a)
    b_hi, b_lo = split(b)
    cat_a = torch.cat([a_hi, a_lo], dim=1).bfloat16().contiguous()
    cat_b = torch.cat([b_lo, b_hi], dim=0).bfloat16().contiguous()
    out = torch.empty(a.shape[0], b.shape[1], device=dev)

    def ieee():
        torch.backends.cuda.matmul.allow_tf32 = False
        return torch.mm(a, b, out=out)

    def tf32():
        torch.backends.cuda.matmul.allow_tf32 = True
        return torch.mm(a, b, out=out)

    def three():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.mm(a_hi, b_hi, out=out)
        out.addmm_(a_hi, b_lo)
        return out.addmm_(a_lo, b_hi)

    def mixed():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.mm(a_hi, b_hi, out=out)
        return torch.addmm(out, cat_a, cat_b, out_dtype=torch.float32)  # a new fp32 tensor

    return {"ieee": ieee, "tf32": tf32, "3xtf32": three, "tf32+bf16": mixed}


# The three products of one block: forward F @ W, input gradient dY @ W^T, weight gradient F^T @ dY.
# Features are B-spline values in [0, 1) (here uniform), weights and output gradients Gaussian.
F = torch.rand(ROWS, K, device=dev)
W = torch.randn(K, OUT, device=dev) / K ** 0.5
dY = torch.randn(ROWS, OUT, device=dev)
products = {"forward F @ W": (F, W), "input grad dY @ W^T": (dY, W.t().contiguous()),
            "weight grad F^T @ dY": (F.t().contiguous(), dY)}
print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | shapes: rows {ROWS}, block {K}, out {OUT}")
totals = {}
for name, (a, b) in products.items():
    exact = a.double() @ b.double()
    scale = exact.abs().max().item()
    flops = 2 * a.shape[0] * a.shape[1] * b.shape[1]
    for label, fn in strategies(a, b).items():
        ms = time_fn(fn, dev, warmup=3, repeats=20)["median_ms"]
        err = (fn().double() - exact).abs().max().item() / scale
        totals[label] = totals.get(label, 0.0) + ms
        print(f"{name:22s} {label:10s} {ms:7.3f} ms  {flops / ms / 1e9:6.0f} TFLOP/s (fp32-equivalent)  "
              f"max error / max |C| {err:.1e}")
torch.backends.cuda.matmul.allow_tf32 = False
print("sum of the three products per block:", {k: round(v, 3) for k, v in totals.items()})
