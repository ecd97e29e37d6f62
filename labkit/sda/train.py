"""Training of chapter 4b's score network: the SDA recipe, resumable, optionally data-parallel.

What is trained is the *window* network ``make_score(...).kernel`` (a :class:`LocalScoreUNet`):
like the original, the loss only ever sees windows of ``window`` = 5 consecutive states, flattened
to (10, 64, 64), and :class:`MCScoreNet` assembles whole trajectories from that one network at
sampling time. The recipe is the original's ``CONFIG``: AdamW (lr 2e-4, weight decay 1e-3), batch
32, the epsilon-matching loss of :class:`VPSDE` ('cos' schedule), the lr decayed linearly to 0
(here per optimizer step, the original per epoch), a validation loss after each epoch.

Outputs in ``OUT``: ``checkpoint.pt`` (the whole :class:`MCScoreNet`'s weights, the optimizer,
the schedule, every process's random states, the history), ``metrics.csv`` (one row per epoch)
and ``history.json``. All are replaced atomically (temporary file + rename), so an interrupted run
never leaves a half-written file; rerunning the same command resumes.

Reproducibility: each use of randomness has its own seed derived from ``config.seed``: the initial
weights, the training noise (t and eps, the global RNG), the window positions (a generator), the
validation draws. The sample order of epoch ``e`` is a function of (seed, e) (a
``DistributedSampler``). With the random states in the checkpoint, a resumed run is bitwise
identical to an uninterrupted one on the CPU. The validation loss uses the same windows and the
same noise every epoch, so its curve is not blurred by fresh draws; it takes as many windows of
each validation trajectory as training does (``windows_per_trajectory``), because the loss of
one window depends strongly on its draw of t, and one window per trajectory (13 in the full
profile) left the level of the curve to a few draws.

Data-parallel: under ``torchrun`` (``WORLD_SIZE`` > 1) every process trains on its own share of
each batch (``batch_size`` is the global batch and must be divisible by the number of processes),
gradients are averaged by ``DistributedDataParallel``; only rank 0 writes files.

Command line::

    python -m labkit.sda.train --data data/kolmogorov --out runs/sda --profile full
    torchrun --nproc_per_node 4 -m labkit.sda.train --data data/kolmogorov --out runs/sda --profile paper
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from labkit.data import atomic_write
from labkit.runs import (check_resumable, closing_process_group, csv_line, join_process_group, pick_device,
                         stream_seed, torchrun_world, write_text)
from labkit.sda.data import DatasetSpec, TrajectoryDataset
from labkit.sda.nn import MCScoreNet, make_score, parameter_count
from labkit.sda.score import ALPHAS, LOSS_WEIGHTINGS, VPSDE, GaussianSkip, power_spectrum

__all__ = ["TrainConfig", "train", "build_score", "config_tag", "load_score", "main"]

SCHEDULES = ("linear", "constant")
AMPS = ("auto", "bf16", "none")
# Fields that change how fast a run goes, not the recipe: a resumed run may change them. (The draws
# can differ: randn_like fills a channels-last tensor in memory order, so the noise lands elsewhere.)
RUNTIME_FIELDS = ("channels_last", "compile", "checkpoint_every")
METRICS = ("epoch", "train_loss", "valid_loss", "lr", "seconds")


@dataclass(frozen=True)
class TrainConfig:
    """How to train; the defaults are the original's recipe except ``epochs`` (4,096 there).

    ``amp='auto'`` means bf16 autocast on CUDA and none on the CPU (resolved when training starts,
    and stored resolved). ``grad_clip`` (None: off) rescales a gradient whose norm exceeds it; the
    original has none. ``windows_per_trajectory`` (1 in the original) is how many random windows
    of each training trajectory one epoch draws: with few trajectories (the full profile's 102) it
    makes an epoch several optimizer steps long. ``checkpoint_every`` writes the checkpoint every
    that many epochs (and after the last one) instead of after each: with epochs of a second, a
    360 MB checkpoint per epoch would cost more than the training. ``skip`` (not in the original)
    trains the network inside :class:`GaussianSkip`, eps = sigma x / (mu^2 + sigma^2) + mu F.
    ``skip_spectrum`` (needs ``skip``) gives the skip the power spectrum of the training states
    (:func:`power_spectrum`; stored in the checkpoint): its Gaussian term then has the data's
    spectrum instead of white noise's. ``skip_modes`` (needs ``skip_spectrum``) scales the network's
    term mode by mode (:class:`GaussianSkip`'s ``scale_modes``). ``loss`` is the weighting of
    :meth:`VPSDE.loss`: 'eps' (the original) or 'v' (the error of F itself, which needs ``skip``).
    ``ema`` (None: off; the original has none) keeps an exponential moving average of the
    weights with that decay per step; the sampler then uses the average.
    """

    epochs: int = 64
    batch_size: int = 32
    lr: float = 2e-4
    weight_decay: float = 1e-3
    schedule: str = "linear"
    window: int = 5
    alpha: str = "cos"
    eta: float = 1e-3
    hidden_channels: tuple[int, ...] = (96, 192, 384)
    hidden_blocks: tuple[int, ...] = (3, 3, 3)
    embedding: int = 64
    seed: int = 0
    amp: str = "auto"
    channels_last: bool = False
    compile: bool = False
    grad_clip: float | None = None
    windows_per_trajectory: int = 1
    checkpoint_every: int = 1
    skip: bool = False
    skip_spectrum: bool = False
    skip_modes: bool = False
    loss: str = "eps"
    ema: float | None = None

    def __post_init__(self):
        # lists (from JSON or the command line) become tuples, so that configs compare equal
        for name in ("hidden_channels", "hidden_blocks"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

        def positive_int(name, minimum=1):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")

        for name in ("epochs", "batch_size", "window", "embedding", "windows_per_trajectory", "checkpoint_every"):
            positive_int(name)
        positive_int("seed", 0)
        if self.window % 2 != 1:
            raise ValueError(f"window must be odd (2 * order + 1 states), got {self.window}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and math.isfinite(self.weight_decay)
                and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a number >= 0, got {self.weight_decay!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.alpha not in ALPHAS:
            raise ValueError(f"alpha must be one of {ALPHAS}, got {self.alpha!r}")
        if not (isinstance(self.eta, (int, float)) and 0 < self.eta < 1):
            raise ValueError(f"eta must be a number in (0, 1), got {self.eta!r}")
        hc, hb = self.hidden_channels, self.hidden_blocks
        if not hc or len(hc) != len(hb) or not all(isinstance(c, int) and c >= 1 for c in hc) \
                or not all(isinstance(b, int) and b >= 0 for b in hb):
            raise ValueError(f"hidden_channels {hc} (ints >= 1) and hidden_blocks {hb} (ints >= 0) must be "
                             "non-empty and of the same length, one entry per U-Net level")
        if self.amp not in AMPS:
            raise ValueError(f"amp must be one of {AMPS}, got {self.amp!r}")
        for name in ("channels_last", "compile", "skip", "skip_spectrum", "skip_modes"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.loss not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss must be one of {LOSS_WEIGHTINGS}, got {self.loss!r}")
        if self.skip_spectrum and not self.skip:
            raise ValueError("skip_spectrum=True needs skip=True (it is the skip's Gaussian term)")
        if self.skip_modes and not self.skip_spectrum:
            raise ValueError("skip_modes=True needs skip_spectrum=True (the modes are scaled by the data's spectrum)")
        if self.loss == "v" and not self.skip:
            raise ValueError("loss='v' needs skip=True: a plain eps network's error at t ~ 1 would be "
                             "weighted by 1 / mu(1)^2 = 1e6")
        if self.ema is not None and not (isinstance(self.ema, float) and 0 < self.ema < 1):
            raise ValueError(f"ema must be None or a decay in (0, 1), e.g. 0.999, got {self.ema!r}")
        if self.grad_clip is not None and not (isinstance(self.grad_clip, (int, float))
                                               and math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise ValueError(f"grad_clip must be None or a positive number, got {self.grad_clip!r}")


def config_tag(config: TrainConfig) -> str:
    """8 hex digits that change with every setting a checkpoint depends on (not the runtime ones):
    a run folder named with it is never asked to resume another recipe's checkpoint."""
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in RUNTIME_FIELDS}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def build_score(config: TrainConfig, size: int = 64) -> MCScoreNet:
    """The trajectory score network of ``config`` for states of ``size`` x ``size``; ``.kernel`` is trained."""
    return make_score(window=config.window, embedding=config.embedding, hidden_channels=config.hidden_channels,
                      hidden_blocks=config.hidden_blocks, size=size)


def as_eps(network: nn.Module, config: TrainConfig, spectrum: torch.Tensor | None = None) -> nn.Module:
    """The network as the loss and the sampler call it: itself, or inside GaussianSkip when
    ``config.skip`` (with ``spectrum`` when ``config.skip_spectrum``)."""
    if config.skip_spectrum and spectrum is None:
        raise ValueError("this run's skip uses the training data's power spectrum; pass it (spectrum=...)")
    if not config.skip:
        return network
    return GaussianSkip(network, config.alpha, config.eta, spectrum if config.skip_spectrum else None,
                        scale_modes=config.skip_modes)


def load_score(out_dir: str | os.PathLike, device="cpu") -> tuple[nn.Module, TrainConfig]:
    """The trained trajectory eps network and its config from ``out_dir/checkpoint.pt``.

    That is the :class:`MCScoreNet`, or ``GaussianSkip(MCScoreNet)`` for a run with ``skip``; a run
    with ``ema`` gives its averaged weights.
    """
    state = torch.load(Path(out_dir) / "checkpoint.pt", map_location="cpu", weights_only=True)
    config = TrainConfig(**state["config"])
    score = build_score(config, state["size"])
    score.load_state_dict(state["model"])
    if state.get("ema") is not None:
        score.kernel.load_state_dict(state["ema"], strict=False)  # parameters only; buffers are constants
    return as_eps(score, config, state.get("skip_spectrum")).to(device), config


def generate_command(data_dir, profile_name: str | None = None) -> str:
    """The command that makes the data set this program expects in ``data_dir``."""
    return f"python -m labkit.sda.generate --out {data_dir}" + (f" --profile {profile_name}" if profile_name else "")


# ---------------------------------------------------------------------------- small pieces
class LearningRateFactor:
    """The lr multiplier after ``step`` optimizer steps: 1 - step / total ('linear') or 1 ('constant')."""

    def __init__(self, schedule: str, total_steps: int):
        self.linear, self.total = schedule == "linear", total_steps

    def __call__(self, step: int) -> float:
        return max(0.0, 1.0 - step / self.total) if self.linear else 1.0


STREAMS = ("init", "noise", "windows", "valid-windows", "valid-noise")












def _data_spec(attrs: dict) -> dict:
    return {k: attrs[k] for k in DatasetSpec.DEFAULTS if k in attrs}


def _check_resumable(state: dict, config: TrainConfig, world: int, data: dict, path: Path) -> None:
    check_resumable(state["config"], config, RUNTIME_FIELDS, state["world_size"], world, path)
    if state["data"] != data:
        changed = sorted(k for k in data if state["data"].get(k) != data[k])
        raise ValueError(f"{path} was trained on other data (differs in {changed}); use the same --data")


# ---------------------------------------------------------------------------- training
def train(config: TrainConfig, data_dir: str | os.PathLike, out_dir: str | os.PathLike, device=None,
          progress: bool = True, stop_after: int | None = None, resume: bool = True) -> list[dict]:
    """Train (or resume training) the window score network; returns the per-epoch rows.

    Args:
        config: the recipe (see :class:`TrainConfig`).
        data_dir: holds ``train.h5`` and ``valid.h5`` from ``python -m labkit.sda.generate``.
        out_dir: gets ``checkpoint.pt``, ``metrics.csv``, ``history.json`` (created).
        device: default CUDA if present (under torchrun: this process's GPU), else the CPU.
        stop_after: stop once this many epochs are done in total (simulates an interruption).
        resume: continue from ``out_dir/checkpoint.pt`` if it exists (a different config is an
            error); False starts over and overwrites the outputs.
    Returns:
        one dict per epoch: epoch, train_loss, valid_loss (both averaged over all processes),
        lr (of the epoch's first step), seconds.
    """
    world, rank, local_rank = torchrun_world()
    device = pick_device(device, local_rank)
    if config.amp == "auto":  # stored resolved, so that a resume on another device is noticed
        config = dataclasses.replace(config, amp="bf16" if device.type == "cuda" else "none")
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} (the global batch) must be divisible by the "
                         f"{world} processes")
    join_process_group(device, world)
    return _train(config, Path(data_dir), Path(out_dir), device, world, rank, progress, stop_after, resume)


