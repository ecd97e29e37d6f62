"""What an embedding costs in memory during training, component by component.

For one training step of an embedding alone (lookup, backward from a given output gradient,
optimizer step) we count

* ``params``: the parameters' bytes;
* ``grads``: the gradients' bytes after backward (a sparse gradient counts its values and
  indices);
* ``optimizer``: the optimizer's state (Adam: two moments per parameter; ``SparseAdam`` keeps
  them dense, the size of the table);
* ``activations``: the bytes autograd keeps between forward and backward, read with
  ``torch.autograd.graph.saved_tensors_hooks`` (each storage counted once);
* ``peak_step`` (CUDA only): the allocator's peak during a whole step, forward + backward +
  optimizer step, on top of what lives between steps (parameters, optimizer state, the ids and
  the incoming gradient), plus the parameters and optimizer state themselves. It includes the
  output and the workspaces, which no count above sees.

The **memory ratio** of a TT embedding is its ``footprint`` (params + grads + optimizer +
activations) divided by ``nn.Embedding``'s with a dense gradient and AdamW, at the same
vocabulary, width and tokens. The output (tokens x d_model) is left out of the footprint: every
embedding has to produce it, and the rest of the model owns it; ``peak_step`` keeps it in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


def tensor_bytes(t: torch.Tensor) -> int:
    if t.is_sparse:
        t = t.coalesce()
        return tensor_bytes(t.values()) + tensor_bytes(t.indices())
    return t.numel() * t.element_size()


def saved_activation_bytes(fn: Callable[[], object], exclude: nn.Module | None = None) -> tuple[int, object]:
    """Bytes autograd saves for backward while ``fn()`` runs, and ``fn()``'s result.

    Each storage counts once; storages of ``exclude``'s parameters (a weight kept for its own
    backward is a reference, not a copy) are left out.
    """
    skip = {p.untyped_storage().data_ptr() for p in exclude.parameters()} if exclude is not None else set()
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        if not t.is_sparse and t.untyped_storage().data_ptr() not in skip:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return sum(seen.values()), result


@dataclass
class MemoryReport:
    name: str
    tokens: int
    params: int
    grads: int
    optimizer: int
    activations: int
    peak_step: int | None = None
    output: int = 0

    @property
    def footprint(self) -> int:
        return self.params + self.grads + self.optimizer + self.activations

    def as_row(self) -> dict:
        mib = 2**20
        row = {"name": self.name, "tokens": self.tokens}
        for key in ("params", "grads", "optimizer", "activations"):
            row[f"{key}_mib"] = getattr(self, key) / mib
        row["footprint_mib"] = self.footprint / mib
        row["peak_step_mib"] = None if self.peak_step is None else self.peak_step / mib
        row["output_mib"] = self.output / mib
        return row


def measure_embedding(name: str, module: nn.Module, ids: torch.Tensor,
                      optimizer: Callable[[list], torch.optim.Optimizer] | None = None) -> MemoryReport:
    """Train ``module`` for two steps on ``ids`` and count its memory (see the module docstring).

    ``optimizer`` builds the optimizer from the parameter list (default AdamW; use
    ``torch.optim.SparseAdam`` for ``nn.Embedding(sparse=True)``).
    """
    device = ids.device
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{name}: the module has no trainable parameters to measure")
    opt = (optimizer or (lambda ps: torch.optim.AdamW(ps, lr=1e-3)))(params)
    with torch.no_grad():
        out_shape = module(ids).shape
    grad_out = torch.randn(out_shape, dtype=params[0].dtype).to(device)  # CPU RNG: no CUDA generator state involved

    def step():
        module(ids).backward(grad_out)
        opt.step()

    step()  # creates the optimizer state
    opt.zero_grad(set_to_none=True)

    activations, out = saved_activation_bytes(lambda: module(ids), exclude=module)
    out.backward(grad_out)
    grads = sum(tensor_bytes(p.grad) for p in params if p.grad is not None)
    output = tensor_bytes(out)
    del out
    opt.step()
    opt.zero_grad(set_to_none=True)
    param_bytes = sum(tensor_bytes(p) for p in params)
    state_bytes = sum(tensor_bytes(v) for s in opt.state.values() for v in s.values()
                      if isinstance(v, torch.Tensor) and v.dim() > 0)

    peak = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base + param_bytes + state_bytes
    return MemoryReport(name, ids.numel(), param_bytes, grads, state_bytes, activations, peak, output)


def memory_table(reports: list[MemoryReport], baseline: str) -> list[dict]:
    """Rows for a table: every report's components plus its ratio to the ``baseline`` report."""
    base = next((r for r in reports if r.name == baseline), None)
    if base is None:
        raise ValueError(f"baseline {baseline!r} is not among the reports: {[r.name for r in reports]}")
    rows = []
    for r in reports:
        row = r.as_row()
        row["footprint_ratio"] = r.footprint / base.footprint
        if r.peak_step is not None and base.peak_step is not None:
            row["peak_ratio"] = r.peak_step / base.peak_step
            row["peak_minus_output_ratio"] = (r.peak_step - r.output) / (base.peak_step - base.output)
        rows.append(row)
    return rows


__all__ = ["MemoryReport", "measure_embedding", "memory_table", "saved_activation_bytes", "tensor_bytes"]
