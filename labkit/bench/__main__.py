"""``python -m labkit.bench <suite> [--device cuda|cpu] [--quick] [--out DIR]``."""
from __future__ import annotations

import argparse
import importlib
import sys

import torch

from labkit.bench import SUITES
from labkit.bench.harness import environment, format_table, write_results
from labkit.runs import sigterm_as_keyboard_interrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit.bench", description=__doc__)
    parser.add_argument("suite", choices=sorted(SUITES), help="which benchmark suite to run")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats")
    parser.add_argument("--out", default=None, help="results folder (default: bench/results)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but CUDA is not available; use --device cpu")
    # `timeout` sends SIGTERM: treat it as Ctrl-C, so suites that catch KeyboardInterrupt keep the
    # rows measured so far (and say "interrupted") instead of dying without writing anything.
    module, func = SUITES[args.suite].split(":")
    with sigterm_as_keyboard_interrupt():
        config, rows = getattr(importlib.import_module(module), func)(device, args.quick)
    path = write_results(args.suite, rows, environment(device), {**config, "quick": args.quick}, args.out)

    print(format_table(rows, list(dict.fromkeys(k for row in rows for k in row))))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
