"""Tensor-train (TT) embeddings: the table as a chain of small cores.

An embedding table ``E`` of shape ``(V, D)`` is stored as ``c`` cores. The vocabulary and the
model dimension are factorised into modes, ``V <= v_1 ... v_c`` and ``D <= d_1 ... d_c``, and
core ``k`` has shape ``(v_k, r_{k-1}, d_k, r_k)`` with ``r_0 = r_c = 1`` and the inner ranks
``r``. Token ``t`` is written in mixed radix, ``t = (i_1, ..., i_c)`` with ``i_1`` the most
significant digit, and its row, viewed as a ``d_1 x ... x d_c`` array, is the product

    E[t] = core_1[i_1] @ core_2[i_2] @ ... @ core_c[i_c]     (contracting the rank axes)

flattened (``j_1`` most significant) and cropped to ``D``. Rows past ``V`` (padding of the
vocabulary when it does not factor) are never looked up.

Two cores with rank ``r`` is a rank-``r`` factorisation of ``E`` reshaped to
``(v_1 d_1) x (v_2 d_2)``: every token's ``d_1 x d_2`` block has rank at most ``r``, and the
``v_2`` consecutive ids that share ``i_1`` share their left factor.

"Holographic" (the seed's word) is a per-rank phase ``theta``:

* ``phase="cos"`` (the seed's Phase 1) multiplies core 1 by ``cos(theta_r)`` on its rank axis.
  That is a real scale core 1 can absorb: the same set of functions, a different
  parametrisation (:meth:`HolographicTTEmbedding.absorb_phase` shows it, to the last bit).
* ``phase="complex"``: every core is complex and the row is the real part of the product.
  A genuinely different model, with twice the parameters of the real TT at the same rank. We
  compute it with real arithmetic: a complex number ``x + iy`` acts like the 2 x 2 block
  ``[[x, -y], [y, x]]``, so a complex TT of rank ``r`` is a real TT of rank ``2r`` whose cores
  have that block structure (:func:`complex_to_real_cores`), and the lookup kernel needs to
  know nothing about complex numbers.
"""
from __future__ import annotations

import math

import torch
from torch import nn

PHASES = (None, "cos", "complex")


# --------------------------------------------------------------------------- factorisation
def _divisor_near(n: int, target: float) -> int | None:
    """The divisor of ``n`` closest to ``target`` within a factor 2 of it, if any."""
    best = None
    for f in range(max(2, math.floor(target / 2)), math.ceil(target * 2) + 1):
        if n % f == 0 and (best is None or abs(f - target) < abs(best - target)):
            best = f
    return best


