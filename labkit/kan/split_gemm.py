"""Pieces shared by the split-GEMM paths of both KAN layers (``gemm_bspline``, ``gemm_chebyshev``).

A KAN layer is one GEMM whose left operand, the per-input *features* (B-spline bases, or
Chebyshev polynomials), is computed from x. The split-GEMM paths let a small Triton kernel
write the features of a block of inputs to a buffer and cuBLAS multiply it, block by block,
so that the buffer stays small (:data:`FEATURE_BUFFER_BYTES`) and nothing of size
rows x in x features outlives a block.

fp32 keeps fp32 accuracy with three TF32 GEMMs per product ("3xTF32"): each operand is split
into a TF32 part (the float with its 13 low mantissa bits cleared, so TF32 holds it exactly)
and the rest, and ``a @ b ~ a_hi @ b_hi + a_hi @ b_lo + a_lo @ b_hi``; the dropped
``a_lo @ b_lo`` is about 2^-20 of the product. :class:`Product` does the bookkeeping.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import triton
import triton.language as tl

from labkit.backend import cublas_tf32, interpret_mode, patch_triton_interpreter

#: Bytes of the feature buffer of one block of inputs (both TF32 halves in fp32). At 4096
#: rows and 9 features (B-spline, G = 5, k = 3) in fp32 that is 112 inputs per block, a GEMM
#: with K = 1008: large enough for cuBLAS, small enough that the layer's extra memory stays
#: within twice Linear+GELU's.
FEATURE_BUFFER_BYTES = 32 * 2**20
INPUT_ALIGN = 16  # blocks of inputs are multiples of this: 16-byte aligned GEMM operands
FEATURE_BLOCK_M, FEATURE_BLOCK_I = 64, 32  # the (rows, inputs) tile of the feature kernels


@triton.jit
def store_feature(hi_ptr, lo_ptr, offsets, value, mask, SPLIT: tl.constexpr):
    """Store an fp32 tile: as (TF32 part, rest) into ``hi`` and ``lo`` when ``SPLIT``, else cast to hi's dtype."""
    if SPLIT:
        hi = (value.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)  # 13 low mantissa bits cleared
        tl.store(hi_ptr + offsets, hi, mask=mask)
        tl.store(lo_ptr + offsets, value - hi, mask=mask)
    else:
        tl.store(hi_ptr + offsets, value.to(hi_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _split_kernel(src_ptr, hi_ptr, lo_ptr, N, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offsets < N
    store_feature(hi_ptr, lo_ptr, offsets, tl.load(src_ptr + offsets, mask=ok).to(tl.float32), ok, True)


def launch(kernel, grid, *args, **meta):
    """Launch a (not autotuned) kernel, in Triton's interpreter on CPU tensors."""
    if interpret_mode():
        patch_triton_interpreter()
    kernel[grid](*args, **meta)


def split_tf32(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) in fp32 with ``hi + lo == t`` exactly, ``hi`` exact in TF32 and ``|lo| <= 2^-10 |t|``."""
    t = t.contiguous()
    hi, lo = torch.empty_like(t, dtype=torch.float32), torch.empty_like(t, dtype=torch.float32)
    if t.numel():
        launch(_split_kernel, (triton.cdiv(t.numel(), 1024),), t, hi, lo, t.numel(), BLOCK=1024)
    return hi, lo


class Product:
    """``a @ b`` in the layer's precision: 3xTF32 from split operands, or one GEMM.

    ``precision`` is the fused kernels' name for it (``"tf32x3"``, ``"tf32"``, ``"ieee"``, or
    ``"interpreter"`` on the CPU, where the split is kept so that CI tests it; CPU matmuls
    are exact fp32, so the three products reproduce one to rounding).
    """

    def __init__(self, precision: str, compute_dtype: torch.dtype):
        self.split = compute_dtype == torch.float32 and precision in ("tf32x3", "interpreter")
        self.tf32 = compute_dtype == torch.float32 and precision in ("tf32", "tf32x3")

    def parts(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The operand as the products want it: (hi, lo) when split, else (t, None)."""
        return split_tf32(t) if self.split else (t, None)

    def __call__(self, a, b, out=None):
        """``a @ b``, added to ``out`` when given; ``a`` and ``b`` are (hi, lo) pairs. A 16-bit
        product is rounded to 16 bits once and added to an fp32 ``out``."""
        (a_hi, a_lo), (b_hi, b_lo) = a, b
        terms = [(a_hi, b_hi)] + ([(a_hi, b_lo), (a_lo, b_hi)] if self.split else [])
        for x, y in terms:
            out = self.one(x, y, out)
        return out

    def one(self, a: torch.Tensor, b: torch.Tensor, out=None):
        """One GEMM ``a @ b`` (added to ``out`` when given), in TF32 when the layer uses it: for
        operands that are split already, e.g. stacked halves."""
        with cublas_tf32() if self.tf32 else nullcontext():
            if out is None:
                return a @ b
            if a.dtype == out.dtype:
                return out.addmm_(a, b)
            out += a @ b
            return out

    def element_bytes(self, compute_dtype: torch.dtype) -> int:
        """Bytes per feature in the buffer: two fp32 halves when split."""
        return 8 if self.split else compute_dtype.itemsize


def transposed(parts):
    """The (hi, lo) pair of ``t.T``."""
    return tuple(None if t is None else t.t() for t in parts)


def inputs_per_block(rows: int, n_in: int, n_features: int, element_bytes: int, share: float = 1.0) -> int:
    """How many inputs one block holds so that its feature buffer fits ``share`` of :data:`FEATURE_BUFFER_BYTES`."""
    per_input = max(1, rows) * n_features * element_bytes
    fit = max(INPUT_ALIGN, int(share * FEATURE_BUFFER_BYTES) // per_input // INPUT_ALIGN * INPUT_ALIGN)
    return min(n_in, fit)


def input_blocks(rows: int, n_in: int, n_features: int, element_bytes: int,
                 share: float = 1.0) -> list[tuple[int, int]]:
    """The (first, end) inputs of each block (see :func:`inputs_per_block`)."""
    step = inputs_per_block(rows, n_in, n_features, element_bytes, share)
    return [(i0, min(n_in, i0 + step)) for i0 in range(0, n_in, step)]
