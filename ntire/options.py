"""Command-line options: the training flags derived from ntire.config, and the argument types
every command shares (positive integers, devices).

Every training option is defined once, as a field of a config dataclass with its docstring
(ntire.config). This module walks those fields and makes one flag per field: its dotted name
(`--data.batch-size`, `--optim.lr`, `--max-steps`), plus the short flags the field declares with
`flag(...)` (`--batch-size`, `--lr`), with the docstring as help, choices from a Literal, a
`--x/--no-x` pair for a bool and the number of values from a tuple. The parsed flags become the
same nested overrides `--set KEY=VALUE` and YAML files give, so all three meet in
`ntire.config.build_config` and its validation.

This module imports no torch at import time, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any, Literal, TypeVar

from ntire.config import MODEL_PRESETS, TrainConfig, build_config
from ntire.config_io import Option, from_dict, merge, options, parse_set
from ntire.errors import ConfigError, one_line
from ntire.values import TILE_HELP, parse_bytes, parse_tile

T = TypeVar("T")

LAUNCHER_FLAGS = ("config", "model", "set", "print_config")
"""Destinations of the flags that are not config fields."""

CONFIG_HELP = (
    "training config YAML: a path or a shipped name (demo, edsr_x2, ...; see ntire/configs/). "
    "Default: none, the built-in defaults (EDSR baseline x2 on the sample data in data/sample)"
)

SET_HELP = "override any training config field with a YAML value, e.g. --set data.valid_tile=null (repeatable)"


def add_config_file_arguments(parser: argparse.ArgumentParser) -> None:
    """`--config FILE` and `--set KEY=VALUE`, the training config's file and overrides, the same
    for every command that builds one (`ntire train`, `ntire tune`): `config_from_args` reads them."""
    parser.add_argument("--config", metavar="FILE", default=None, help=CONFIG_HELP)
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", default=[], help=SET_HELP)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The training options (`ntire train` and `ntire/train.py`): --config, --model, --set,
    --print-config, then one flag per config field, grouped by section."""
    p = parser
    add_config_file_arguments(p)
    p.add_argument("--model", choices=tuple(MODEL_PRESETS), help="network preset (replaces the config's architecture)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    add_config_arguments(p, TrainConfig)


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, title: str | None = None) -> None:
    """One flag per leaf field of the config dataclass `cls`, in a group per section (top-level
    fields in the group `title`, default "run options")."""
    p = parser
    groups: dict[str, argparse._ArgumentGroup] = {}
    for option in options(cls):
        section = option.path.rpartition(".")[0] or "run"
        if section not in groups:
            groups[section] = p.add_argument_group(f"{section} options" if section != "run" else title or "run options")
        _add_option(groups[section], option)


def _add_option(group: argparse._ArgumentGroup, option: Option) -> None:
    names = [f"--{option.path.replace('_', '-')}", *option.flags]
    kwargs: dict[str, Any] = {"dest": option.path, "default": None}
    help_text = option.doc.replace("%", "%%")
    hint = _non_optional(option.hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if option.parse is not None:
        kwargs["type"] = argument_type(option.parse, option.path.rpartition(".")[2])
        kwargs["metavar"] = option.metavar or "VALUE"
    elif hint is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif origin is Literal:
        kwargs["choices"] = args
        kwargs["type"] = _typed(type(args[0]), names[0])
    elif origin is tuple:
        item = args[0] if args else str
        if typing.get_origin(item) is Literal:  # several of a fixed set, e.g. tracks or scales
            kwargs["choices"] = typing.get_args(item)
            item = type(kwargs["choices"][0])
        kwargs["type"] = _typed(item, names[0])
        kwargs["nargs"] = "+" if len(args) == 2 and args[1] is Ellipsis else len(args)
        kwargs["metavar"] = option.metavar or (None if "choices" in kwargs else item.__name__.upper())
    elif hint in (int, float, str):
        kwargs["type"] = _typed(hint, names[0])
        kwargs["metavar"] = option.metavar or {int: "N", float: "X", str: "TEXT"}[hint]
    else:  # pragma: no cover - a new field type needs a rule here (a test builds every flag)
        raise TypeError(f"{option.path}: no command-line form for {hint}")
    if kwargs.get("metavar") is None:
        kwargs.pop("metavar", None)
    default = option.default
    shown = "none" if default is None else " ".join(map(str, default)) if isinstance(default, tuple) else default
    if option.path == "model.scales":
        shown = "2; MDSR 2 3 4"
    # A field whose default is None and whose docstring says what that means needs no "(default: none)".
    suffix = "" if default is None and "default" in option.doc.lower() else f" (default: {shown})"
    group.add_argument(*names, help=f"{help_text}{suffix}", **kwargs)


def _non_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return hint


def _typed(kind: type, flag: str) -> Any:
    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def options_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """The dataclass `cls` made of its fields given as flags (`add_config_arguments(parser, cls)`),
    the others at their defaults; validated by `cls` itself, errors naming the option."""
    given = overrides_from_args(args, cls)
    if any(isinstance(v, dict) for v in given.values()):  # nested sections: coerced and checked per key
        return from_dict(cls, given, "command line")
    # argparse typed every value already; the class's own check names the flag.
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})


