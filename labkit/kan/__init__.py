"""Chapter 1: Kolmogorov-Arnold networks.

* :mod:`labkit.kan.reference`: plain-PyTorch formulas of both layers (the kernels' specification);
* :mod:`labkit.kan.layers`: ``KANLinear``, ``KAN`` and ``ChebyKANLayer`` modules;
* :mod:`labkit.kan.ops`: functional entry points choosing Triton or PyTorch, and which Triton
  path (``path="auto"``: by the layer's size);
* :mod:`labkit.kan.triton_bspline`, :mod:`labkit.kan.triton_chebyshev`: the fused kernels;
* :mod:`labkit.kan.gemm_bspline`, :mod:`labkit.kan.gemm_chebyshev` (with
  :mod:`labkit.kan.split_gemm`): the split-GEMM path, feature kernels around cuBLAS;
* :mod:`labkit.kan.fitting`: the KAN paper's function-fitting experiments;
* :mod:`labkit.kan.checks`: accuracy of the kernels against the float64 reference;
* :mod:`labkit.kan.bench`: the ``kan`` benchmark suite and its plots.
"""
from labkit.kan import checks, fitting, ops, reference
from labkit.kan.layers import KAN, ChebyKANLayer, KANLinear

__all__ = ["KAN", "ChebyKANLayer", "KANLinear", "checks", "fitting", "ops", "reference"]
