"""The Kolmogorov-flow data set: generation (resumable, atomic) and the training windows.

Layout, as in the SDA paper's data: three HDF5 files ``train.h5``, ``valid.h5``, ``test.h5``,
each with one dataset ``x`` of shape (trajectories, 64, 2, 64, 64) float32: 64 velocity snapshots
0.2 time units apart, channels (u, v), array axes (x, y), after a 4x4 block-mean of the 256^2
simulation. The trajectories are split 80/10/10 by index like the original (``int(0.8 n)``,
``int(0.9 n)``: 819 / 102 / 103 of 1,024). Every file carries the whole recipe as attributes
(solver, prior, sizes, seed, code version), and reading checks them.

How an interrupted run loses nothing: trajectories are simulated in batches, and each finished
batch is written at once to ``<out>/partial/traj_<start>_<stop>.npy`` (to a temporary name,
then renamed, so a file there is always complete). A rerun with the same arguments skips the
trajectories already on disk. When all are there, each split is written to a temporary HDF5
file that is renamed into place, and the partial files are removed.

Trajectory ``i`` starts from an initial condition drawn on the CPU with a generator seeded by
``(seed, i)``: the initial states do not depend on the batch size or the device. The
trajectories do, through float rounding (batched FFTs round differently, ~1e-6), and the flow is
chaotic: over the 25.6 time units of a trajectory such differences grow to the size of the
field. Two runs with different batch sizes therefore give different trajectories with the same
statistics; a resumed run uses the same batches as before for what is already on disk.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from labkit.data import atomic_write
from labkit.sda.flow import KolmogorovFlow

__all__ = ["DatasetSpec", "generate", "read_split", "TrajectoryDataset", "SPLITS"]

SPLITS = ("train", "valid", "test")
FORMAT = "labkit.sda.kolmogorov/1"


class DatasetSpec(dict):
    """Everything that determines the data; stored as the HDF5 attributes of every split.

    Keys: trajectories, spinup and length (snapshots discarded / kept), size and factor (fine
    grid, coarsening), the solver's parameters, the prior's, the seed, and the simulation dtype.
    """

    DEFAULTS = dict(trajectories=1024, spinup=64, length=64, size=256, factor=4, dt=0.2, reynolds=1000.0,
                    drag=0.1, forcing_amplitude=1.0, forcing_wavenumber=4, grid_offset=0.5, courant=0.5,
                    max_velocity=7.0, prior_max_velocity=3.0, prior_peak_wavenumber=4.0, prior_variance=0.25,
                    seed=0, dtype="float32")

    def __init__(self, **overrides):
        unknown = set(overrides) - set(self.DEFAULTS)
        if unknown:
            raise TypeError(f"unknown dataset parameters {sorted(unknown)}; known: {sorted(self.DEFAULTS)}")
        super().__init__({**self.DEFAULTS, **overrides})
        for key in ("trajectories", "spinup", "length", "size", "factor", "forcing_wavenumber", "seed"):
            self[key] = int(self[key])
        if self["trajectories"] < 1 or self["length"] < 1 or self["spinup"] < 0:
            raise ValueError("need trajectories >= 1, length >= 1 and spinup >= 0")
        if self["size"] % self["factor"]:
            raise ValueError(f"factor {self['factor']} must divide size {self['size']}")
        if self["dtype"] not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self['dtype']!r}")

    def flow(self) -> KolmogorovFlow:
        keys = ("size", "dt", "reynolds", "drag", "forcing_amplitude", "forcing_wavenumber", "grid_offset",
                "max_velocity", "courant")
        return KolmogorovFlow(**{k: self[k] for k in keys})

    def split_ranges(self) -> dict[str, range]:
        """Trajectory indices of each split: the original's ``int(0.8 n)`` and ``int(0.9 n)`` cuts."""
        n = self["trajectories"]
        i, j = int(0.8 * n), int(0.9 * n)
        return {"train": range(0, i), "valid": range(i, j), "test": range(j, n)}

    def slug(self) -> str:
        """A folder name that changes with the data's parameters, e.g. ``kolmogorov-256-4-1024x64+64-s0``."""
        s = self
        name = f"kolmogorov-{s['size']}-{s['factor']}-{s['trajectories']}x{s['spinup']}+{s['length']}-s{s['seed']}"
        differs = sorted(k for k in self.DEFAULTS
                         if k not in ("size", "factor", "trajectories", "spinup", "length", "seed") and s[k] != self.DEFAULTS[k])
        return name + "".join(f"-{k}{s[k]}" for k in differs)

    @property
    def snapshot_shape(self) -> tuple[int, int, int, int]:
        side = self["size"] // self["factor"]
        return (self["length"], 2, side, side)


