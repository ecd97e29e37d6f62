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

The two cross terms are themselves about 2^-11 of the product, so they can also be done in
bf16 (:data:`FP32_CROSS_TERMS` = ``"bf16"``, the default), whose GEMMs run at twice TF32's rate: each
operand then keeps its TF32 part in fp32 and two bf16 planes, ``t`` and ``t - t_hi``
rounded to bf16, and ``a @ b ~ a_hi @ b_hi + a16 @ b_rest16 + a_rest16 @ b16``. bf16's 8-bit
significand puts the error of each cross term at about 2^-20 of the product: near the
rounding error of an fp32 GEMM's own long sums, against about 2^-22 for 3xTF32. On an H100 at
the B-spline layer's shapes (bench/diagnostics/fp32_gemm_mixes.py, 2026-12-06) the three products
of one block took 1.79 ms this way against 2.64 ms as 3xTF32 and 6.13 ms as plain fp32 GEMMs, all
three with a largest error of about 1e-5 of the largest output (3xTF32 the same, plain fp32 3e-6).
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
import triton
import triton.language as tl

from labkit.backend import cublas_tf32, interpret_mode, patch_triton_interpreter

#: Bytes of the feature buffer of one block of inputs (both TF32 halves in fp32). At 4096
#: rows and 9 features (B-spline, G = 5, k = 3) in fp32 that is 448 inputs per block (two
#: blocks for 768 inputs), GEMMs with K = 4032. An H100 sweep at 4096 x 768 -> 3072
#: (bench/diagnostics/host_and_buffers.py) chose it: with 32 MiB (112 inputs, K = 1008) the
#: weight-gradient GEMM (1008 x 3072 outputs) filled 96 tiles of 132 SMs and ran at 180
#: TFLOP/s; fp32 forward + backward took 8.52 ms, with 64 MiB 7.35 and with 128 MiB 6.93 ms,
#: bf16 1.72 / 1.40 / 1.36 ms. Peak memory rose from 207 to 350 MiB in fp32 (Linear+GELU: 192;
#: the issue allows twice that) and from 87 to 119 MiB in bf16.
FEATURE_BUFFER_BYTES = 128 * 2**20
#: The cross terms of the fp32 products: ``"bf16"`` or ``"tf32"`` (3xTF32; see the module
#: docstring). Read when a layer call starts (its backward uses the same).
FP32_CROSS_TERMS = "bf16"
INPUT_ALIGN = 16  # blocks of inputs are multiples of this: 16-byte aligned GEMM operands
FEATURE_BLOCK_M, FEATURE_BLOCK_I = 64, 32  # the (rows, inputs) tile of the feature kernels