def factorize(n: int, num_factors: int) -> tuple[int, ...]:
    """Balanced factors whose product is ``n``, or slightly more than ``n`` when ``n`` does not split.

    ``1024 -> (32, 32)`` or ``(8, 8, 16)``; ``50000 -> (250, 200)``; ``50257`` (29 x 1733) has no
    balanced split, so it is padded: ``(225, 224)`` covers 50,400 rows. The factors are sorted
    largest first.
    """
    if n < 1 or num_factors < 1:
        raise ValueError(f"factorize needs n >= 1 and num_factors >= 1, got n={n}, num_factors={num_factors}")
    if num_factors == 1:
        return (n,)
    target = n ** (1 / num_factors)
    first = _divisor_near(n, target)
    if first is None:  # no balanced divisor: pad n up to the next product of ceil'd factors
        first = math.ceil(target)
        rest = factorize(math.ceil(n / first), num_factors - 1)
    else:
        rest = factorize(n // first, num_factors - 1)
    return tuple(sorted((first, *rest), reverse=True))


def tt_shapes(vocab_size: int, d_model: int, rank: int, num_cores: int) -> list[tuple[int, int, int, int]]:
    """Core shapes ``(v_k, r_{k-1}, d_k, r_k)`` of a TT embedding."""
    v_modes, d_modes = factorize(vocab_size, num_cores), factorize(d_model, num_cores)
    ranks = [1] + [rank] * (num_cores - 1) + [1]
    return [(v_modes[k], ranks[k], d_modes[k], ranks[k + 1]) for k in range(num_cores)]


def token_digits(ids: torch.Tensor, v_modes: tuple[int, ...]) -> list[torch.Tensor]:
    """Mixed-radix digits ``(i_1, ..., i_c)`` of token ids, ``i_1`` the most significant."""
    digits, rest = [], ids
    for v in reversed(v_modes):
        digits.append(rest % v)
        rest = torch.div(rest, v, rounding_mode="floor")
    return digits[::-1]


# --------------------------------------------------------------------------- references
def tt_lookup_reference(cores: list[torch.Tensor], ids: torch.Tensor, d_model: int) -> torch.Tensor:
    """The plain PyTorch formulation: gather each token's core slices, contract with einsum.

    This is what the seed's code does (and what the kernels are tested against). Autograd
    keeps the gathered slices for backward: ``N * r * (d_1 + d_2)`` numbers for ``N`` tokens
    with two cores, as many as the output itself.
    """
    flat = ids.reshape(-1)
    digits = token_digits(flat, tuple(c.shape[0] for c in cores))
    row = cores[0][digits[0]][:, 0]  # (N, d_1, r_1)
    for core, digit in zip(cores[1:], digits[1:]):
        row = torch.einsum("npa,naqb->npqb", row, core[digit]).flatten(1, 2)  # (N, d_1..d_k, r_k)
    return row[..., 0][:, :d_model].reshape(*ids.shape, d_model)


def tt_to_dense(cores: list[torch.Tensor], vocab_size: int, d_model: int) -> torch.Tensor:
    """The whole ``(V, D)`` table (for checks at small sizes; it is what TT avoids storing)."""
    full = cores[0][:, 0]  # (v_1, d_1, r_1)
    for core in cores[1:]:
        # (rows, p, a) x (v, a, q, b) -> (rows, v, p, q, b): new digit is less significant
        full = torch.einsum("xpa,vaqb->xvpqb", full, core)
        full = full.reshape(full.shape[0] * full.shape[1], -1, full.shape[-1])
    return full[:vocab_size, :d_model, 0]


def complex_to_real_cores(real: list[torch.Tensor], imag: list[torch.Tensor]) -> list[torch.Tensor]:
    """Real cores of rank ``2r`` whose TT equals ``Re`` of the complex TT ``real + i imag``.

    With ``z = x + iy <-> [[x, -y], [y, x]]`` the product of the blocks is the block of the
    product, and the real part of a 1 x 1 result is its top-left entry: keep the first block
    row of the first core and the first block column of the last.
    """
    out = []
    last = len(real) - 1
    for k, (x, y) in enumerate(zip(real, imag)):
        top = torch.cat([x, -y], dim=3)      # (v, a, d, 2b): block row [x, -y]
        bottom = torch.cat([y, x], dim=3)    # block row [y, x]
        block = torch.cat([top, bottom], dim=1)  # (v, 2a, d, 2b)
        if k == 0:
            block = block[:, :1]             # first block row (a = 1)
        if k == last:
            block = block[..., :1]           # first block column (b = 1)
        out.append(block)
    return out


# --------------------------------------------------------------------------- the module
class HolographicTTEmbedding(nn.Module):
    """A drop-in for ``nn.Embedding(vocab_size, d_model)`` stored as a tensor train.

    Args:
        vocab_size, d_model: the table's shape; neither has to factor (padding and cropping).
        rank: the TT rank ``r`` between consecutive cores.
        num_cores: 2 (the seed's) or 3.
        phase: ``None``, ``"cos"`` (the seed's per-rank ``cos(theta)``, absorbable) or
            ``"complex"`` (complex cores, real part of the product: a different model).
        init_std: the standard deviation of each entry of a row at initialisation (1.0, like
            ``nn.Embedding``); core entries are drawn so that the product has it.
        backend: ``"auto"`` (Triton on CUDA for 2 cores, PyTorch otherwise), ``"triton"``,
            ``"torch"`` (the recompute-in-backward PyTorch path) or ``"reference"`` (plain
            gather + einsum under autograd, the seed's formulation).
    """

    def __init__(self, vocab_size: int, d_model: int, rank: int, num_cores: int = 2, phase: str | None = None,
                 init_std: float = 1.0, backend: str = "auto", check_ids: bool = True):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("d_model", d_model), ("rank", rank)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if num_cores not in (2, 3):
            raise ValueError(f"num_cores must be 2 or 3, got {num_cores!r}")
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        if backend not in ("auto", "triton", "torch", "reference"):
            raise ValueError(f"backend must be 'auto', 'triton', 'torch' or 'reference', got {backend!r}")
        self.vocab_size, self.d_model, self.rank, self.num_cores = vocab_size, d_model, rank, num_cores
        self.phase, self.backend, self.check_ids = phase, backend, check_ids
        self.shapes = tt_shapes(vocab_size, d_model, rank, num_cores)
        self.v_modes = tuple(s[0] for s in self.shapes)
        self.d_modes = tuple(s[2] for s in self.shapes)

        # Row variance = (paths) x (entry variance)^c with r^(c-1) paths; complex entries have
        # variance 2 s^2 per factor and the real part keeps half of the product's.
        paths = rank ** (num_cores - 1)
        if phase == "complex":
            std = math.sqrt((2 * init_std**2 / paths) ** (1 / num_cores) / 2)
        else:
            std = (init_std**2 / paths) ** (1 / (2 * num_cores))
        self.cores = nn.ParameterList([nn.Parameter(torch.randn(s) * std) for s in self.shapes])
        if phase == "complex":
            self.cores_imag = nn.ParameterList([nn.Parameter(torch.randn(s) * std) for s in self.shapes])
        if phase == "cos":
            # Small angles, as in the seed: cos(theta) starts near 1 and barely changes the scale.
            self.theta = nn.Parameter(torch.randn(rank) * 0.1)

    # ------------------------------------------------------------------ the cores the lookup uses
    def effective_cores(self) -> list[torch.Tensor]:
        """Real cores with the phase folded in; differentiable with respect to every parameter."""
        # ParameterList's own iteration goes through string indices, microseconds per core and per
        # call; the lookup is host-bound at realistic sizes, so read its dict directly.
        cores = list(self.cores._parameters.values())
        if self.phase == "cos":
            cores[0] = cores[0] * torch.cos(self.theta).view(1, 1, 1, -1)
        elif self.phase == "complex":
            cores = complex_to_real_cores(cores, list(self.cores_imag))
        return cores

    @torch.no_grad()
    def absorb_phase(self) -> "HolographicTTEmbedding":
        """An equivalent phase-free embedding: ``cos(theta)`` folded into core 1 (``phase="cos"`` only)."""
        if self.phase != "cos":
            raise ValueError(f"absorb_phase applies to phase='cos', this embedding has phase={self.phase!r}")
        plain = HolographicTTEmbedding(self.vocab_size, self.d_model, self.rank, self.num_cores, None,
                                       backend=self.backend, check_ids=self.check_ids)
        plain = plain.to(device=self.cores[0].device, dtype=self.cores[0].dtype)
        for target, core in zip(plain.cores, self.effective_cores()):
            target.copy_(core)
        return plain

    # ------------------------------------------------------------------ lookup
    def _check(self, ids: torch.Tensor, device: torch.device) -> None:
        if not isinstance(ids, torch.Tensor):
            raise TypeError(f"ids must be a torch.Tensor of token ids, got {type(ids).__name__}")
        if ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"ids must be int64 or int32 token ids, got {ids.dtype}; use ids.long()")
        if ids.device != device:
            raise ValueError(f"ids are on {ids.device} but the embedding is on {device}; "
                             f"move one of them (ids.to({str(device)!r}))")
        if self.check_ids and ids.numel():
            low, high = ids.min().item(), ids.max().item()  # one sync; check_ids=False skips it
            if low < 0 or high >= self.vocab_size:
                bad = low if low < 0 else high
                raise IndexError(f"token id {bad} is out of range for vocab_size={self.vocab_size} "
                                 f"(valid ids: 0..{self.vocab_size - 1})")

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        cores = self.effective_cores()
        self._check(ids, cores[0].device)
        if self.backend == "reference":
            return tt_lookup_reference(cores, ids.long(), self.d_model)
        from labkit.htt.ops import tt_lookup

        return tt_lookup(cores, ids, self.d_model, backend=self.backend)

    def to_dense(self) -> torch.Tensor:
        """The ``(vocab_size, d_model)`` table this embedding represents."""
        return tt_to_dense(self.effective_cores(), self.vocab_size, self.d_model)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def compression(self) -> float:
        """Parameters of ``nn.Embedding(vocab_size, d_model)`` divided by this module's."""
        return self.vocab_size * self.d_model / self.num_parameters()

    def extra_repr(self) -> str:
        return (f"{self.vocab_size}, {self.d_model}, rank={self.rank}, cores={self.num_cores}, "
                f"v_modes={self.v_modes}, d_modes={self.d_modes}, phase={self.phase}")