def initial_condition(flow: KolmogorovFlow, spec: DatasetSpec, index: int) -> torch.Tensor:
    """Trajectory ``index``'s initial velocity (2, size, size), drawn on the CPU from (seed, index)."""
    generator = torch.Generator().manual_seed(spec["seed"] * 1_000_003 + index)
    return flow.prior(generator=generator, dtype=getattr(torch, spec["dtype"]),
                      max_velocity=spec["prior_max_velocity"], peak_wavenumber=spec["prior_peak_wavenumber"],
                      variance=spec["prior_variance"])


def simulate(spec: DatasetSpec, indices: range, device="cpu", flow: KolmogorovFlow | None = None) -> np.ndarray:
    """Simulate trajectories ``indices`` together; returns (len(indices), length, 2, side, side) float32."""
    flow = flow or spec.flow()
    x = torch.stack([initial_condition(flow, spec, i) for i in indices]).to(device)
    # Spin-up and kept states in one run; the spin-up snapshots are coarse, so dropping them costs little.
    states = flow.trajectory(x, spec["spinup"] + spec["length"], transform=lambda s: flow.coarsen(s, spec["factor"]))
    return states[:, spec["spinup"]:].float().cpu().numpy()


_PART = re.compile(r"traj_(\d{6})_(\d{6})\.npy$")


def _save_npy_synced(path: Path, array: np.ndarray) -> None:
    """np.save, flushed to the disk before returning (the part must survive a crash once renamed)."""
    with open(path, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())


def _done_parts(partial: Path, spec: DatasetSpec) -> dict[int, Path]:
    """Trajectory index -> the partial file holding it (files with the wrong shape are an error)."""
    done = {}
    for path in sorted(partial.glob("traj_*.npy")):
        match = _PART.match(path.name)
        if not match:
            continue
        start, stop = int(match[1]), int(match[2])
        shape = np.load(path, mmap_mode="r").shape
        if shape != (stop - start, *spec.snapshot_shape):
            raise ValueError(f"{path} has shape {shape}, expected {(stop - start, *spec.snapshot_shape)}; "
                             f"delete it and rerun to simulate those trajectories again")
        done.update({i: path for i in range(start, stop)})
    return done


def _code_version() -> str:
    import labkit
    return getattr(labkit, "__version__", "unknown")


def generate(out: str | os.PathLike, spec: DatasetSpec | None = None, *, batch: int = 64, device=None,
             progress: bool = True, stop_after_batches: int | None = None) -> dict[str, Path]:
    """Simulate the data set described by ``spec`` into ``out/{train,valid,test}.h5``; resumable.

    Args:
        out: output folder (created).
        spec: the data's parameters (default: the original's, 1,024 trajectories).
        batch: trajectories simulated together (memory grows linearly; 256 at 256^2 float32 is
            a few GB on a GPU).
        device: where to simulate (default: CUDA if present).
        stop_after_batches: stop after this many new batches (simulates an interruption; tests).
    Returns:
        split name -> path of its HDF5 file (empty if stopped early).
    """
    import h5py
    from tqdm.auto import tqdm

    spec = spec if spec is not None else DatasetSpec()
    if not isinstance(spec, DatasetSpec):
        spec = DatasetSpec(**spec)
    if int(batch) != batch or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(out)
    files = {name: out / f"{name}.h5" for name in SPLITS}
    if all(path.exists() for path in files.values()):
        for name, path in files.items():
            read_split(path, expect=spec)  # raises if the files were made with other parameters
        return files

    partial = out / "partial"
    partial.mkdir(parents=True, exist_ok=True)
    spec_file = partial / "spec.json"
    if spec_file.exists():
        previous = json.loads(spec_file.read_text())
        if previous != dict(spec):
            changed = sorted(k for k in spec if previous.get(k) != spec[k])
            raise ValueError(f"{partial} holds an unfinished run with other parameters ({changed}); "
                             f"rerun with the same parameters to resume it, or delete {partial}")
    else:
        spec_file.write_text(json.dumps(dict(spec), indent=1))

    done = _done_parts(partial, spec)
    todo = [i for i in range(spec["trajectories"]) if i not in done]
    flow = spec.flow()
    bar = tqdm(total=spec["trajectories"], initial=len(done), desc="trajectories", unit="traj", disable=not progress)
    new_batches = 0
    while todo:
        # the next run of consecutive missing indices, at most `batch` long
        start = todo[0]
        stop = start + 1
        while stop < start + batch and stop - start < len(todo) and todo[stop - start] == stop:
            stop += 1
        indices = range(start, stop)
        part = simulate(spec, indices, device=device, flow=flow)
        atomic_write(partial / f"traj_{start:06d}_{stop:06d}.npy", lambda tmp: _save_npy_synced(tmp, part))
        todo = todo[len(indices):]
        bar.update(len(indices))
        new_batches += 1
        if stop_after_batches is not None and new_batches >= stop_after_batches and todo:
            bar.close()
            return {}
    bar.close()

    done = _done_parts(partial, spec)
    parts = {path: np.load(path, mmap_mode="r") for path in set(done.values())}  # each part opened once
    attrs = {**spec, "format": FORMAT, "code_version": _code_version(), "substeps": flow.substeps}

    def write_split(tmp: Path, name: str, indices: range) -> None:
        with h5py.File(tmp, "w") as f:
            dset = f.create_dataset("x", shape=(len(indices), *spec.snapshot_shape), dtype=np.float32)
            for row, i in enumerate(indices):
                dset[row] = parts[done[i]][i - int(_PART.match(done[i].name)[1])]
            f.attrs.update(attrs)
            f.attrs["split"] = name
            f.attrs["first_trajectory"] = indices.start

    for name, indices in spec.split_ranges().items():
        atomic_write(files[name], lambda tmp: write_split(tmp, name, indices))
    parts.clear()  # drop the memory maps before deleting their files
    shutil.rmtree(partial)
    return files


