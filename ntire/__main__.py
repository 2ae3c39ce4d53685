"""The `ntire` command line: one table of subcommands, each a module in ntire/commands/."""

from __future__ import annotations

import argparse
import sys

from ntire import __version__
from ntire.commands import convert
from ntire.commands import data
from ntire.commands import demo
from ntire.commands import degrade
from ntire.commands import evaluate
from ntire.commands import train
from ntire.commands import tune
from ntire.commands import upscale
from ntire.commands import submit
from ntire.commands import benchmark
from ntire.errors import NtireError

# name -> module with HELP, add_arguments(parser), run(args). Keep in the order a user meets them.
COMMANDS: dict = {
    "demo": demo,
    "data": data,
    "degrade": degrade,
    "train": train,
    "tune": tune,
    "upscale": upscale,
    "evaluate": evaluate,
    "convert": convert,
    "submit": submit,
    "benchmark": benchmark,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ntire",
        description="Train, tune and ship EDSR/MDSR super-resolution models for NTIRE.",
    )
    parser.add_argument("--version", action="version", version=f"ntire {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in COMMANDS.items():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except NtireError as e:
        print(f"ntire {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ntire {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
