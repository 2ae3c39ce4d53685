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
from typing import Any, Literal

from ntire.config import MODEL_PRESETS, Option, TrainConfig, build_config, merge, options, parse_set
from ntire.errors import ConfigError, one_line

LAUNCHER_FLAGS = ("config", "model", "set", "print_config")
"""Destinations of the flags that are not config fields."""


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The training options (`ntire train` and `ntire/train.py`): --config, --model, --set,
    --print-config, then one flag per config field, grouped by section."""
    p = parser
    p.add_argument("--config", metavar="FILE", help="YAML config: a path or a shipped name (demo, edsr_x2, ...)")
    p.add_argument("--model", choices=tuple(MODEL_PRESETS), help="network preset (replaces the config's architecture)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override any config field with a YAML value, e.g. --set data.valid_tile=null (repeatable)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    add_config_arguments(p, TrainConfig)


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per leaf field of the config dataclass `cls`, in a group per section."""
    p = parser
    groups: dict[str, argparse._ArgumentGroup] = {}
    for option in options(cls):
        section = option.path.rpartition(".")[0] or "run"
        if section not in groups:
            groups[section] = p.add_argument_group(f"{section} options" if section != "run" else "run options")
        _add_option(groups[section], option)


def _add_option(group: argparse._ArgumentGroup, option: Option) -> None:
    names = [f"--{option.path.replace('_', '-')}", *option.flags]
    kwargs: dict[str, Any] = {"dest": option.path, "default": None}
    help_text = option.doc.replace("%", "%%")
    hint = _non_optional(option.hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif origin is Literal:
        kwargs["choices"] = args
    elif origin is tuple:
        item = args[0] if args else str
        kwargs["type"] = _typed(item, names[0])
        kwargs["nargs"] = "+" if len(args) == 2 and args[1] is Ellipsis else len(args)
        kwargs["metavar"] = option.metavar or item.__name__.upper()
    elif hint in (int, float, str):
        kwargs["type"] = _typed(hint, names[0])
        kwargs["metavar"] = option.metavar or {int: "N", float: "X", str: "TEXT"}[hint]
    else:  # pragma: no cover - a new field type needs a rule here (a test builds every flag)
        raise TypeError(f"{option.path}: no command-line form for {hint}")
    default = option.default
    shown = "none" if default is None else " ".join(map(str, default)) if isinstance(default, tuple) else default
    if option.path == "model.scales":
        shown = "2; MDSR 2 3 4"
    group.add_argument(*names, help=f"{help_text} (default: {shown})", **kwargs)


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


TILE_HELP = (
    "tile size in LR pixels: auto (default) runs each image whole if it fits the memory free on the device "
    "(or $NTIRE_MEMORY_BUDGET, e.g. 2G), else in the largest tiles that fit; 0 forces the whole image, "
    "T forces T x T tiles (e.g. 128). The output is identical either way"
)


def tile_option(text: str) -> int | str:
    """argparse type for --tile: `auto`, 0 (the whole image) or a positive number of LR pixels."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected auto, 0 (whole image) or a positive integer, got {text!r}")
    return value


def add_tile_argument(
    parser: argparse.ArgumentParser, default: int | str | None = "auto", help: str = TILE_HELP
) -> None:
    """`--tile {auto,0,T}` (parsed by `tile_option`), passed on as `tile=` to ntire.inference."""
    parser.add_argument("--tile", type=tile_option, default=default, metavar="T", help=help)


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
    "add_device_argument",
    "add_precision_argument",
    "add_tile_argument",
    "add_train_arguments",
    "config_from_args",
    "overrides_from_args",
    "positive_int",
    "tile_option",
    "resolve_device",
]
