"""`ntire train`: train in this process; `accelerate launch ntire/train.py` takes the same options
and runs them on several processes or machines."""

from __future__ import annotations

import argparse

from ntire.options import add_train_arguments
from ntire.train import HELP, run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_train_arguments(parser)


__all__ = ["HELP", "add_arguments", "run"]