@triton.jit
def store_feature(hi_ptr, lo_ptr, offsets, value, mask, SPLIT: tl.constexpr, LO_PLANE, MIXED: tl.constexpr):
    """Store an fp32 tile: as (TF32 part, rest) into ``hi`` and ``lo`` when ``SPLIT``, else cast to hi's dtype.

    ``MIXED`` (with SPLIT): ``lo`` is bf16 with two planes ``LO_PLANE`` elements apart, the
    value itself and the rest, both rounded to bf16 (see :data:`FP32_CROSS_TERMS`).
    """
    if SPLIT:
        hi = (value.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)  # 13 low mantissa bits cleared
        tl.store(hi_ptr + offsets, hi, mask=mask)
        if MIXED:
            tl.store(lo_ptr + offsets, value.to(tl.bfloat16, fp_downcast_rounding="rtne"), mask=mask)
            tl.store(lo_ptr + LO_PLANE + offsets, (value - hi).to(tl.bfloat16, fp_downcast_rounding="rtne"), mask=mask)
        else:
            tl.store(lo_ptr + offsets, value - hi, mask=mask)
    else:
        tl.store(hi_ptr + offsets, value.to(hi_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _split_kernel(src_ptr, hi_ptr, lo_ptr, N, MIXED: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offsets < N
    store_feature(hi_ptr, lo_ptr, offsets, tl.load(src_ptr + offsets, mask=ok).to(tl.float32), ok, True, N, MIXED)


def ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)`` for grid sizes. Not ``triton.cdiv``: Triton 3.6 makes that a constexpr
    function whose every call from the host goes through argument unwrapping (several
    microseconds each, a few dozen per layer step where the host sets the pace)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= ``n`` (n >= 1), for block sizes: ``triton.next_power_of_2``
    costs what ``triton.cdiv`` does (see :func:`ceil_div`)."""
    return 1 << (n - 1).bit_length()


def launch(kernel, grid, *args, **meta):
    """Launch a (not autotuned) kernel, in Triton's interpreter on CPU tensors."""
    if interpret_mode():
        patch_triton_interpreter()
    kernel[grid](*args, **meta)


@contextmanager
def fp32_cross_terms(kind: str):
    """Layer calls inside the ``with`` block use ``kind`` (``"tf32"`` or ``"bf16"``) for the
    cross terms of their fp32 products (:data:`FP32_CROSS_TERMS`)."""
    global FP32_CROSS_TERMS
    before, FP32_CROSS_TERMS = FP32_CROSS_TERMS, kind
    try:
        yield
    finally:
        FP32_CROSS_TERMS = before


def feature_buffers(shape: tuple[int, ...], device, dtype: torch.dtype, split: bool, mixed: bool = False):
    """``(hi, lo)`` to write an operand of ``shape`` into: fp32 halves when ``split`` (``lo`` as
    two bf16 planes when ``mixed``), else one buffer of ``dtype`` and None."""
    if not split:
        return torch.empty(shape, device=device, dtype=dtype), None
    hi = torch.empty(shape, device=device, dtype=torch.float32)
    lo = torch.empty((2, *shape) if mixed else shape, device=device, dtype=torch.bfloat16 if mixed else torch.float32)
    return hi, lo


def split_tf32(t: torch.Tensor, mixed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) with ``hi + lo == t`` exactly, ``hi`` exact in TF32 and ``|lo| <= 2^-10 |t|``
    (both fp32); with ``mixed``, ``lo`` holds two bf16 planes: ``t`` and ``t - hi`` rounded."""
    t = t.contiguous()
    hi, lo = feature_buffers(t.shape, t.device, torch.float32, True, mixed)
    if t.numel():
        launch(_split_kernel, (ceil_div(t.numel(), 1024),), t, hi, lo, t.numel(), MIXED=mixed, BLOCK=1024)
    return hi, lo


class Product:
    """``a @ b`` in the layer's precision: 3xTF32 from split operands, or one GEMM.

    ``precision`` is the fused kernels' name for it (``"tf32x3"``, ``"tf32"``, ``"ieee"``, or
    ``"interpreter"`` on the CPU, where the split is kept so that CI tests it; CPU matmuls
    are exact fp32, so the three products reproduce one to rounding).
    """

    def __init__(self, precision: str, compute_dtype: torch.dtype):
        if FP32_CROSS_TERMS not in ("tf32", "bf16"):
            raise ValueError(f"split_gemm.FP32_CROSS_TERMS must be 'tf32' or 'bf16', got {FP32_CROSS_TERMS!r}")
        self.split = compute_dtype == torch.float32 and precision in ("tf32x3", "interpreter")
        self.mixed = self.split and FP32_CROSS_TERMS == "bf16"
        self.tf32 = compute_dtype == torch.float32 and precision in ("tf32", "tf32x3")

    def parts(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The operand as the products want it: (hi, lo) when split, else (t, None)."""
        return split_tf32(t, self.mixed) if self.split else (t, None)

    def __call__(self, a, b, out=None):
        """``a @ b``, added to ``out`` when given; ``a`` and ``b`` are (hi, lo) pairs. A 16-bit
        product is added to an fp32 ``out`` in fp32 (on the CPU: rounded to 16 bits first)."""
        (a_hi, a_lo), (b_hi, b_lo) = a, b
        if self.mixed:  # lo: bf16 planes (t, rest); the cross terms t16 @ rest16 and rest16 @ t16
            terms = [(a_hi, b_hi), (a_lo[0], b_lo[1]), (a_lo[1], b_lo[0])]
        else:
            terms = [(a_hi, b_hi)] + ([(a_hi, b_lo), (a_lo, b_hi)] if self.split else [])
        with self._precision():  # entered once for the three products, not once per product
            for x, y in terms:
                out = self._gemm(x, y, out)
        return out

    def one(self, a: torch.Tensor, b: torch.Tensor, out=None):
        """One GEMM ``a @ b`` (added to ``out`` when given), in TF32 when the layer uses it: for
        operands that are split already, e.g. stacked halves, and for unsplit ones."""
        with self._precision():
            return self._gemm(a, b, out)

    def _precision(self):
        return cublas_tf32() if self.tf32 else nullcontext()

    @staticmethod
    def _gemm(a: torch.Tensor, b: torch.Tensor, out=None):
        if out is None:
            return a @ b
        if a.dtype == out.dtype:
            return out.addmm_(a, b)
        if out.is_cuda:  # 16-bit operands, fp32 result: cuBLAS adds into out in place (no 16-bit
            # product, no add kernel; without out= a new fp32 result is allocated for every term,
            # which raised the B-spline layer's peak by its largest product, 66 MiB at the suite's shape)
            return torch.addmm(out, a, b, out_dtype=out.dtype, out=out)
        out += a @ b  # the CPU has no mixed-dtype addmm
        return out

    def element_bytes(self, compute_dtype: torch.dtype) -> int:
        """Bytes per feature in the buffer: two fp32 halves (or fp32 and two bf16 planes) when split."""
        return 8 if self.split else compute_dtype.itemsize


def transposed(parts):
    """The (hi, lo) pair of ``t.T`` (bf16 planes transposed plane by plane)."""
    return tuple(None if t is None else t.mT for t in parts)


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
