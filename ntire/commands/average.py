"""`ntire average RUN --last K | --best K [--out DIR]`: average a run's checkpoints into a model.

The element-wise mean of the weights of the run's last K checkpoints, or of its best K by
validation PSNR, written as a normal model folder (default `RUN/model-avg-last<K>` or
`-best<K>`) and scored on the run's validation images beside the best single checkpoint. Only
kept checkpoints can be averaged: train with `--keep-last` at least K (and, for --best, validate
at every save). See ntire/training/average.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ntire.options import positive_int

HELP = "average a training run's last K or best K checkpoints into one model, scored beside the best single one"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--last", type=positive_int, metavar="K", help="average the newest K checkpoints")
    which.add_argument("--best", type=positive_int, metavar="K",
                       help="average the K checkpoints with the highest validation PSNR")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="model folder to write (default RUN/model-avg-last<K> or RUN/model-avg-best<K>)")
    parser.add_argument("--force", action="store_true", help="replace an existing model folder at --out")
    parser.add_argument("--device", default=None, help="device for validation (default cuda if available, else cpu)")
    parser.add_argument("run", type=Path, metavar="RUN", help="a training run's output folder (holds checkpoints/)")


def run(args: argparse.Namespace) -> int:
    from ntire.errors import CheckpointError
    from ntire.options import resolve_device
    from ntire.training.average import average_run

    device = resolve_device(args.device)
    out = args.out or args.run / (f"model-avg-last{args.last}" if args.last else f"model-avg-best{args.best}")
    if out.exists() and not args.force:
        raise CheckpointError(f"{out}: already exists; give --force to replace it, or another --out")
    result = average_run(args.run, out, last=args.last, best=args.best, device=device)
    for line in result.lines():
        print(line)
    return 0
