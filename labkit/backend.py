"""Which implementation runs a kernel: Triton (GPU, or the CPU interpreter) or plain PyTorch.

Every Triton kernel in labkit has a PyTorch fallback. The rule is the same for all:

* ``LABKIT_BACKEND=torch`` forces the PyTorch path everywhere (useful to compare);
* CUDA tensors use Triton when the ``triton`` package imports;
* CPU tensors use Triton only under ``TRITON_INTERPRET=1`` (Triton's interpreter,
  slow, meant for tests at small sizes); otherwise they take the PyTorch path.
"""
from __future__ import annotations

import contextlib
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


def tuning_bucket(n: int) -> int:
    """The power of two at or above ``n`` (1 for ``n <= 1``): the autotuning key of a size that varies.

    Kernels pass it as an extra argument that only keys the autotuner, so that a loop meeting
    several sizes (batches, a last partial batch, evaluation) tunes once per bucket, not per size.
    """
    return 1 << (max(int(n), 1) - 1).bit_length()


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


def patch_triton_interpreter() -> None:
    """Work around triton-lang/triton#9171: Triton 3.6's interpreter under NumPy >= 2.4.

    The interpreter holds every scalar as a NumPy array of shape (1,) and turns it into a
    Python int with ``int(array)``, which NumPy 2.4 rejects ("only 0-dimensional arrays can
    be converted"); every ``range(0, n, BLOCK)`` over a runtime ``n`` then fails. We
    re-register ``__index__`` through an explicit element read. Idempotent; the kernel
    modules call it at import under ``TRITON_INTERPRET=1`` and it is harmless once Triton
    ships the fix.
    """
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "labkit_scalar_index", False):
        return

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patch_lang_tensor.labkit_scalar_index = True
    interpreter._patch_lang_tensor = patch_lang_tensor


def cublas_allows_tf32() -> bool:
    """Whether PyTorch lets cuBLAS run fp32 matmuls in TF32, whichever of its two APIs set it.

    ``torch.backends.cuda.matmul.allow_tf32`` (legacy) raises once the newer
    ``torch.backends.cuda.matmul.fp32_precision`` has been set; then that one is read.
    """
    matmul = torch.backends.cuda.matmul
    try:
        return bool(matmul.allow_tf32)
    except RuntimeError:
        return matmul.fp32_precision == "tf32"


@contextlib.contextmanager
def cublas_tf32():
    """Let cuBLAS use TF32 for fp32 matmuls inside the block, then restore the user's setting
    through the same API it was read from (mixing the two APIs makes PyTorch raise)."""
    matmul = torch.backends.cuda.matmul
    try:
        previous, name = matmul.allow_tf32, "allow_tf32"
        matmul.allow_tf32 = True
    except RuntimeError:
        previous, name = matmul.fp32_precision, "fp32_precision"
        matmul.fp32_precision = "tf32"
    try:
        yield
    finally:
        setattr(matmul, name, previous)
