"""Chapter 1: Kolmogorov-Arnold networks.

* :mod:`labkit.kan.reference`: plain-PyTorch formulas of both layers (the kernels' specification);
* :mod:`labkit.kan.layers`: ``KANLinear``, ``KAN`` and ``ChebyKANLayer`` modules;
* :mod:`labkit.kan.ops`: functional entry points choosing Triton or PyTorch;
* :mod:`labkit.kan.triton_bspline`, :mod:`labkit.kan.triton_chebyshev`: the fused kernels;
* :mod:`labkit.kan.fitting`: the KAN paper's function-fitting experiments;
* :mod:`labkit.kan.bench`: the ``kan`` benchmark suite.
"""
from labkit.kan import fitting, ops, reference
from labkit.kan.layers import KAN, ChebyKANLayer, KANLinear

__all__ = ["KAN", "ChebyKANLayer", "KANLinear", "fitting", "ops", "reference"]