def overrides_from_args(args: argparse.Namespace, cls: type = TrainConfig) -> dict[str, Any]:
    """The config fields given as flags, as a nested mapping (`{"data": {"batch_size": 8}}`)."""
    out: dict[str, Any] = {}
    for option in options(cls):
        value = getattr(args, option.path, None)
        if value is None:
            continue
        node = out
        *parents, leaf = option.path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's config: defaults < --config FILE < --model preset < flags < --set KEY=VALUE."""
    overrides = merge(overrides_from_args(args), parse_set(args.set))
    return build_config(args.config, overrides, model=args.model)


# ---------------------------------------------------------------------------------------------
# Argument types shared by the commands


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def argument_type(parse: Any, name: str) -> Any:
    """An argparse type from one of ntire.values' parsers, so a flag, a YAML key and an environment
    variable are checked by the same function with the same message (argparse names the flag)."""

    def convert(text: str) -> Any:
        try:
            return parse(text, "")
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = name  # argparse names the type in its messages
    return convert


tile_option = argument_type(parse_tile, "tile")
"""argparse type for --tile: `auto`, 0 (the whole image) or a positive number of LR pixels."""

byte_size = argument_type(parse_bytes, "size")
"""argparse type for a size in bytes (`--shard-size 256MiB`): see ntire.values.parse_bytes."""


def add_tile_argument(parser: argparse.ArgumentParser) -> None:
    """`--tile {auto,0,T}` (parsed by `tile_option`, default auto), passed on as `tile=` to
    ntire.inference. `ntire submit` takes the same from its SubmitOptions.tile field."""
    parser.add_argument("--tile", type=tile_option, default="auto", metavar="auto|0|T",
                        help=f"{TILE_HELP} (default: auto)")


PRECISION_HELP = (
    "inference precision: fp32 (exact float32), tf32 (float32 with TF32 tensor-core convolutions; CUDA only), "
    "bf16 (bf16 autocast: faster, costs PSNR). Default: tf32 on CUDA, else fp32"
)


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """`--precision {fp32,tf32,bf16}`, checked at run time against the device by
    `ntire.inference.resolve_precision` (tf32 needs CUDA), so every mistake is one line."""
    parser.add_argument("--precision", default=None, metavar="{fp32,tf32,bf16}", help=PRECISION_HELP)


DEVICE_HELP = "torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available, else cpu)"


def add_force_argument(parser: argparse.ArgumentParser) -> None:
    """`--force`: the one rule of every command that writes files the user names (upscale,
    degrade, compare, evaluate --json, export, convert): an existing one is kept unless asked."""
    parser.add_argument("--force", action="store_true", help="overwrite output files that already exist")


def refuse_existing(paths: Any, force: bool) -> None:
    """ConfigError naming the first of `paths` that exists (and how many more do), unless `force`."""
    from pathlib import Path

    existing = [Path(p) for p in paths if Path(p).exists()]
    if existing and not force:
        more = f" (and {len(existing) - 1} more output(s))" if len(existing) > 1 else ""
        raise ConfigError(f"{existing[0]}: already exists{more}; pass --force to overwrite")


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """`--device NAME`, resolved at run time by `resolve_device`."""
    parser.add_argument("--device", default=None, metavar="NAME", help=DEVICE_HELP)


def resolve_device(name: str | None, option: str = "--device") -> Any:
    """The torch.device `name` names (default: cuda if available, else cpu); a ConfigError naming
    the option for a name torch does not know or a device this machine does not have."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"{option} {name}: not a torch device ({one_line(e)})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{option} {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{option} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        backend = torch.backends.mps if device.type == "mps" else getattr(torch, device.type, None)
        available = getattr(backend, "is_available", None)
        if available is None or not available():
            raise ConfigError(f"{option} {name}: {device.type} is not available on this machine")
    return device


__all__ = [
    "add_config_arguments",
    "add_config_file_arguments",
    "options_from_args",
    "add_device_argument",
    "add_precision_argument",
    "add_tile_argument",
    "add_train_arguments",
    "argument_type",
    "byte_size",
    "config_from_args",
    "overrides_from_args",
    "positive_int",
    "tile_option",
    "resolve_device",
]
