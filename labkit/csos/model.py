"""CSOS: a classifier whose hidden layer is a chemical reaction network on the probability simplex.

An image becomes a *concentration vector* ``c`` over ``N`` molecule species (non-negative,
summing to one), a few rounds of second-order "reactions" transform it, and the concentrations
of species ``0..9`` are read as the probabilities of the ten digits::

    c0      = normalise(relu(encoder(x)))                               inject
    m       = (1 - decay) * c_t                                         dilute
    q_k     = sum_ij W[i, j, k] * m_i * m_j                             react
    c_{t+1} = normalise(relu(m + alpha * q))                            renormalise
    log p   = log(c_T[:, :10] + 1e-8)                                   read out

``normalise(v) = v / (sum(v) + 1e-8)``, so every ``c_t`` lies on the simplex (or is exactly
zero when the ReLU removed every species: a *collapsed* state).

**Index convention of W.** ``W[i, j, k]`` is the rate at which the pair of reactants
``(i, j)`` produces species ``k``: the first two indices are contracted with the state, the
last one is the product. This is what the design document's einsum ``'ijk,bi,bj->bk'`` does
(its prose writes ``W[k, i, j]``; the code is what counts, and this module follows the code).
So ``W[:, :, k]`` is the N x N "recipe" matrix of species ``k``. Only the part of ``W`` that is
symmetric in ``(i, j)`` affects the model, because ``m_i m_j = m_j m_i``.

**Low-rank W.** ``rank=R`` replaces the N^3 tensor by three factors ``A, B, C`` of shape
(N, R), ``W[i, j, k] = sum_r A[i, r] B[j, r] C[k, r]`` (a CP decomposition), so that
``q = ((m @ A) * (m @ B)) @ C.T`` costs O(N R) per sample instead of O(N^3).

**Decay and alpha are one knob.** ``q`` is quadratic in ``m``, so the pre-activation equals
``(1 - decay) * (c + alpha (1 - decay) q(c))`` and the renormalisation removes the leading
factor: the step depends on ``decay`` and ``alpha`` only through ``alpha * (1 - decay)``
(up to the 1e-8 guards). The tests check this.

**Continuous time.** Read ``c + h q(c)`` followed by renormalisation as one explicit Euler step
of length ``h`` of the flow ``dc/dt = q(c) - c * sum_k q_k(c)`` (what renormalising to the
simplex does to first order), with the ReLU keeping the state non-negative. With
``time_horizon=T`` each of the ``steps`` steps has ``h = T / steps``: then ``steps`` is only
the resolution of the integration, and more steps at inference refine the same trajectory
instead of running the reaction for longer.
"""
from __future__ import annotations

import math

import torch
from torch import nn

IMAGE_SIZE = 28 * 28
NUM_CLASSES = 10
EPS = 1e-8  # the design's guard in both the renormalisation and the log of the readout
SEED_INIT_STD = 0.05  # the design initialises W with randn * 0.05


def simplex_normalise(v: torch.Tensor) -> torch.Tensor:
    """Scale each row of a non-negative (B, N) tensor to sum to one; an all-zero row stays zero."""
    return v / (v.sum(dim=1, keepdim=True) + EPS)


