"""Chapter 3: CSOS, an MNIST classifier built from chemical-reaction dynamics on the simplex.

* :mod:`labkit.csos.model`: the ``CSOS`` module (full or CP-rank ``W``, trajectories, continuous time);
* :mod:`labkit.csos.train`: the training loop (Adam, ``nll_loss``, checkpoints, resume) and its CLI;
* :mod:`labkit.csos.analysis`: simplex checks, entropy, early readout, flux, stability sweeps, baselines;
* :mod:`labkit.csos.plots`: the chapter's matplotlib figures.
"""
from labkit.csos import analysis, train
from labkit.csos.model import CSOS
from labkit.csos.train import History, TrainConfig, evaluate, fit, fit_seeds, load_mnist

__all__ = ["CSOS", "History", "TrainConfig", "analysis", "evaluate", "fit", "fit_seeds", "load_mnist", "train"]
