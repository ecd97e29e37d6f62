"""The small experiments of chapter 5b (the kernel toolkit): data, sweeps and training loops.

Everything here is sized by the caller (the notebook passes ``labkit.start().toolkit``) and
runs on the CPU in seconds at the quick profile's sizes:

* :func:`accuracy_vs_k`: the error of three log-domain matmuls (labkit's, the fp32
  ``logsumexp`` reference, the max-only approximation) against float64, for growing ``K``;
* :func:`hmm_example` and :func:`hmm_forward_unscaled`: a hidden Markov model with sparse
  transitions, a sampled sequence, and the textbook forward recursion in probabilities without
  scaling (the one that underflows);
* :class:`TeacherTask` and :func:`train_gated`: an AR-SSM student with ``max_rank`` gated
  channels fitted to a teacher AR-SSM with fewer channels, under an expected-rank penalty;
* :func:`train_with_recovery`: the same task trained under
  :class:`~labkit.htt.recovery.Phase1ErrorRecovery`, with a NaN written into a weight mid-run.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from labkit.htt.arssm import AdaptiveRankSemiseparableLayer
from labkit.htt.logmatmul import log_matmul, log_matmul_maxonly, log_matmul_reference
from labkit.htt.recovery import Phase1ErrorRecovery, RecoveryConfig


# ----------------------------------------------------------------------------- log-domain matmul
@torch.no_grad()
def accuracy_vs_k(ks, size: int, low: float, high: float, device="cpu", seed: int = 0) -> list[dict]:
    """Errors of ``log_matmul`` (fp32), the fp32 ``logsumexp`` reference and the max-only approximation.

    For each ``K`` in ``ks``: ``A (size, K)`` and ``B (K, size)`` uniform in ``[low, high]`` (drawn
    in fp32 on the CPU generator, then moved to ``device``); the oracle is the reference in
    float64 on the same fp32 values. One row per method and ``K`` with ``max_abs_err`` (nats) and
    ``max_rel_err`` (``|C - C64| / |C64|``).
    """
    methods = {"labkit log_matmul (fp32)": log_matmul,
               "logsumexp reference (fp32)": log_matmul_reference,
               "max-only (max-log)": log_matmul_maxonly}
    rows = []
    for k in ks:
        g = torch.Generator().manual_seed(seed + k)
        a = (torch.rand(size, k, generator=g) * (high - low) + low).to(device)
        b = (torch.rand(k, size, generator=g) * (high - low) + low).to(device)
        exact = log_matmul_reference(a.double(), b.double())
        for name, fn in methods.items():
            diff = (fn(a, b).double() - exact).abs()
            rows.append({"method": name, "K": k, "inputs": f"uniform [{low:g}, {high:g}]",
                         "max_abs_err": diff.max().item(),
                         "max_rel_err": (diff / exact.abs().clamp_min(1e-30)).max().item()})
    return rows


# ----------------------------------------------------------------------------- HMM
def hmm_example(states: int, symbols: int, length: int, seed: int = 0, dtype=torch.float64) -> dict:
    """A hidden Markov model with sparse transitions and one sampled observation sequence.

    State ``i`` moves to ``i``, ``i + 1`` or ``i + 2`` (mod ``states``) with Dirichlet(1) weights and
    never anywhere else (so the log transition matrix is mostly ``-inf``); each state emits one of
    ``symbols`` symbols with Dirichlet(1/2) probabilities; the first state is uniform. Returns the
    probabilities ``pi (S,)``, ``A (S, S)`` (from, to), ``B (S, V)``, the sampled ``states`` and
    ``obs`` (length ``T``), and ``B_obs (T, S)``: the probability of each observation in each state.
    All draws come from one CPU generator seeded with ``seed``.
    """
    if states < 3:
        raise ValueError(f"hmm_example needs at least 3 states (each moves to itself and the next two), got {states}")
    g = torch.Generator().manual_seed(seed)
    # Dirichlet samples are normalised Gamma draws: Gamma(1) = -log U, Gamma(1/2) = Z^2 / 2.
    jumps = -torch.log(torch.rand(states, 3, generator=g, dtype=torch.float64))
    jumps = jumps / jumps.sum(dim=1, keepdim=True)
    trans = torch.zeros(states, states, dtype=torch.float64)
    rows = torch.arange(states)
    for step in range(3):
        trans[rows, (rows + step) % states] = jumps[:, step]
    emit = torch.randn(states, symbols, generator=g, dtype=torch.float64).square() / 2
    emit = emit / emit.sum(dim=1, keepdim=True)
    pi = torch.full((states,), 1.0 / states, dtype=torch.float64)
    z = torch.empty(length, dtype=torch.long)
    z[0] = torch.multinomial(pi, 1, generator=g)
    for t in range(1, length):
        z[t] = torch.multinomial(trans[z[t - 1]], 1, generator=g)
    x = torch.multinomial(emit[z], 1, generator=g)[:, 0]
    return {"pi": pi.to(dtype), "A": trans.to(dtype), "B": emit.to(dtype), "states": z, "obs": x,
            "B_obs": emit[:, x].T.contiguous().to(dtype)}


def hmm_forward_unscaled(pi: torch.Tensor, A: torch.Tensor, B_obs: torch.Tensor) -> torch.Tensor:
    """The textbook forward recursion in probabilities, **without scaling**: ``alpha (T, S)``.

    ``alpha_0 = pi * b_0`` and ``alpha_t = (alpha_{t-1} @ A) * b_t``, in the inputs' dtype.
    ``alpha_t.sum()`` is ``p(x_1..t)``, which shrinks geometrically with ``t`` and underflows to 0
    after a few dozen steps in float32 (a few hundred in float64): the failure that the scaled and
    the log-space versions avoid.
    """
    alpha = pi * B_obs[0]
    out = [alpha]
    for t in range(1, B_obs.shape[0]):
        alpha = (alpha @ A) * B_obs[t]
        out.append(alpha)
    return torch.stack(out)


# ----------------------------------------------------------------------------- AR-SSM: teacher and student
class TeacherTask:
    """Regression onto a fixed AR-SSM "teacher" with ``teacher_rank`` channels.

    The teacher is an :class:`AdaptiveRankSemiseparableLayer` with its gates on and its
    convolution zeroed, so the whole target comes from its ``teacher_rank`` recurrent channels: a
    student with more channels needs about ``teacher_rank`` of them. :meth:`batch` returns the same
    ``(x, y)`` for the same step in every run (its own CPU generator), so runs that differ only in
    a setting see identical data. ``y`` is scaled to unit variance.
    """

    def __init__(self, d_model: int, teacher_rank: int, length: int, batch: int, device="cpu", seed: int = 0):
        self.d_model, self.length, self.batch_size = d_model, length, batch
        self.device, self.seed = torch.device(device), seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(10_000 + seed)
            self.teacher = AdaptiveRankSemiseparableLayer(d_model, teacher_rank, gate_init=20.0).eval()
        with torch.no_grad():
            self.teacher.conv.weight.zero_()
            self.teacher.conv.bias.zero_()
        self.teacher.to(self.device)
        x, y = self._make(10**6, 256)
        self.scale = y.std().item()

    @torch.no_grad()
    def _make(self, step: int, batch: int):
        g = torch.Generator().manual_seed(self.seed * 10**7 + step)
        x = torch.randn(batch, self.length, self.d_model, generator=g).to(self.device)
        return x, self.teacher(x)

    def batch(self, step: int):
        x, y = self._make(step, self.batch_size)
        return x, y / self.scale

    def held_out(self, batch: int = 64):
        x, y = self._make(10**6 + 1, batch)
        return x, y / self.scale


@torch.no_grad()
def held_out_loss(model: nn.Module, task: TeacherTask) -> float:
    """Mean squared error on the task's held-out batch, in eval mode (off channels pruned)."""
    was_training = model.training
    model.eval()
    x, y = task.held_out()
    loss = F.mse_loss(model(x), y).item()
    model.train(was_training)
    return loss


