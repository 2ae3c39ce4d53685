"""What `ntire submit` takes, as dataclass fields whose docstrings are the flags' help: building
zips from a manifest (`SubmitOptions`) or checking one (`ZipCheckOptions`). `--device` and
`--precision` are the ones every inference command shares (ntire.options).

Imports no torch, so `ntire submit --help` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ntire.data.challenge import Scale, Track
from ntire.errors import ConfigError
from ntire.fields import flag
from ntire.values import parse_tile


@dataclass(frozen=True)
class SubmitOptions:
    """Which zips to build from which manifest, and how to run the models."""

    manifest: str | None = field(default=None, metadata=flag(metavar="YAML"))
    """Which checkpoint serves each track and scale; default submissions/sample.yaml (the sample data)."""

    track: tuple[Track, ...] | None = None
    """Track(s) to build; default every track the manifest defines."""

    scales: tuple[Scale, ...] | None = None
    """Scales to build; default all the manifest serves."""

    split: Literal["test", "valid"] | None = None
    """test: 0901-1000, what the challenge scores; valid: 0801-0900, scored here; default the
    manifest's."""

    data: str | None = field(default=None, metadata=flag(metavar="DIR"))
    """Dataset root in DIV2K layout; default the manifest's."""

    out: str | None = field(default=None, metadata=flag(metavar="DIR"))
    """Output folder; default runs/submissions/<manifest name>-<split>."""

    self_ensemble: bool | None = None
    """Geometric self-ensemble on or off for every scale; default the manifest's choice per track."""

    tile: int | str | None = field(default=None, metadata=flag(metavar="auto|0|T", parse=parse_tile))
    """Tile size in LR pixels: auto runs each image whole if it fits the memory free on the device
    (or $NTIRE_MEMORY_BUDGET), else in the largest tiles that fit; 0 forces the whole image, T
    forces T x T tiles. The output is identical either way. Default: the manifest's `tile`
    (itself auto by default)."""

    max_batch: int | None = field(default=None, metadata=flag(metavar="N"))
    """Images per forward pass: tiles, or the same-shape ensemble variants; default the manifest's
    batch_size."""

    io_workers: int | None = field(default=None, metadata=flag(metavar="N"))
    """Threads decoding LR and encoding SR PNGs while the model runs; default 4."""

    compare: bool = True
    """On the valid split, also run the other self-ensemble setting (the gain column)."""

    mlflow: bool = True
    """Log the results to MLflow."""

    tracking_uri: str | None = field(default=None, metadata=flag(metavar="URI"))
    """MLflow store; default $MLFLOW_TRACKING_URI, else runs/mlflow.db."""

    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "tile", parse_tile(self.tile, "--tile"))
        for name in ("max_batch", "io_workers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")


@dataclass(frozen=True)
class ZipCheckOptions:
    """Checking an existing zip instead of building any."""

    check: str | None = field(default=None, metadata=flag(metavar="ZIP"))
    """Validate ZIP and exit (builds nothing)."""

    lr: str | None = field(default=None, metadata=flag(metavar="DIR"))
    """LR folder of ZIP's inputs, to check names and sizes."""

    scale: int | None = field(default=None, metadata=flag(metavar="S"))
    """Scale of ZIP; default from the LR names or record."""

    partial: bool = False
    """Accept a check without the LR sizes (no --lr and no inputs record beside ZIP): names,
    formats and the readme only; otherwise such a check exits 1."""

    def __post_init__(self) -> None:
        if self.scale is not None and self.scale < 1:
            raise ConfigError(f"--scale must be a positive integer, got {self.scale}")


__all__ = ["SubmitOptions", "ZipCheckOptions"]
