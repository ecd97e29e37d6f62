"""Which implementation runs a kernel: Triton (GPU, or the CPU interpreter) or plain PyTorch.

Every Triton kernel in labkit has a PyTorch fallback. The rule is the same for all:

* ``LABKIT_BACKEND=torch`` forces the PyTorch path everywhere (useful to compare);
* CUDA tensors use Triton when the ``triton`` package imports;
* CPU tensors use Triton only under ``TRITON_INTERPRET=1`` (Triton's interpreter,
  slow, meant for tests at small sizes); otherwise they take the PyTorch path.
"""
from __future__ import annotations

import functools
import os

import torch


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install raising something else
        return False
    return True


def interpret_mode() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(*tensors: torch.Tensor) -> bool:
    """Whether the Triton kernel should handle these tensors (see module docstring)."""
    if os.environ.get("LABKIT_BACKEND", "auto") == "torch" or not triton_available():
        return False
    devices = {t.device.type for t in tensors}
    if devices == {"cuda"}:
        return True
    return devices == {"cpu"} and interpret_mode()


def resolve_backend(backend: str, *tensors: torch.Tensor) -> str:
    """Turn ``"auto"`` into ``"triton"`` or ``"torch"``; validate explicit choices."""
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    if backend == "auto":
        return "triton" if use_triton(*tensors) else "torch"
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' but the triton package does not import; use backend='torch'")
        devices = {t.device.type for t in tensors}
        if devices != {"cuda"} and not (devices == {"cpu"} and interpret_mode()):
            raise RuntimeError(
                f"backend='triton' needs CUDA tensors (got {sorted(devices)}); on CPU set TRITON_INTERPRET=1 "
                "before importing triton, or use backend='torch'"
            )
    return backend
