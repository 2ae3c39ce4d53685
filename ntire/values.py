"""The values several options share, each read by one function with one error message: byte
sizes (`--shard-size`, `NTIRE_MEMORY_BUDGET`) and tile sizes (`--tile` of every command, a
manifest's `tile`, `data.valid_tile`).

Imports nothing heavy: command-line parsing (`--help`) goes through here.
"""

from __future__ import annotations

import re
from typing import Literal

from ntire.errors import ConfigError

_BYTE_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}

BYTES_HELP = (
    "bytes, or a number with a unit: K, M, G, T (or KB, MB, GB, TB) are 10^3..10^12, "
    "KiB, MiB, GiB, TiB are 2^10..2^40"
)
"""What a byte size may be written as, for help texts."""


def _culprit(where: str, text: object) -> str:
    # An environment variable reads as it is set (NAME='x'); an option as it is typed (--opt 'x');
    # no name where the caller says it (argparse: "argument --opt: ...").
    if not where:
        return repr(text)
    return f"{where} {text!r}" if where.startswith("-") else f"{where}={text!r}"


def parse_bytes(text: str | int, where: str) -> int:
    """`5000000`, `256MiB`, `1.5G`, `2 GB`, `64KiB` -> bytes: K/M/G/T and KB/MB/GB/TB are powers of
    1000 (as disks and networks count), KiB/MiB/GiB/TiB powers of 1024 (as memory does); a plain
    number is bytes. ConfigError naming `where` (the option or environment variable) else."""
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _BYTE_UNITS:
        raise ConfigError(f"{_culprit(where, text)}: not a byte size ({BYTES_HELP}; e.g. 2GiB, 500MB)")
    return int(float(match.group(1)) * _BYTE_UNITS[unit])


Tile = int | Literal["auto"] | None
"""A tile request: `"auto"` (the largest tiles that fit the memory available; the whole image
when it fits), None (the whole image; 0 means the same) or N (cores of at most N x N LR pixels)."""

TILE_HELP = (
    "tile size in LR pixels: auto runs each image whole if it fits the memory free on the device "
    "(or $NTIRE_MEMORY_BUDGET), else in the largest tiles that fit; 0 forces the whole image, "
    "T forces T x T tiles (e.g. 128). The output is identical either way"
)
"""What a tile option takes, for help texts."""


def parse_tile(value: object, where: str) -> int | Literal["auto"] | None:
    """`auto` (any case), None or 0 (both the whole image), or a positive number of LR pixels, as
    text (a flag), YAML or Python; ConfigError naming `where` (the option or key) else. 0 stays 0
    (where None means "not given", 0 still says "whole")."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        value = int(text) if text.isdigit() else value
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise ConfigError(f"{_culprit(where, value)}: expected auto, 0 (the whole image) or a positive number of LR pixels")


__all__ = ["BYTES_HELP", "TILE_HELP", "Tile", "parse_bytes", "parse_tile"]
