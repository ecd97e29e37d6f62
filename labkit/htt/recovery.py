"""Recovering from numerical failures in training: the seed's five strategies, made to work.

A training step **fails** when its loss is not finite, a gradient is not finite, or the gradient
norm is a spike: more than ``stability_threshold`` times its running average over recent
healthy steps (checked once ``warmup_steps`` healthy steps have been seen). A failed step's
update is never applied. :class:`Phase1ErrorRecovery` then applies the strategies in the seed's
order, one at a time, escalating only when the previous one did not restore a healthy step:

1. ``reduce_lr``: multiply the learning rate by ``lr_factor`` (0.5);
2. ``raise_threshold``: multiply ``stability_threshold`` by ``threshold_factor`` (10);
3. ``enable_clipping``: clip the gradient norm at ``clip_norm`` (1.0) from now on;
4. ``rollback``: restore the model and the optimizer from the last healthy checkpoint;
5. ``reinit_unstable``: re-initialise the layers that hold non-finite parameters (or, if none
   do, the first layer whose output turns non-finite from finite inputs), and drop their
   optimizer state.

A strategy that cannot act (clipping already on, no checkpoint, no unstable layer found) is
logged as skipped and the next one is tried at once. If all five have been tried and the step
still fails, :class:`NumericalInstabilityError` is raised. After a healthy step the ladder starts
again from strategy 1; the changes made (lower learning rate, higher threshold, clipping) stay.
Strategies 1 to 3 change the update, not the loss, so they cannot repair weights that are
already NaN; they are tried first because most failures are spikes, and they cost one retry each.

Usage (``closure`` computes the loss on a batch and calls ``backward``; the gradients are zeroed
before it is called)::

    recovery = Phase1ErrorRecovery(model, optimizer, checkpoint_every=100)
    for step in range(steps):
        x, y = next(batches)

        def closure():
            loss = loss_fn(model(x), y)
            loss.backward()
            return loss

        report = recovery.guarded_step(closure)   # never applies a non-finite update
    recovery.log       # the strategies applied, for plots
    recovery.history   # one row per step: loss, gradient norm, ok, action

With ``retry=True`` (default) a failed step is retried on the same batch after each strategy, so
no batch is skipped; with ``retry=False`` one strategy is applied and the step is skipped (the
next call's batch is the retry). The lower-level ``check`` / ``step_failed`` / ``step_succeeded``
let a custom loop do the same by hand.

Differences from the seed's ``recovery.py`` (see the research notes): there, strategy 1 returned
"recovered" whenever an optimizer was passed and an attempt cap ended recovery after three
calls, so rollback and re-initialisation were unreachable; the saved optimizer state was a
reference to the live Adam moments; re-initialisation zeroed every 1-D parameter, norm weights
included; and the threshold was changed inside a shared preset. Here escalation depends on the
outcome, checkpoints are copies (tensors cloned, model and optimizer, optionally written to disk
atomically), norm layers are reset to weight 1 and bias 0, and the mutable settings live in the
recovery object's own :class:`RecoveryConfig`.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from labkit.data import atomic_write

STRATEGIES = ("reduce_lr", "raise_threshold", "enable_clipping", "rollback", "reinit_unstable")
NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase) + (
    (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


class NumericalInstabilityError(RuntimeError):
    """Training failed numerically and every recovery strategy has been tried (``log`` says which)."""

    def __init__(self, message: str, step: int | None = None, log: list[dict] | None = None):
        super().__init__(message)
        self.step, self.log = step, list(log or [])


@dataclass
class RecoveryConfig:
    """The settings the strategies change; each :class:`Phase1ErrorRecovery` owns a copy."""

    lr_factor: float = 0.5
    stability_threshold: float = 100.0  # a gradient norm this many times its running average is a spike
    threshold_factor: float = 10.0
    grad_clip: float | None = None      # None: no clipping (until strategy 3)
    clip_norm: float = 1.0              # what strategy 3 turns clipping on at
    warmup_steps: int = 10              # healthy steps before the spike test is armed
    ema_decay: float = 0.9              # of the running average of healthy gradient norms

    @classmethod
    def from_config(cls, config) -> "RecoveryConfig":
        """A fresh copy from a :class:`RecoveryConfig`, or from any object (e.g. a
        :class:`~labkit.htt.presets.Phase1Config`) with some of these fields; the source is never changed."""
        if config is None:
            return cls()
        if isinstance(config, dict):
            values = config
        else:
            values = {f.name: getattr(config, f.name) for f in dataclasses.fields(cls) if hasattr(config, f.name)}
        return cls(**{k: copy.deepcopy(v) for k, v in values.items() if k in {f.name for f in dataclasses.fields(cls)}})


@dataclass(frozen=True)
class Verdict:
    ok: bool
    loss: float
    grad_norm: float
    reason: str | None  # None when ok


def clone_state(obj, device: str | torch.device | None = None):
    """A deep copy of a (nested) state dict: every tensor cloned (to ``device`` if given)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to(device=device if device is not None else obj.device, copy=True)
    if isinstance(obj, dict):
        return type(obj)((k, clone_state(v, device)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(clone_state(v, device) for v in obj)
    return copy.deepcopy(obj)


def _all_finite(tensors) -> bool:
    flags = [torch.isfinite(t).all() for t in tensors if t.is_floating_point() or t.is_complex()]
    if not flags:
        return True
    if len({f.device for f in flags}) == 1:
        return bool(torch.stack(flags).all())  # one host sync
    return all(bool(f) for f in flags)


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


@torch.no_grad()
def reinitialize(module: nn.Module) -> None:
    """Re-initialise one module: norm layers to weight 1 and bias 0, others with their own
    ``reset_parameters()``; without one, Xavier for matrices and zeros for vectors."""
    if isinstance(module, NORM_TYPES) or type(module).__name__.endswith("Norm"):
        for name, p in module.named_parameters(recurse=False):
            p.fill_(1.0 if name == "weight" else 0.0)
        return
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()
        return
    for p in module.parameters(recurse=False):
        if p.dim() >= 2:
            nn.init.xavier_uniform_(p)
        else:
            p.zero_()


class Phase1ErrorRecovery:
    """Guards training steps of ``model`` with ``optimizer`` (see the module docstring).

    Args:
        model, optimizer: what to guard; checkpoints hold both.
        config: a :class:`RecoveryConfig`, a preset, a dict or None; copied, never modified.
        scheduler: an lr scheduler whose ``base_lrs`` should be scaled with the lr (optional).
        checkpoint_every: save a checkpoint after every this many healthy steps (and at the start).
        checkpoint_path: also write each checkpoint there (``torch.save``, atomically).
        checkpoint_device: where the in-memory copies live (default ``"cpu"``: no GPU memory).
        enable_rollback, enable_reinit: switch strategies 4 and 5 off (they are then skipped).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, config=None, *, scheduler=None,
                 checkpoint_every: int = 100, checkpoint_path: str | os.PathLike | None = None,
                 checkpoint_device: str | torch.device | None = "cpu", enable_rollback: bool = True,
                 enable_reinit: bool = True):
        if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be a positive int, got {checkpoint_every!r}")
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.config = RecoveryConfig.from_config(config)
        self.checkpoint_every, self.checkpoint_device = checkpoint_every, checkpoint_device
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.enable_rollback, self.enable_reinit = enable_rollback, enable_reinit
        self.level = 0              # index of the next strategy to apply
        self.step = 0               # guarded steps so far (healthy or not)
        self.healthy_steps = 0
        self.grad_norm_avg: float | None = None
        self.lr_scale = 1.0
        self.log: list[dict] = []
        self.history: list[dict] = []
        self.checkpoint: dict | None = None
        self.reinitialized: list[str] = []
        self._closure = None
        if enable_rollback:
            self.save_checkpoint()

    # ------------------------------------------------------------------ checks
    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def check(self, loss: torch.Tensor) -> Verdict:
        """Is this step healthy? Reads the loss and the gradients (one host sync)."""
        grads = [p.grad for p in self._params() if p.grad is not None]
        loss = loss.detach().float().reshape(())
        norm = _total_norm(grads).float().to(loss.device) if grads else torch.zeros((), device=loss.device)
        loss_value, norm_value = torch.stack([loss, norm]).tolist()
        reason = None
        if not math.isfinite(loss_value):
            reason = "non-finite loss"
        elif not math.isfinite(norm_value):
            reason = "non-finite gradient"
        elif (self.grad_norm_avg is not None and self.healthy_steps >= self.config.warmup_steps
              and norm_value > self.config.stability_threshold * self.grad_norm_avg):
            reason = (f"gradient spike: norm {norm_value:.3g} > {self.config.stability_threshold:g} x "
                      f"average {self.grad_norm_avg:.3g}")
        return Verdict(reason is None, loss_value, norm_value, reason)

    # ------------------------------------------------------------------ the guarded step
    def guarded_step(self, closure: Callable[[], torch.Tensor], retry: bool = True) -> dict:
        """Zero the gradients, run ``closure`` (forward + backward, returns the loss), and apply the
        update only if the step is healthy. Otherwise apply the next strategy and, with ``retry``,
        run ``closure`` again, until healthy or out of strategies (then raise). Returns this
        step's row of :attr:`history`."""
        actions, attempts = [], []
        self._closure = closure  # for find_unstable_layers, should strategy 5 be reached
        try:
            while True:
                self.optimizer.zero_grad(set_to_none=True)
                loss = closure()
                if not isinstance(loss, torch.Tensor):
                    raise TypeError(f"the closure must return the loss tensor, got {type(loss).__name__}")
                verdict = self.check(loss)
                attempts.append(verdict.loss)
                if verdict.ok:
                    if self.config.grad_clip is not None:
                        nn.utils.clip_grad_norm_(self._params(), self.config.grad_clip)
                    self.optimizer.step()
                    self.step_succeeded(verdict)
                    break
                actions.append(self.step_failed(verdict))
                if not retry:
                    break
        finally:
            self._closure = None
        row = {"step": self.step, "ok": verdict.ok, "loss": verdict.loss, "grad_norm": verdict.grad_norm,
               "actions": actions, "attempt_losses": attempts, "lr_scale": self.lr_scale}
        self.history.append(row)
        self.step += 1
        return row

    def step_succeeded(self, verdict: Verdict | None = None) -> None:
        """Record a healthy step (its update applied): reset the ladder, update the running average
        of gradient norms, save a checkpoint every ``checkpoint_every`` healthy steps."""
        self.level = 0
        self.healthy_steps += 1
        if verdict is not None:
            decay = self.config.ema_decay
            self.grad_norm_avg = (verdict.grad_norm if self.grad_norm_avg is None
                                  else decay * self.grad_norm_avg + (1 - decay) * verdict.grad_norm)
        if self.enable_rollback and self.healthy_steps % self.checkpoint_every == 0:
            self.save_checkpoint()

    def step_failed(self, verdict: Verdict | str = "failed step") -> str:
        """Apply the next strategy that can act (skipping, and logging, those that cannot) and
        return its name; the gradients are discarded. Raises :class:`NumericalInstabilityError`
        when none is left."""
        reason = verdict.reason if isinstance(verdict, Verdict) else str(verdict)
        self.optimizer.zero_grad(set_to_none=True)
        while self.level < len(STRATEGIES):
            name = STRATEGIES[self.level]
            self.level += 1
            applied, detail = getattr(self, "_" + name)()
            entry = {"step": self.step, "action": name, "applied": applied, "reason": reason, "detail": detail}
            if isinstance(verdict, Verdict):
                entry.update(loss=verdict.loss, grad_norm=verdict.grad_norm)
            self.log.append(entry)
            if applied:
                return name
        tried = [(e["action"], e["applied"]) for e in self.log if e["step"] == self.step and e["action"] in STRATEGIES]
        raise NumericalInstabilityError(
            f"step {self.step}: {reason}, and all recovery strategies have been tried: {tried}",
            step=self.step, log=self.log)

    # ------------------------------------------------------------------ strategies
    def _reduce_lr(self):
        factor = self.config.lr_factor
        for group in self.optimizer.param_groups:
            group["lr"] *= factor
        if self.scheduler is not None and hasattr(self.scheduler, "base_lrs"):
            self.scheduler.base_lrs = [lr * factor for lr in self.scheduler.base_lrs]
        self.lr_scale *= factor
        return True, f"lr x{factor:g} (now x{self.lr_scale:g} of the original)"

    def _raise_threshold(self):
        self.config.stability_threshold *= self.config.threshold_factor
        return True, f"stability_threshold -> {self.config.stability_threshold:g}"

    def _enable_clipping(self):
        if self.config.grad_clip is not None:
            return False, f"clipping already on (max norm {self.config.grad_clip:g})"
        self.config.grad_clip = self.config.clip_norm
        return True, f"gradient norm clipped at {self.config.grad_clip:g}"

    def _rollback(self):
        if not self.enable_rollback:
            return False, "rollback disabled"
        if self.checkpoint is None:
            return False, "no healthy checkpoint"
        self.rollback()
        return True, f"restored the checkpoint of step {self.checkpoint['step']}"

    def _reinit_unstable(self):
        if not self.enable_reinit:
            return False, "re-initialisation disabled"
        names = self.find_unstable_layers(self._closure)
        if not names:
            return False, "no layer with non-finite parameters or outputs"
        self.reinit_layers(names)
        return True, "re-initialised " + ", ".join(names)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, step: int | None = None, path: str | os.PathLike | None = None) -> bool:
        """Keep a deep copy of the model's and the optimizer's state (Adam moments included), if
        every tensor in them is finite; also write it to ``path`` (or ``checkpoint_path``)
        atomically. Returns whether it was saved (a non-finite state is refused and logged)."""
        model_state = self.model.state_dict()
        optim_state = self.optimizer.state_dict()
        if not (_all_finite(_tensors(model_state)) and _all_finite(_tensors(optim_state["state"]))):
            self.log.append({"step": self.step, "action": "checkpoint", "applied": False,
                             "reason": "non-finite state", "detail": "refused: the state is not finite"})
            return False
        self.checkpoint = {"step": self.step if step is None else step,
                           "model": clone_state(model_state, self.checkpoint_device),
                           "optimizer": clone_state(optim_state, self.checkpoint_device)}
        target = Path(path) if path is not None else self.checkpoint_path
        if target is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, lambda tmp: torch.save(self.checkpoint, tmp))
        self.log.append({"step": self.checkpoint["step"], "action": "checkpoint", "applied": True, "reason": None,
                         "detail": f"saved{'' if target is None else ' to ' + str(target)}"})
        return True

    @staticmethod
    def load_checkpoint(path: str | os.PathLike) -> dict:
        """A checkpoint written by :meth:`save_checkpoint` (tensors and plain values only)."""
        return torch.load(path, map_location="cpu", weights_only=True)

    def rollback(self, checkpoint: dict | None = None) -> None:
        """Restore the model and the optimizer from ``checkpoint`` (default: the last one saved).

        The checkpoint itself is not touched (the optimizer gets copies of its tensors). The
        current hyper-parameters (the learning rate, possibly lowered by strategy 1) are kept.
        """
        checkpoint = checkpoint if checkpoint is not None else self.checkpoint
        if checkpoint is None:
            raise ValueError("no checkpoint to roll back to")
        lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.model.load_state_dict(checkpoint["model"])
        # Optimizer.load_state_dict keeps the given tensors when device and dtype already match:
        # hand it copies, or the next step would update the checkpoint in place.
        self.optimizer.load_state_dict(clone_state(checkpoint["optimizer"]))
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr

    # ------------------------------------------------------------------ unstable layers
    def find_unstable_layers(self, closure: Callable[[], torch.Tensor] | None = None) -> list[str]:
        """Dotted names of the modules that own non-finite parameters. If there are none and a
        ``closure`` is given, run it once and return the first module (in execution order) with
        parameters whose output is non-finite while its inputs are finite: where the NaN starts."""
        bad = [name for name, module in self.model.named_modules()
               if any(True for _ in module.parameters(recurse=False))
               and not _all_finite(module.parameters(recurse=False))]
        if bad or closure is None:
            return bad
        origin: list[str] = []

        def hook_for(name):
            def hook(module, args, output):
                if not origin and _all_finite(_tensors(args)) and not _all_finite(_tensors(output)):
                    origin.append(name)
            return hook

        handles = [module.register_forward_hook(hook_for(name)) for name, module in self.model.named_modules()
                   if any(True for _ in module.parameters(recurse=False))]
        try:
            closure()
        finally:
            for handle in handles:
                handle.remove()
            self.optimizer.zero_grad(set_to_none=True)
        return origin

    def reinit_layers(self, names: list[str]) -> None:
        """Re-initialise these modules (see :func:`reinitialize`) and drop their optimizer state."""
        for name in names:
            module = self.model.get_submodule(name)
            reinitialize(module)
            for p in module.parameters():
                self.optimizer.state.pop(p, None)
            self.reinitialized.append(name)


__all__ = ["NumericalInstabilityError", "Phase1ErrorRecovery", "RecoveryConfig", "STRATEGIES", "Verdict",
           "clone_state", "reinitialize"]
