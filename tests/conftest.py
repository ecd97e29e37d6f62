"""Test-session setup shared by every test file.

Triton kernels run on CPU tensors in Triton's interpreter. The interpreter is chosen when
``triton`` is imported, so ``TRITON_INTERPRET`` must be set before anything imports it.
On a machine with CUDA the kernels are tested on the GPU instead (leave the variable unset).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
