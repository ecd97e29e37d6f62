"""Make the Kolmogorov-flow data set: ``python -m labkit.sda.generate --out data/kolmogorov``.

The sizes come from the profile (``--profile paper`` is the original's 1,024 trajectories at
256^2); any of them can be overridden. Rerunning the same command resumes an interrupted run
(see :mod:`labkit.sda.data`). Examples::

    python -m labkit.sda.generate --out data/kolmogorov --profile paper --batch 256
    python -m labkit.sda.generate --out /tmp/kf --trajectories 8 --size 64 --factor 1 --device cpu
"""
from __future__ import annotations

import argparse
import time

from labkit.profile import profile
from labkit.sda.data import DatasetSpec, generate, read_split


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m labkit.sda.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder for train.h5, valid.h5, test.h5")
    parser.add_argument("--profile", choices=("quick", "full", "paper"), default=None,
                        help="sizes (default: $LABKIT_PROFILE, else full with CUDA, quick without)")
    for name in ("trajectories", "size", "factor", "spinup", "length", "seed", "batch"):
        parser.add_argument(f"--{name}", type=int, default=None)
    parser.add_argument("--dtype", choices=("float32", "float64"), default=None)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    args = parser.parse_args(argv)

    sizes = vars(profile(args.profile).sda).copy()
    batch = args.batch or sizes.pop("batch")
    sizes = {k: v for k, v in sizes.items() if k in DatasetSpec.DEFAULTS}  # the profile also holds training sizes
    overrides = {k: getattr(args, k) for k in ("trajectories", "size", "factor", "spinup", "length", "seed", "dtype")}
    spec = DatasetSpec(**{**sizes, **{k: v for k, v in overrides.items() if v is not None}})
    started = time.perf_counter()
    files = generate(args.out, spec, batch=batch, device=args.device)
    seconds = time.perf_counter() - started
    for name, path in files.items():
        read_split(path, load=False)  # check what was written
        print(f"{name}: {path}")
    print(f"{spec['trajectories']} trajectories x {spec['spinup'] + spec['length']} snapshots at "
          f"{spec['size']}^2 in {seconds:.1f} s")
    return {name: str(path) for name, path in files.items()}


if __name__ == "__main__":
    main()