def read_split(path: str | os.PathLike, expect: dict | None = None, load: bool = True):
    """Open one split file and check it; returns (array or None, attributes as a dict).

    Checks: the file exists and is readable HDF5, it has ``x`` of shape (n, length, 2, side, side)
    float32 matching its own attributes, and (if ``expect`` is given) its parameters equal those.
    """
    import h5py

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; make the data with `python -m labkit.sda.generate "
                                f"--out {path.parent}`")
    try:
        f = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path} is not a readable HDF5 file ({error}); delete it and generate it again") from None
    with f:
        if "x" not in f:
            raise ValueError(f"{path} has no dataset 'x' (found {list(f)}); it was not written by labkit.sda.generate")
        attrs = {key: (value.item() if hasattr(value, "item") else value) for key, value in f.attrs.items()}
        if attrs.get("format") != FORMAT:
            raise ValueError(f"{path} has format {attrs.get('format')!r}, expected {FORMAT!r}; regenerate it")
        spec = DatasetSpec(**{k: attrs[k] for k in DatasetSpec.DEFAULTS if k in attrs})
        x = f["x"]
        expected = spec.snapshot_shape
        if x.ndim != 5 or tuple(x.shape[1:]) != expected or x.dtype != np.float32:
            raise ValueError(f"{path}: 'x' is {x.dtype} {x.shape}, its attributes say (n, {', '.join(map(str, expected))}) "
                             f"float32; the file is damaged or was changed, regenerate it")
        if expect is not None:
            expect = DatasetSpec(**expect) if not isinstance(expect, DatasetSpec) else expect
            changed = sorted(k for k in expect if not _same(attrs.get(k), expect[k]))
            if changed:
                raise ValueError(f"{path} was generated with other parameters: "
                                 + ", ".join(f"{k}={attrs.get(k)!r} (expected {expect[k]!r})" for k in changed))
        array = x[...] if load else None
    return array, attrs


def _same(a, b) -> bool:
    if isinstance(b, float) and isinstance(a, (int, float)):
        return math.isclose(a, b, rel_tol=1e-12)
    return a == b


class TrajectoryDataset(torch.utils.data.Dataset):
    """Windows of ``window`` consecutive states from the trajectories of one split file.

    Item ``i`` is a window of trajectory ``i`` starting at a uniformly random time (so one epoch
    sees each trajectory once, at a fresh position), shape (window, 2, H, W), or
    (window * 2, H, W) with ``flatten=True`` (the score network's input). Like the original, the
    whole split is loaded into memory (819 trajectories are 1.7 GB in float32).

    ``generator`` (a ``torch.Generator``) makes the window positions reproducible.
    """

    def __init__(self, path: str | os.PathLike, window: int = 5, flatten: bool = True,
                 generator: torch.Generator | None = None):
        array, self.attrs = read_split(path)
        self.data = torch.from_numpy(array)
        length = self.data.shape[1]
        if int(window) != window or not 1 <= window <= length:
            raise ValueError(f"window must be an integer in [1, {length}] (the trajectory length), got {window!r}")
        self.window = int(window)
        self.flatten = bool(flatten)
        self.generator = generator

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        start = int(torch.randint(0, self.data.shape[1] - self.window + 1, (), generator=self.generator))
        x = self.data[i, start:start + self.window]
        return x.flatten(0, 1) if self.flatten else x
