"""``tt_lookup``: a TT embedding's rows for token ids, without building the table.

Three implementations, one contract (same values, same gradients into the cores):

* ``"triton"`` (two cores, CUDA or ``TRITON_INTERPRET=1``): :mod:`labkit.htt.triton_tt`.
* ``"torch"``: a custom autograd function that saves only the ids and recomputes the gathered
  slices in backward, so its activation memory is that of ``nn.Embedding`` (the ids). Any
  number of cores; the fallback when Triton is absent.
* the plain autograd formulation, :func:`labkit.htt.tt.tt_lookup_reference` (the seed's), which
  keeps the gathered slices alive until backward.
"""
from __future__ import annotations

import warnings

import torch

from labkit.backend import resolve_backend
from labkit.htt.tt import tt_lookup_reference


class _RecomputeLookup(torch.autograd.Function):
    """PyTorch lookup that keeps only the ids for backward."""

    @staticmethod
    def forward(ctx, ids, d_model, *cores):
        ctx.save_for_backward(ids, *cores)
        ctx.d_model = d_model
        with torch.no_grad():
            return tt_lookup_reference(list(cores), ids, d_model)

    @staticmethod
    def backward(ctx, grad_out):
        ids, *cores = ctx.saved_tensors
        return (None, None, *_recompute_grads(ids, ctx.d_model, cores, grad_out))


class _TritonLookup(torch.autograd.Function):
    """Saves the ids and the (small) cores; the kernels recompute the slices in backward."""

    @staticmethod
    def forward(ctx, ids, d_model, a, b):
        from labkit.htt.triton_tt import tt2_forward

        flat = ids.reshape(-1).contiguous()
        a, b = a.contiguous(), b.contiguous()  # the kernels index the cores by their modes
        ctx.save_for_backward(flat, a, b)
        return tt2_forward(flat, a, b, d_model).view(*ids.shape, d_model)

    @staticmethod
    def backward(ctx, grad_out):
        from labkit.htt.triton_tt import backward_modes_fit, tt2_backward

        flat, a, b = ctx.saved_tensors
        grad_out = grad_out.reshape(flat.numel(), -1).contiguous()
        if not backward_modes_fit(a, b, grad_out.shape[1]):
            # Large d_model and rank: the fused kernel's tiles exceed this GPU's shared memory.
            _warn_backward_fallback(a, b)
            grads = _recompute_grads(flat.long(), grad_out.shape[1], [a, b], grad_out)
            return None, None, *grads
        grad_a, grad_b = tt2_backward(flat, a, b, grad_out)
        return None, None, grad_a, grad_b


def _recompute_grads(ids, d_model, cores, grad_out):
    """The cores' gradients by autograd through the reference lookup (recomputed here)."""
    with torch.enable_grad():
        leaves = [c.detach().requires_grad_(True) for c in cores]
        out = tt_lookup_reference(leaves, ids, d_model).reshape(grad_out.shape)
        return torch.autograd.grad(out, leaves, grad_out)


_WARNED: set = set()


def _warn_backward_fallback(a, b):
    key = (tuple(a.shape), tuple(b.shape))
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(f"TT cores {tuple(a.shape)} x {tuple(b.shape)}: the fused Triton backward needs more "
                      "shared memory than this GPU has; using the PyTorch backward (same gradients, slower)",
                      RuntimeWarning, stacklevel=3)


KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what the Triton lookup accepts


def tt_lookup(cores: list[torch.Tensor], ids: torch.Tensor, d_model: int, backend: str = "auto") -> torch.Tensor:
    """Rows ``(*ids.shape, d_model)`` of the TT with these cores (shapes ``(v_k, r_{k-1}, d_k, r_k)``)."""
    kernel_ok = len(cores) == 2 and cores[0].dtype in KERNEL_DTYPES and cores[1].dtype in KERNEL_DTYPES
    if backend == "auto" and not kernel_ok:
        backend = "torch"
    backend = resolve_backend(backend, *cores, ids)
    if backend == "triton":
        if not kernel_ok:
            raise ValueError(f"the Triton TT lookup handles 2 cores in {KERNEL_DTYPES}; got {len(cores)} cores "
                             f"of {cores[0].dtype}: use backend='torch'")
        return _TritonLookup.apply(ids, d_model, *cores)
    return _RecomputeLookup.apply(ids.long(), d_model, *cores)
