"""What every resumable training run in labkit shares: processes, seeds, metric files, resume checks.

The training programs (``python -m labkit.sda.train``, ``python -m labkit.vit.train``) run alone or
as one of several processes under ``torchrun`` (data-parallel), write their metrics with atomic
renames, and refuse to resume a checkpoint written by another recipe or another number of
processes (the random states are per process, so the continuation would not be the same run).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
from pathlib import Path

import torch

from labkit.data import atomic_write


def torchrun_world() -> tuple[int, int, int]:
    """(world size, rank, local rank) from torchrun's environment; (1, 0, 0) when run alone."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return 1, 0, 0
    return size, int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))


def pick_device(device, local_rank: int) -> torch.device:
    """``device``, or CUDA when present (this process's GPU under torchrun), else the CPU."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)  # one GPU per process under torchrun
        torch.cuda.set_device(device)
    return device


def join_process_group(device: torch.device, world_size: int) -> None:
    """Join torchrun's process group (NCCL on GPUs, gloo on the CPU) when there is more than one process.

    Left open for later calls in this process (re-creating a group after destroying it can hang);
    :func:`closing_process_group` around a program's main closes it at the end.
    """
    import torch.distributed as dist

    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


@contextlib.contextmanager
def closing_process_group():
    """Destroy the process group (if one was joined) when the block ends, however it ends."""
    import torch.distributed as dist

    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@contextlib.contextmanager
def sigterm_as_keyboard_interrupt():
    """Inside the block, SIGTERM (what `timeout` and most job killers send) raises KeyboardInterrupt,
    so the code that keeps partial results on Ctrl-C keeps them then too. The old handler comes back after."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stream_seed(seed: int, streams: tuple[str, ...], stream: str, rank: int = 0) -> int:
    """A separate seed for each use of randomness (``stream``) and each process, all derived from ``seed``."""
    return (seed * 1_000_003 + rank) * len(streams) + streams.index(stream)


def csv_line(row: dict, columns: tuple[str, ...]) -> str:
    """One CSV line; floats written with ``repr`` so they read back exactly."""
    return ",".join(repr(row[k]) if isinstance(row[k], float) else str(row[k]) for k in columns) + "\n"


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def check_resumable(saved: dict, config, runtime_fields: tuple[str, ...], saved_world: int, world_size: int,
                    path: Path) -> None:
    """Raise unless a checkpoint (its config as a dict, its world size) can continue this run.

    ``runtime_fields`` may differ (how fast the run goes, not what it computes).
    """
    saved = type(config)(**saved)
    changed = [f.name for f in dataclasses.fields(config)
               if f.name not in runtime_fields and getattr(saved, f.name) != getattr(config, f.name)]
    if changed:
        raise ValueError(f"{path} was written by a run with another config: "
                         + ", ".join(f"{k}={getattr(saved, k)!r} (now {getattr(config, k)!r})" for k in changed)
                         + "; pass the same settings to resume, or start over (--no-resume / resume=False, "
                           "or another output folder)")
    if saved_world != world_size:
        raise ValueError(f"{path} was written by {saved_world} process(es), this run has {world_size}; "
                         "resume with the same number (the random states are per process)")
