"""Chapter 4: score-based data assimilation on 2-D Kolmogorov flow.

* :mod:`labkit.sda.flow`: :class:`KolmogorovFlow`, the batched pseudo-spectral solver;
* :mod:`labkit.sda.data`: the data set (``python -m labkit.sda.generate``), :class:`TrajectoryDataset`;
* :mod:`labkit.sda.stats`: flow statistics and the original data's reference values;
* :mod:`labkit.sda.plots`: the chapter's figures; :mod:`labkit.sda.bench`: benchmark suites ``flow``, ``flow-cpu``;
* :mod:`labkit.sda.jaxcfd`: the cross-check against jax-cfd (optional extra ``jaxcfd``);
* :mod:`labkit.sda.score`: the noise schedules (:class:`VPSDE`), the sampler, likelihood guidance;
* :mod:`labkit.sda.gaussian`: a Gaussian process over whole trajectories (the data's mean, spectrum and
  time correlation) and the hand-off from it to the network at a noise level;
* :mod:`labkit.sda.nn`: the score networks (:class:`ScoreUNet`, :class:`MCScoreNet`, :func:`make_score`).
"""
from labkit.sda.data import DatasetSpec, TrajectoryDataset, generate, read_split
from labkit.sda.flow import KolmogorovFlow
from labkit.sda.nn import LocalScoreUNet, MCScoreNet, ScoreUNet, make_score
from labkit.sda.score import VPSDE, DPSGaussianScore, GaussianScore

__all__ = ["KolmogorovFlow", "DatasetSpec", "TrajectoryDataset", "generate", "read_split", "VPSDE",
           "GaussianScore", "DPSGaussianScore", "ScoreUNet", "LocalScoreUNet", "MCScoreNet", "make_score"]