def train_gated(task: TeacherTask, max_rank: int, mode: str = "gumbel", temperature: float = 1.0,
                penalty: float = 0.5, steps: int = 400, lr: float = 1e-2, gate_init: float = 1.0,
                record_every: int = 10, seed: int = 0) -> dict:
    """Fit one AR-SSM layer with ``max_rank`` gated channels to ``task`` under a rank penalty.

    Loss: ``MSE + penalty * expected_rank / max_rank`` (the expected number of channels on, as a
    fraction), Adam at ``lr``. Every ``record_every`` steps the history records the training MSE,
    the number of channels whose evaluation gate is on (``logit > 0``) and the expected rank.
    Returns ``{"history": {...}, "active": final count, "expected": ..., "train_mse": the mean
    training MSE over the last tenth of the steps (gates as drawn in training), "held_out": eval MSE
    with only the active channels computed, "layer": the trained layer}``.
    """
    with torch.random.fork_rng(devices=[task.device] if task.device.type == "cuda" else []):
        torch.manual_seed(seed)
        layer = AdaptiveRankSemiseparableLayer(task.d_model, max_rank, gate_init=gate_init, gate_mode=mode,
                                               gumbel_temperature=temperature).to(task.device)
        optimizer = torch.optim.Adam(layer.parameters(), lr=lr)
        history = {"step": [], "mse": [], "active": [], "expected": []}
        tail = []  # training MSEs of the last tenth of the steps
        for step in range(steps):
            x, y = task.batch(step)
            mse = F.mse_loss(layer(x), y)
            loss = mse + penalty * layer.expected_rank() / max_rank
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step >= steps - max(1, steps // 10):
                tail.append(mse.item())
            if step % record_every == 0 or step == steps - 1:
                history["step"].append(step)
                history["mse"].append(mse.item())
                history["active"].append(int((layer.gate_logits > 0).sum()))
                history["expected"].append(layer.expected_rank().item())
    active = int((layer.gate_logits > 0).sum()) if mode != "soft" else max_rank
    return {"mode": mode, "temperature": temperature, "history": history, "active": active,
            "expected": layer.expected_rank().item(), "train_mse": sum(tail) / len(tail),
            "held_out": held_out_loss(layer, task), "layer": layer}


# ----------------------------------------------------------------------------- recovery
class _Regressor(nn.Sequential):
    """AR-SSM layer, LayerNorm, Linear: the small model the recovery demo trains."""

    def __init__(self, d_model: int, max_rank: int):
        super().__init__(AdaptiveRankSemiseparableLayer(d_model, max_rank), nn.LayerNorm(d_model),
                         nn.Linear(d_model, d_model))


def train_with_recovery(task: TeacherTask, max_rank: int, steps: int, fault_step: int | None = None,
                        fault_param: str = "0.u_proj.weight", lr: float = 1e-2, checkpoint_every: int = 25,
                        seed: int = 0, **recovery_kwargs) -> dict:
    """Train :class:`_Regressor` on ``task`` with every step guarded by :class:`Phase1ErrorRecovery`.

    Before step ``fault_step`` (if given) one entry of the parameter ``fault_param`` is set to NaN,
    as a bad kernel or a corrupted all-reduce would. ``recovery_kwargs`` go to the recovery
    (``enable_rollback=False`` to see re-initialisation). Returns ``{"model", "recovery",
    "held_out"}``; ``recovery.history`` has one row per step (its loss, the strategies applied)
    and ``recovery.log`` the strategies and checkpoints.
    """
    with torch.random.fork_rng(devices=[task.device] if task.device.type == "cuda" else []):
        torch.manual_seed(seed)
        model = _Regressor(task.d_model, max_rank).to(task.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    recovery = Phase1ErrorRecovery(model, optimizer, RecoveryConfig(), checkpoint_every=checkpoint_every,
                                   **recovery_kwargs)
    params = dict(model.named_parameters())
    for step in range(steps):
        if step == fault_step:
            with torch.no_grad():
                params[fault_param].view(-1)[0] = float("nan")
        x, y = task.batch(step)

        def closure(x=x, y=y):
            loss = F.mse_loss(model(x), y)
            loss.backward()
            return loss

        recovery.guarded_step(closure)
    return {"model": model, "recovery": recovery, "held_out": held_out_loss(model, task)}


__all__ = ["TeacherTask", "accuracy_vs_k", "held_out_loss", "hmm_example", "hmm_forward_unscaled",
           "train_gated", "train_with_recovery"]
