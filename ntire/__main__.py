"""The `ntire` command line: one table of subcommands, each a module in ntire/commands/."""

from __future__ import annotations

import argparse
import sys

from ntire import __version__
from ntire.commands import (
    average,
    benchmark,
    compare,
    convert,
    data,
    degrade,
    demo,
    evaluate,
    export,
    submit,
    train,
    tune,
    upscale,
)
from ntire.errors import run_command

# name -> module with HELP, add_arguments(parser), run(args). Keep in the order a user meets them.
COMMANDS: dict = {
    "demo": demo,
    "data": data,
    "degrade": degrade,
    "train": train,
    "tune": tune,
    "average": average,
    "upscale": upscale,
    "evaluate": evaluate,
    "compare": compare,
    "convert": convert,
    "export": export,
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
    return run_command(f"ntire {args.command}", lambda: args._run(args))


if __name__ == "__main__":
    sys.exit(main())
