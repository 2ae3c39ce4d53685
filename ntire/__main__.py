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
from ntire.errors import NtireError, failed_file_operation, say_on_own_line

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
    try:
        return int(args._run(args) or 0)
    except NtireError as e:
        say_on_own_line(f"ntire {args.command}: error: {e}")
        return 2
    except KeyboardInterrupt:
        say_on_own_line(f"ntire {args.command}: interrupted")
        return 130
    except Exception as e:
        error = failed_file_operation(e)  # a full disk, a read-only folder, a path under a file
        if error is None:
            raise
        say_on_own_line(f"ntire {args.command}: error: {error}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