def flatten_images(x: torch.Tensor, like: torch.Tensor, check_finite: bool = True) -> torch.Tensor:
    """Check an MNIST batch and return it as (B, 784).

    Accepts (B, 1, 28, 28) or (B, 784), floating point, on ``like``'s device and dtype, and finite
    when ``check_finite`` (that check reads the tensor back to the host: one sync on a GPU).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (B, 1, 28, 28) or (B, 784), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}; "
                        "convert it with x.float() (and scale uint8 pixels to [0, 1])")
    if not (x.dim() == 4 and tuple(x.shape[1:]) == (1, 28, 28)) and not (x.dim() == 2 and x.shape[1] == IMAGE_SIZE):
        raise ValueError(f"x must have shape (B, 1, 28, 28) or (B, 784), got {tuple(x.shape)}; "
                         "add the channel dimension with x.unsqueeze(1) or flatten with x.reshape(len(x), -1)")
    if x.device != like.device:
        raise ValueError(f"x is on {x.device} but the model is on {like.device}; "
                         f"use x.to('{like.device}') or model.to('{x.device}')")
    if x.dtype != like.dtype:
        raise TypeError(f"x has dtype {x.dtype} but the model's parameters are {like.dtype}; "
                        f"use x.to({like.dtype}) or model.to({x.dtype})")
    if check_finite and not torch.isfinite(x).all():
        raise ValueError("x contains NaN or inf; fix the values upstream")
    return x.reshape(x.shape[0], IMAGE_SIZE)


def cp_factor_std(init_std: float, rank: int) -> float:
    """Std of each CP factor so that the entries of ``W = sum_r A B C`` have std ``init_std``.

    Each entry is a sum of ``rank`` products of three independent N(0, s^2) numbers, whose
    variance is ``rank * s^6``.
    """
    return (init_std ** 2 / rank) ** (1 / 6)


class CSOS(nn.Module):
    """Chemical-reaction classifier for MNIST (see the module docstring for the equations).

    Args:
        num_basis: ``N``, the number of molecule species (at least 10: species 0..9 are the readout).
        steps: reaction steps applied after the injection (0 means: read the encoder directly).
        decay: dilution ``d`` in [0, 1) applied before each reaction (discrete mode only; default 0.5).
        alpha: reaction strength (discrete mode only; default 2.0). Only ``alpha * (1 - decay)``
            matters; the defaults give 1, the value chapter 3 trains at (the design gives no values).
        rank: ``None`` for the full (N, N, N) tensor ``W``; an integer R for CP factors (N, R) each.
        init_std: std of W's entries at initialisation (the design: 0.05). For a CP ``W`` the
            factors get the std that gives W's entries this std (:func:`cp_factor_std`).
        time_horizon: ``None`` for the design's discrete map; a float ``T`` for the continuous-time
            variant, where each step is ``c + (T / steps) q(c)`` (no decay, no alpha).

    ``forward(x)`` takes (B, 1, 28, 28) or (B, 784) images and returns (B, 10) log-probabilities
    (they sum to at most one: the other N - 10 species hold the rest of the mass).
    """

    def __init__(self, num_basis: int = 64, steps: int = 5, decay: float | None = None,
                 alpha: float | None = None, *, rank: int | None = None, init_std: float = SEED_INIT_STD,
                 time_horizon: float | None = None):
        super().__init__()
        if not isinstance(num_basis, int) or num_basis < NUM_CLASSES:
            raise ValueError(f"num_basis must be an int >= {NUM_CLASSES} (species 0..9 are the readout), "
                             f"got {num_basis!r}")
        if rank is not None and (not isinstance(rank, int) or rank < 1):
            raise ValueError(f"rank must be None (full W) or a positive int, got {rank!r}")
        if not (isinstance(init_std, (int, float)) and math.isfinite(init_std) and init_std > 0):
            raise ValueError(f"init_std must be a positive finite number, got {init_std!r}")
        if time_horizon is None:
            decay, alpha = 0.5 if decay is None else decay, 2.0 if alpha is None else alpha
        else:
            if decay is not None or alpha is not None:
                raise ValueError("with time_horizon set, leave decay and alpha unset: each step is "
                                 "c + (time_horizon / steps) * q(c)")
            if not (isinstance(time_horizon, (int, float)) and math.isfinite(time_horizon) and time_horizon > 0):
                raise ValueError(f"time_horizon must be a positive finite number or None, got {time_horizon!r}")
        self.num_basis, self.rank, self.init_std, self.time_horizon = num_basis, rank, float(init_std), time_horizon
        self.check_inputs = True  # the finiteness check of forward(); the training loop checks once instead
        self.steps, self.decay, self.alpha = self._check_dynamics(steps, decay, alpha)

        self.encoder = nn.Linear(IMAGE_SIZE, num_basis)
        if rank is None:
            self.W = nn.Parameter(torch.randn(num_basis, num_basis, num_basis) * init_std)
        else:
            std = cp_factor_std(init_std, rank)
            self.A = nn.Parameter(torch.randn(num_basis, rank) * std)  # first reactant i
            self.B = nn.Parameter(torch.randn(num_basis, rank) * std)  # second reactant j
            self.C = nn.Parameter(torch.randn(num_basis, rank) * std)  # product k

    # ------------------------------------------------------------------ configuration
    def _check_dynamics(self, steps, decay, alpha) -> tuple[int, float | None, float | None]:
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise ValueError(f"steps must be an int >= 0, got {steps!r}")
        if self.time_horizon is not None:
            return steps, None, None
        if not (isinstance(decay, (int, float)) and 0 <= decay < 1):
            raise ValueError(f"decay must be a number in [0, 1), got {decay!r}")
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha)):
            raise ValueError(f"alpha must be a finite number, got {alpha!r}")
        return steps, float(decay), float(alpha)

    def config(self) -> dict:
        """The constructor arguments, enough to rebuild the model (checkpoints store them)."""
        return dict(num_basis=self.num_basis, steps=self.steps, decay=self.decay, alpha=self.alpha,
                    rank=self.rank, init_std=self.init_std, time_horizon=self.time_horizon)

    def extra_repr(self) -> str:
        dyn = (f"time_horizon={self.time_horizon}" if self.time_horizon is not None
               else f"decay={self.decay}, alpha={self.alpha}")
        return f"num_basis={self.num_basis}, steps={self.steps}, {dyn}, rank={self.rank}"

    def interaction_parameter_count(self) -> int:
        """Numbers in W: N^3 for the full tensor, 3 N R for CP factors."""
        return self.num_basis ** 3 if self.rank is None else 3 * self.num_basis * self.rank

    # ------------------------------------------------------------------ the three phases
    def interaction_tensor(self) -> torch.Tensor:
        """W as a dense (N, N, N) tensor indexed [reactant i, reactant j, product k] (built from factors if CP)."""
        if self.rank is None:
            return self.W
        return torch.einsum("ir,jr,kr->ijk", self.A, self.B, self.C)

    def interaction(self, m: torch.Tensor) -> torch.Tensor:
        """q_k = sum_ij W[i, j, k] m_i m_j for a (B, N) state; returns (B, N)."""
        if self.rank is not None:
            return ((m @ self.A) * (m @ self.B)) @ self.C.T
        n = self.num_basis
        pairs = (m[:, :, None] * m[:, None, :]).reshape(-1, n * n)  # (B, N*N): all products m_i m_j
        return pairs @ self.W.reshape(n * n, n)

    def inject(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> initial concentrations c0 (B, N) on the simplex."""
        x = flatten_images(x, like=self.encoder.weight, check_finite=self.check_inputs)
        return simplex_normalise(torch.relu(self.encoder(x)))

    def step_coefficients(self, steps: int, decay: float | None, alpha: float | None) -> tuple[float, float]:
        """(decay, alpha) of one step; in continuous mode (0, time_horizon / steps)."""
        if self.time_horizon is not None:
            return 0.0, self.time_horizon / max(steps, 1)
        return decay, alpha

    def react(self, c: torch.Tensor, decay: float, alpha: float) -> torch.Tensor:
        """One reaction step c_t -> c_{t+1}, both (B, N)."""
        mixed = (1 - decay) * c
        return simplex_normalise(torch.relu(mixed + alpha * self.interaction(mixed)))

    @staticmethod
    def readout(c: torch.Tensor) -> torch.Tensor:
        """Concentrations (B, N) -> log-probabilities of the ten digits (B, 10), as ``nll_loss`` wants."""
        return torch.log(c[:, :NUM_CLASSES] + EPS)

    def forward(self, x: torch.Tensor, *, steps: int | None = None, decay: float | None = None,
                alpha: float | None = None, return_trajectory: bool = False):
        """Classify images; ``steps``/``decay``/``alpha`` override the model's values for this call.

        Returns (B, 10) log-probabilities, or ``(log_probs, trajectory)`` with ``trajectory`` of
        shape (steps + 1, B, N): c0 (after injection) followed by the state after each step.
        """
        if self.time_horizon is not None and (decay is not None or alpha is not None):
            raise ValueError("this model is continuous-time (time_horizon set): override steps only")
        steps, decay, alpha = self._check_dynamics(
            self.steps if steps is None else steps,
            self.decay if decay is None else decay,
            self.alpha if alpha is None else alpha)
        step_decay, step_alpha = self.step_coefficients(steps, decay, alpha)
        c = self.inject(x)
        states = [c]
        for _ in range(steps):
            c = self.react(c, step_decay, step_alpha)
            if return_trajectory:
                states.append(c)
        log_probs = self.readout(c)
        return (log_probs, torch.stack(states)) if return_trajectory else log_probs
