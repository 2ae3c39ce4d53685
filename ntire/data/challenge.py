"""The NTIRE 2017 challenge's tracks and scales: the one list of each that every command, config
field, manifest and dataset check uses.

Types and their values together: a config field annotated `Track` offers exactly `TRACKS` as its
choices. Imports nothing, so `--help` stays fast.
"""

from __future__ import annotations

import typing
from typing import Literal

Track = Literal["bicubic", "unknown"]
"""A degradation track: `bicubic` (track 1, MATLAB imresize) or `unknown` (track 2)."""

TRACKS: tuple[str, ...] = typing.get_args(Track)
"""The tracks, in the challenge's order."""

Scale = Literal[2, 3, 4]
"""An upscaling factor of the challenge."""

SCALES: tuple[int, ...] = typing.get_args(Scale)
"""The scales, smallest first."""

__all__ = ["SCALES", "TRACKS", "Scale", "Track"]
