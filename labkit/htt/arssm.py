"""AR-SSM: an adaptive-rank semiseparable state-space layer with learnable on/off rank channels.

For an input ``x`` of shape ``(B, L, d)`` and ``r = max_rank`` channels, channel ``k`` reads

    u_t = x_t . U_k,   v_t = x_t . V_k,   a_t = sigmoid(x_t . A_k + c_k)      (a_t in (0, 1))
    h_t = a_t h_{t-1} + (1 - a_t) u_t                                        (h_0 = 0)

and the layer returns

    y_t = DWConv_3(x)_t + sum_k W_o[:, k] g_k v_t h_t

with ``DWConv_3`` a depthwise causal convolution over the last 3 positions and ``g_k`` the gate
of channel ``k``. Unrolled, channel ``k`` mixes the sequence with the lower-triangular matrix

    M_k[t, s] = v_t (prod_{j=s+1..t} a_j) (1 - a_s) u_s          (s <= t),

a 1-semiseparable matrix (every block below the diagonal has rank 1): this is the scalar-decay
state-space form of Mamba-2's SSD, one state per channel, ``r`` channels. The recurrence over
time runs through :func:`labkit.htt.scan.linear_scan` (in float32, whatever the input dtype).

Differences from the seed's layer, and why:

* **A decay.** The seed computed ``cumsum_t(u_t)`` (``a_t = 1``): nothing is ever forgotten and
  the state grows with the sequence length. Here ``a_t`` is input-dependent and in ``(0, 1)``;
  the biases start the decays between 0.9 and 0.99 (memories of about 10 to 100 tokens).
* **``(1 - a_t) u_t`` rather than ``u_t``.** The state is then a weighted average of past
  ``u``'s (the weights ``(1 - a_s) prod a_j`` are non-negative and sum to at most 1), so
  ``|h_t| <= max_s |u_s|`` for every length, every input, and even when ``a_t`` rounds to 1 in
  float32. With plain ``u_t`` the bound is ``max |u| / (1 - max a)``, unbounded as ``a -> 1``.
* **Static per-channel gates, applied once.** The gate of channel ``k`` is one learned logit,
  not a function of the token (the seed used ``sigmoid(MLP(x_t))``, multiplying both ``u`` and
  ``v``, so ``g^2``). A channel that is off is off for every input, so at inference its rows of
  ``U, V, A`` and its column of ``W_o`` are dropped and never computed
  (:meth:`AdaptiveRankSemiseparableLayer.active_ranks`); a per-token gate could save nothing,
  because some token of a batch would always need the channel. The seed computed all channels
  always, so its gate saved no compute. Since the recurrence is linear in ``u``, gating the
  output ``g v h`` is the same as gating ``u``.
* **Gate modes** (:meth:`~AdaptiveRankSemiseparableLayer.set_gate_mode`), each with a gradient
  into the logits:

  - ``"soft"``: ``g = sigmoid(logit)``, continuous; nothing is ever exactly off, so nothing is
    pruned.
  - ``"ste"``: forward ``g = 1[logit > 0]``, backward the gradient of ``sigmoid(logit)``
    (the straight-through estimator).
  - ``"gumbel"``: the Binary Concrete relaxation with a straight-through hard sample. Logistic
    noise ``n = log U - log(1 - U)`` is added to the logit; forward ``g = 1[logit + n > 0]``,
    backward the gradient of ``sigmoid((logit + n) / temperature)``. ``P(g = 1) = sigmoid(logit)``
    exactly (the logistic CDF), so the forward sample is an unbiased Bernoulli draw (at
    ``p = 0.5`` it is on half the time); the gradient is the usual straight-through one, biased
    but low-variance, and the temperature only shapes it. The seed added a single Gumbel sample
    ``-log(-log U)`` instead of a difference of two (a logistic), which switches a ``p = 0.5``
    gate on ``1 - 1/e = 63.2%`` of the time, and it never hardened the gate
    (:func:`seed_gumbel_gate` reproduces it for comparison). One noise sample is drawn per
    sequence and channel and held over the sequence.

  In ``"ste"`` and ``"gumbel"`` mode the gates are hard at evaluation (``logit > 0``, the
  most likely value), and in eval mode the layer computes only the channels that are on. In
  training every channel is computed, switched-off ones included: the gradient into an off gate's
  logit needs that channel's output.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from labkit.htt.scan import linear_scan

GATE_MODES = ("soft", "ste", "gumbel")


# --------------------------------------------------------------------------------------- gates
def logistic_noise(shape, *, device=None, dtype=torch.float32,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Samples of the standard logistic distribution, ``log U - log(1 - U)`` with ``U ~ Uniform(0, 1)``.

    (The difference of two independent standard Gumbel samples has this distribution.)
    """
    u = torch.rand(shape, device=device, dtype=dtype, generator=generator)
    u = u.clamp(torch.finfo(dtype).tiny, 1 - torch.finfo(dtype).eps)  # keep both logs finite
    return torch.log(u) - torch.log1p(-u)


