"""labkit: the kernels and models behind the labkit book of executable tutorials.

One subpackage per chapter (``labkit.kan``, ...), plus shared modules:
``labkit.profile`` (experiment sizes), ``labkit.data`` (datasets), ``labkit.bench``
(benchmark harness) and ``labkit.backend`` (Triton or PyTorch).
"""
from labkit.profile import PROFILES, Profile, profile, start

__version__ = "0.1.0"

__all__ = ["PROFILES", "Profile", "profile", "start", "__version__"]