def _train(config, data_dir, out, device, world, rank, progress, stop_after, resume) -> list[dict]:
    from tqdm.auto import tqdm

    for split in ("train", "valid"):
        if not (data_dir / f"{split}.h5").exists():
            raise FileNotFoundError(f"{data_dir / f'{split}.h5'} does not exist; make the data with "
                                    f"`{generate_command(data_dir)}`")
    cuda = device.type == "cuda"
    # The training windows: trajectory i at a random start drawn from this process's generator.
    windows = torch.Generator().manual_seed(stream_seed(config.seed, STREAMS, "windows", rank))
    train_set = TrajectoryDataset(data_dir / "train.h5", config.window, flatten=True, generator=windows)
    valid_set = TrajectoryDataset(data_dir / "valid.h5", config.window, flatten=True,
                                  generator=torch.Generator().manual_seed(
                                      stream_seed(config.seed, STREAMS, "valid-windows")))
    # Each access draws a fresh random window, so k copies of a set give k windows per trajectory.
    epoch_set = torch.utils.data.ConcatDataset([train_set] * config.windows_per_trajectory)
    valid_windows = torch.utils.data.ConcatDataset([valid_set] * config.windows_per_trajectory)
    # The same validation windows for every epoch and process; each process scores its share (maybe none).
    valid_x = torch.stack([valid_windows[i] for i in range(len(valid_windows))])[rank::world]
    data = _data_spec(train_set.attrs)
    size = train_set.data.shape[-1]
    memory = torch.channels_last if config.channels_last else torch.contiguous_format

    # The model: the same initial weights on every process; then each draws its own noise.
    torch.manual_seed(stream_seed(config.seed, STREAMS, "init"))
    score = build_score(config, size)
    net = score.kernel.to(device, memory_format=memory)
    torch.manual_seed(stream_seed(config.seed, STREAMS, "noise", rank))
    # The moving average, an fp32 copy of each parameter, updated after every optimizer step
    # (the lists of averages and of weights are made once; both are updated in place).
    ema = {name: p.detach().clone() for name, p in net.named_parameters()} if config.ema else None
    ema_pairs = (list(ema.values()), [p.detach() for p in net.parameters()]) if ema is not None else None
    if config.compile:
        net.compile()  # in place: the state_dict keys stay those of the plain network
    # Training goes through DDP (gradients averaged over processes); its buffers (the forcing channel,
    # the embedding's frequencies) are constants, so no per-step broadcast of them. The validation
    # calls the network directly: no collective there, processes may score different numbers of windows.
    model = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if cuda else None,
                                                broadcast_buffers=False) if world > 1 else net
    shape = (2 * config.window, size, size)
    # The skip's spectrum: every state of the training split (the same on every process).
    spectrum = power_spectrum(train_set.data) if config.skip_spectrum else None
    sde = VPSDE(as_eps(model, config, spectrum), shape, alpha=config.alpha, eta=config.eta).to(device)
    valid_sde = VPSDE(as_eps(net, config, spectrum), shape, alpha=config.alpha, eta=config.eta).to(device)

    # Every process sees batch_size / world windows per step; the order of epoch e depends on (seed, e).
    sampler = torch.utils.data.DistributedSampler(epoch_set, num_replicas=world, rank=rank, shuffle=True,
                                                  seed=config.seed)
    local_batch = config.batch_size // world
    steps_per_epoch = math.ceil(len(sampler) / local_batch)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  fused=True if cuda else None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, LearningRateFactor(config.schedule, config.epochs * steps_per_epoch))

    checkpoint = out / "checkpoint.pt"
    history, wandb_id = [], None
    if resume and checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        _check_resumable(state, config, world, data, checkpoint)
        score.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            for name, value in state["ema"].items():
                ema[name].copy_(value)
        rng = state["rng"][rank]
        torch.set_rng_state(rng["torch"])
        if cuda and rng["cuda"] is not None:
            torch.cuda.set_rng_state(rng["cuda"], device)
        windows.set_state(rng["windows"])
        history, wandb_id = state["history"], state.get("wandb_id")

    writer = rank == 0
    if writer:
        out.mkdir(parents=True, exist_ok=True)
        # Rows of epochs after the checkpoint (an interruption between the two writes) are dropped.
        write_text(out / "metrics.csv", ",".join(METRICS) + "\n" + "".join(csv_line(r, METRICS) for r in history))
    run = _wandb_run(config, data, wandb_id) if writer else None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp == "bf16")

    def global_mean(total: torch.Tensor, count: int) -> float:
        both = torch.stack([total.double(), torch.tensor(float(count), dtype=torch.float64, device=device)])
        if world > 1:
            dist.all_reduce(both)
        return (both[0] / both[1]).item()

    last = config.epochs if stop_after is None else min(stop_after, config.epochs)
    bar = tqdm(range(len(history), last), desc="sda", unit="epoch", initial=len(history), total=config.epochs,
               disable=not progress or not writer)
    for epoch in bar:
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        model.train()
        sampler.set_epoch(epoch)
        order = list(sampler)
        total = torch.zeros((), device=device)
        for start in range(0, len(order), local_batch):
            x = torch.stack([epoch_set[i] for i in order[start:start + local_batch]])
            x = x.to(device, non_blocking=True).contiguous(memory_format=memory)
            with autocast:
                loss = sde.loss(x, weighting=config.loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            if ema_pairs is not None:  # ema <- decay ema + (1 - decay) weights, in one fused call
                torch._foreach_lerp_(*ema_pairs, 1 - config.ema)
            total += loss.detach() * len(x)  # accumulated on the device: no sync per step
        train_loss = global_mean(total, len(order))
        valid_loss = global_mean(*_validate(valid_sde, net, valid_x, local_batch, device, memory, autocast,
                                            config.loss, stream_seed(config.seed, STREAMS, "valid-noise", rank)))
        row = dict(epoch=epoch + 1, train_loss=train_loss, valid_loss=valid_loss, lr=lr,
                   seconds=time.perf_counter() - started)
        history.append(row)
        bar.set_postfix(train=f"{train_loss:.4f}", valid=f"{valid_loss:.4f}", lr=f"{lr:.2e}")

        if writer:
            with open(out / "metrics.csv", "a") as f:
                f.write(csv_line(row, METRICS))
            if run is not None:
                run.log({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
        if (epoch + 1) % config.checkpoint_every and epoch + 1 != last:
            continue  # the checkpoint (and history.json) at the next checkpoint epoch
        rng = dict(torch=torch.get_rng_state(), cuda=torch.cuda.get_rng_state(device) if cuda else None,
                   windows=windows.get_state())
        rngs = [rng]
        if world > 1:  # rank 0 saves every process's random states
            rngs = [None] * world
            dist.all_gather_object(rngs, rng)
        if writer:
            state = dict(model=score.state_dict(), ema=ema, optimizer=optimizer.state_dict(),
                         scheduler=scheduler.state_dict(), rng=rngs, epoch=epoch + 1, history=history,
                         config=dataclasses.asdict(config), data=data, size=size, world_size=world,
                         wandb_id=run.id if run is not None else wandb_id, skip_spectrum=spectrum)
            atomic_write(checkpoint, lambda tmp: torch.save(state, tmp))
            summary = dict(config=dataclasses.asdict(config), data=data, world_size=world,
                           parameters=parameter_count(net)[0], steps_per_epoch=steps_per_epoch, rows=history)
            write_text(out / "history.json", json.dumps(summary, indent=1))
    bar.close()
    if run is not None:
        run.finish()
    return history


@torch.no_grad()
def _validate(sde, model, x_all, batch, device, memory, autocast, weighting, seed) -> tuple[torch.Tensor, int]:
    """Sum of the per-batch VPSDE losses x batch sizes over this process's fixed validation windows.

    The noise (t, eps) comes from ``seed`` every epoch, inside ``fork_rng``: the training's random
    stream is left exactly where it was (that is what keeps a resumed run identical).
    """
    model.eval()
    total = torch.zeros((), device=device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for x in x_all.split(batch) if len(x_all) else ():  # (an empty tensor splits into one empty piece)
            x = x.to(device).contiguous(memory_format=memory)
            with autocast:
                total += sde.loss(x, weighting=weighting).float() * len(x)
    return total, len(x_all)


def _wandb_run(config: TrainConfig, data: dict, run_id: str | None):
    """A Weights & Biases run if ``wandb`` is installed and ``$WANDB_PROJECT`` is set; else None."""
    if not os.environ.get("WANDB_PROJECT"):
        return None
    try:
        import wandb
    except ImportError:
        return None
    return wandb.init(project=os.environ["WANDB_PROJECT"], id=run_id, resume="allow",
                      config={**dataclasses.asdict(config), "data": data})


# ---------------------------------------------------------------------------- command line
def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def main(argv: list[str] | None = None) -> list[dict]:
    from labkit.profile import profile

    parser = argparse.ArgumentParser(prog="python -m labkit.sda.train", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="folder with train.h5 and valid.h5")
    parser.add_argument("--out", required=True, help="folder for checkpoint.pt, metrics.csv, history.json")
    parser.add_argument("--profile", choices=("quick", "full", "paper"), default=None,
                        help="sizes (default: $LABKIT_PROFILE, else full with CUDA, quick without)")
    parser.add_argument("--epochs", type=int, default=None, help="override the profile's epochs")
    parser.add_argument("--batch-size", type=int, default=None, help="global batch (override the profile's)")
    parser.add_argument("--hidden-channels", type=_ints, default=None, help="e.g. 96,192,384")
    parser.add_argument("--hidden-blocks", type=_ints, default=None, help="e.g. 3,3,3")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--schedule", choices=SCHEDULES, default="linear")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--amp", choices=AMPS, default="auto", help="auto: bf16 on CUDA, none on the CPU")
    parser.add_argument("--grad-clip", type=float, default=None)
    parser.add_argument("--windows-per-trajectory", type=int, default=None,
                        help="random windows of each trajectory per epoch (default: the profile's)")
    parser.add_argument("--checkpoint-every", type=int, default=None, help="epochs between checkpoints")
    parser.add_argument("--skip", action="store_true",
                        help="eps = sigma x/(mu^2+sigma^2) + mu F (not the original's; for short trainings; "
                             "default: the profile's, on for quick and full)")
    parser.add_argument("--skip-spectrum", action="store_true",
                        help="the skip's Gaussian term with the training data's power spectrum (needs --skip "
                             "or a profile with it; default: the profile's, on for quick and full)")
    parser.add_argument("--skip-modes", action="store_true",
                        help="scale the network's term mode by mode with the data's spectrum (needs --skip-spectrum)")
    parser.add_argument("--loss", choices=LOSS_WEIGHTINGS, default=None,
                        help="loss weighting: eps (the original) or v (needs --skip; default: the profile's)")
    parser.add_argument("--ema", type=float, default=None,
                        help="decay of a moving average of the weights, e.g. 0.999 (default: the profile's)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    active = profile(args.profile)
    sizes = active.sda
    data = Path(args.data)
    if not all((data / f"{split}.h5").exists() for split in ("train", "valid")):
        print(f"no data set in {data}; make it with:\n  {generate_command(data, active.name)}", file=sys.stderr)
        raise SystemExit(2)
    config = TrainConfig(epochs=args.epochs or sizes.train_epochs, batch_size=args.batch_size or sizes.train_batch,
                         hidden_channels=args.hidden_channels or sizes.hidden_channels,
                         hidden_blocks=args.hidden_blocks or sizes.hidden_blocks, lr=args.lr,
                         schedule=args.schedule, seed=args.seed, amp=args.amp, grad_clip=args.grad_clip,
                         channels_last=args.channels_last, compile=args.compile,
                         windows_per_trajectory=args.windows_per_trajectory or sizes.train_windows,
                         checkpoint_every=args.checkpoint_every or sizes.train_checkpoint_every,
                         skip=args.skip or sizes.train_skip,
                         skip_spectrum=args.skip_spectrum or sizes.train_skip_spectrum,
                         skip_modes=args.skip_modes, loss=args.loss or sizes.train_loss,
                         ema=args.ema if args.ema is not None else sizes.train_ema)
    with closing_process_group():
        history = train(config, data, args.out, device=args.device, progress=not args.no_progress,
                        resume=not args.no_resume)
    if torchrun_world()[1] == 0 and history:
        final = history[-1]
        print(f"epoch {final['epoch']}/{config.epochs}: train loss {final['train_loss']:.4f}, "
              f"valid loss {final['valid_loss']:.4f} -> {Path(args.out) / 'checkpoint.pt'}")
    return history


if __name__ == "__main__":
    main()
