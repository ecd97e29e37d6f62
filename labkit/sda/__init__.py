"""Chapter 4a: score-based data assimilation on 2-D Kolmogorov flow.

``labkit.sda.flow`` holds the pseudo-spectral Navier-Stokes solver that generates the data
(:class:`KolmogorovFlow`).
"""
from labkit.sda.flow import KolmogorovFlow

__all__ = ["KolmogorovFlow"]