def _check_mode(mode: str, temperature: float) -> None:
    if mode not in GATE_MODES:
        raise ValueError(f"gate mode must be one of {GATE_MODES}, got {mode!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"gumbel_temperature must be a positive finite number, got {temperature!r}")


def binary_gate(logits: torch.Tensor, mode: str, temperature: float = 1.0, *, training: bool = True,
                noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gate values for gate logits (see the module docstring for the modes).

    In training, ``"soft"`` gives ``sigmoid(logits)``, ``"ste"`` a hard 0/1 forward with the
    sigmoid's gradient, ``"gumbel"`` a hard Bernoulli(``sigmoid(logits)``) sample with the
    relaxed sample's gradient (``noise``: logistic samples of ``logits``' shape, drawn here if not
    given). With ``training=False`` the hard modes return the deterministic ``1[logits > 0]``.
    The forward value of a hard gate is exactly 0 or 1.
    """
    _check_mode(mode, temperature)
    if mode == "soft":
        return torch.sigmoid(logits)
    hard = (logits > 0).to(logits.dtype)
    if not training:
        return hard
    if mode == "ste":
        soft = torch.sigmoid(logits)
        return hard + (soft - soft.detach())  # exactly `hard` forward, sigmoid's gradient backward
    if noise is None:
        noise = logistic_noise(logits.shape, device=logits.device, dtype=logits.dtype, generator=generator)
    relaxed = torch.sigmoid((logits + noise) / temperature)
    hard = (logits + noise > 0).to(logits.dtype)  # = (relaxed > 0.5), without rounding at the edge
    return hard + (relaxed - relaxed.detach())


@torch.no_grad()
def gate_samples(logits: torch.Tensor, mode: str = "gumbel", temperature: float = 1.0, n: int = 10_000,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` forward values of the training-mode gate, shape ``(n, *logits.shape)``.

    For the notebook's estimator-bias plot: ``gate_samples(l, "gumbel").mean(0)`` estimates
    ``P(gate = 1)``, which equals ``sigmoid(l)``. (``"soft"`` and ``"ste"`` are deterministic: every
    row is the same.)
    """
    logits = torch.as_tensor(logits, dtype=torch.float32)
    noise = logistic_noise((n, *logits.shape), dtype=logits.dtype, generator=generator) if mode == "gumbel" else None
    return binary_gate(logits.expand(n, *logits.shape), mode, temperature, training=True, noise=noise)


@torch.no_grad()
def seed_gumbel_gate(logits: torch.Tensor, temperature: float = 1.0, n: int = 10_000,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """THE SEED'S (WRONG) GUMBEL GATE, for comparison only: ``sigmoid((logits + G) / temperature)``.

    ``G = -log(-log U)`` is one standard Gumbel sample. A binary relaxation needs the difference
    of two (a logistic sample), so this gate is biased towards "on": at ``logits = 0``
    ``P(gate > 0.5) = P(G > 0) = 1 - 1/e = 0.632`` instead of 0.5. It is never hardened either;
    the values are relaxed numbers in (0, 1). Shape ``(n, *logits.shape)``.
    """
    logits = torch.as_tensor(logits, dtype=torch.float32)
    u = torch.rand((n, *logits.shape), generator=generator).clamp(torch.finfo(torch.float32).tiny,
                                                                   1 - torch.finfo(torch.float32).eps)
    gumbel = -torch.log(-torch.log(u))
    return torch.sigmoid((logits + gumbel) / temperature)


# --------------------------------------------------------------------------------------- the layer
class AdaptiveRankSemiseparableLayer(nn.Module):
    """A gated linear recurrence with ``max_rank`` switchable channels; ``(B, L, d) -> (B, L, d)``, causal.

    Args:
        d_model: width of the input and the output.
        max_rank: the number of state channels ``r`` (the rank of the semiseparable mixer).
        conv_kernel: width of the depthwise causal convolution (the seed's 3).
        decay_range: the decays at initialisation run from ``decay_range[0]`` to
            ``decay_range[1]`` over the channels (geometrically in the memory length
            ``1 / (1 - a)``), before the input-dependent part.
        gate_init: initial gate logit of every channel (3.0: ``sigmoid = 0.95``, all on).
        gate_mode, gumbel_temperature: see :meth:`set_gate_mode`.
    """

    def __init__(self, d_model: int, max_rank: int, *, conv_kernel: int = 3,
                 decay_range: tuple[float, float] = (0.9, 0.99), gate_init: float = 3.0,
                 gate_mode: str = "soft", gumbel_temperature: float = 1.0):
        super().__init__()
        for name, value in (("d_model", d_model), ("max_rank", max_rank), ("conv_kernel", conv_kernel)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        lo, hi = decay_range
        if not 0 < lo <= hi < 1:
            raise ValueError(f"decay_range must satisfy 0 < low <= high < 1, got {decay_range!r}")
        self.d_model, self.max_rank, self.conv_kernel = d_model, max_rank, conv_kernel
        self.decay_range, self.gate_init = (float(lo), float(hi)), float(gate_init)
        self.u_proj = nn.Linear(d_model, max_rank, bias=False)      # U
        self.v_proj = nn.Linear(d_model, max_rank, bias=False)      # V
        self.decay_proj = nn.Linear(d_model, max_rank)              # A and c: a = sigmoid(x A + c)
        self.out_proj = nn.Linear(max_rank, d_model, bias=False)    # W_o
        self.conv = nn.Conv1d(d_model, d_model, conv_kernel, groups=d_model)
        self.gate_logits = nn.Parameter(torch.empty(max_rank))
        self.reset_parameters()
        self.set_gate_mode(gate_mode, gumbel_temperature)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        d, r = self.d_model, self.max_rank
        nn.init.normal_(self.u_proj.weight, std=d ** -0.5)   # unit-variance u, v for unit-variance x
        nn.init.normal_(self.v_proj.weight, std=d ** -0.5)
        # The input-dependent part of the decay logit starts small (std 0.1 for unit-variance x):
        # the decays start near the biases' values.
        nn.init.normal_(self.decay_proj.weight, std=0.1 * d ** -0.5)
        lo, hi = self.decay_range
        memory = torch.logspace(math.log10(1 / (1 - lo)), math.log10(1 / (1 - hi)), r, dtype=torch.float64)
        self.decay_proj.bias.copy_(torch.logit(1 - 1 / memory).to(self.decay_proj.bias.dtype))
        nn.init.normal_(self.out_proj.weight, std=r ** -0.5)
        self.conv.reset_parameters()
        self.gate_logits.fill_(self.gate_init)

    # ------------------------------------------------------------------ gates
    def set_gate_mode(self, mode: str, gumbel_temperature: float | None = None) -> "AdaptiveRankSemiseparableLayer":
        """``"soft"``, ``"ste"`` or ``"gumbel"``; ``gumbel_temperature`` (kept if None) shapes the
        Gumbel mode's gradient. Returns the layer."""
        temperature = self.__dict__.get("gumbel_temperature", 1.0) if gumbel_temperature is None else gumbel_temperature
        _check_mode(mode, temperature)
        self.gate_mode, self.gumbel_temperature = mode, float(temperature)
        return self

    def gates(self, batch: int | None = None) -> torch.Tensor:
        """The gates this forward pass uses: ``(r,)``, or ``(batch, 1, r)`` for a training-mode
        Gumbel sample (one draw per sequence and channel)."""
        logits = self.gate_logits
        if self.training and self.gate_mode == "gumbel" and batch is not None:
            logits = logits.expand(batch, 1, self.max_rank)
        return binary_gate(logits, self.gate_mode, self.gumbel_temperature, training=self.training)

    @torch.no_grad()
    def gate_values(self) -> torch.Tensor:
        """The deterministic (evaluation) gates: ``sigmoid(logit)`` for ``"soft"``, ``1[logit > 0]`` otherwise."""
        return binary_gate(self.gate_logits, self.gate_mode, self.gumbel_temperature, training=False)

    @torch.no_grad()
    def active_ranks(self) -> torch.Tensor:
        """Indices of the channels whose evaluation gate is not zero (all of them in ``"soft"`` mode)."""
        return torch.nonzero(self.gate_values() != 0).flatten()

    def expected_rank(self) -> torch.Tensor:
        """``sum_k sigmoid(logit_k)``: the expected number of channels on; differentiable, a sparsity
        penalty (the seed's L1 on the gates)."""
        return torch.sigmoid(self.gate_logits).sum()

    def num_active_parameters(self) -> int:
        """Parameters an evaluation forward pass reads (off channels' rows and columns excluded in
        the hard modes; the gate logits themselves not counted)."""
        k = self.max_rank if self.gate_mode == "soft" else int(self.active_ranks().numel())
        return sum(p.numel() for p in self.conv.parameters()) + k * (4 * self.d_model + 1)

    # ------------------------------------------------------------------ computation
    def _local(self, x: torch.Tensor) -> torch.Tensor:
        """Depthwise causal convolution: position ``t`` sees ``t - kernel + 1 .. t``."""
        xt = F.pad(x.transpose(1, 2), (self.conv_kernel - 1, 0))
        return F.conv1d(xt, self.conv.weight, self.conv.bias, groups=self.d_model).transpose(1, 2)

    @staticmethod
    def _recurrence(z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``h`` (B, L, k) from decay logits ``z`` and inputs ``u`` (both (B, L, k)), in float32 at least."""
        dtype = torch.promote_types(z.dtype, torch.float32)
        z = z.to(dtype)
        a = torch.sigmoid(z)
        b = torch.sigmoid(-z) * u.to(dtype)  # (1 - a) u, with 1 - a computed without cancellation
        h = linear_scan(a.transpose(1, 2).contiguous(), b.transpose(1, 2).contiguous())  # scans the last dim
        return h.transpose(1, 2).to(u.dtype)

    def _weights(self, idx: torch.Tensor | None):
        if idx is None:
            return (self.u_proj.weight, self.v_proj.weight, self.decay_proj.weight, self.decay_proj.bias,
                    self.out_proj.weight)
        return (self.u_proj.weight[idx], self.v_proj.weight[idx], self.decay_proj.weight[idx],
                self.decay_proj.bias[idx], self.out_proj.weight[:, idx])

    def states(self, x: torch.Tensor) -> torch.Tensor:
        """The states ``h`` (B, L, r) of every channel for input ``x`` (ungated)."""
        self._check(x)
        return self._recurrence(self.decay_proj(x), self.u_proj(x))

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"expected input (batch, length, {self.d_model}), got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor, prune: bool | None = None) -> torch.Tensor:
        """``y`` (B, L, d). ``prune`` (default: in eval mode with hard gates) computes only the
        channels that are on; ``prune=False`` computes all of them and multiplies by the gates."""
        self._check(x)
        if prune is None:
            prune = not self.training and self.gate_mode != "soft"
        if prune and self.gate_mode == "soft":
            raise ValueError("pruning needs hard gates: set_gate_mode('ste') or 'gumbel' first")
        if prune and self.training:
            raise ValueError("pruning is for evaluation: the gradient of an off gate needs its channel; call .eval()")
        y = self._local(x)
        if prune:
            idx = self.active_ranks()
            if idx.numel() == 0:
                return y
            if idx.numel() == self.max_rank:
                idx = None  # no slicing needed
            gates = None   # the gates of the channels kept are exactly 1
        else:
            idx, gates = None, self.gates(batch=x.shape[0])
        wu, wv, wa, ca, wo = self._weights(idx)
        h = self._recurrence(F.linear(x, wa, ca), F.linear(x, wu))
        mixed = F.linear(x, wv) * h
        if gates is not None:
            mixed = mixed * gates.to(mixed.dtype)
        return y + F.linear(mixed, wo)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, max_rank={self.max_rank}, conv_kernel={self.conv_kernel}, "
                f"gate_mode={self.gate_mode!r}, gumbel_temperature={self.gumbel_temperature}")


__all__ = ["AdaptiveRankSemiseparableLayer", "GATE_MODES", "binary_gate", "gate_samples", "logistic_noise",
           "seed_gumbel_gate"]
