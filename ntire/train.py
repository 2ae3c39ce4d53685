"""Train an EDSR or MDSR network, in one process or many:

    accelerate launch ntire/train.py --model edsr-baseline --scale 2 --data data ...
    ntire train --config demo                 # the same in this process

A thin launcher: the options come from ntire.config (ntire.options makes the flags), the training
from ntire.training.fit.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # `python ntire/train.py` (which `accelerate launch` runs) puts ntire/ itself first on
    # sys.path, where its modules (config, data, metrics, ...) would shadow top-level ones of the
    # same name; put the repository root there instead.
    _here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _here:
        sys.path[0] = os.path.dirname(_here)

import argparse

from ntire.errors import run_command

HELP = "train an EDSR or MDSR network (paper recipe; ready-made setups in ntire/configs/)"


def build_parser(prog: str = "ntire/train.py") -> argparse.ArgumentParser:
    """The training command line."""
    from ntire.options import add_train_arguments

    parser = argparse.ArgumentParser(prog=prog, description=HELP)
    add_train_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Train as the parsed options say, then print a line per validated scale."""
    from ntire.config import config_to_yaml
    from ntire.options import config_from_args
    from ntire.training.fit import fit

    config = config_from_args(args)
    if args.print_config:
        print(config_to_yaml(config), end="")
        return 0
    result = fit(config)
    if result.validation is not None:
        for scale_result in result.validation.scales.values():
            print(scale_result.line())
    if result.ema_validation is not None:  # the averaged weights, beside the raw ones
        for scale_result in result.ema_validation.scales.values():
            print(f"{scale_result.line()} [EMA weights: {result.ema_model_dir}]")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python ntire/train.py ...` / `accelerate launch ntire/train.py ...`."""
    args = build_parser().parse_args(argv)
    return run_command("ntire train", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
