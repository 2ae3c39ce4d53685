"""A shard folder's manifest (`manifest.json`): the shards written so far, with their sample
counts, sizes and sha256, and the options and source files they were made from. ntire.data.shards
writes it after each finished shard; readers (the training stream, `ntire data check`, the
training shard cache) read it through `read_manifest`, which names the file on any problem.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ntire.data.challenge import SCALES, TRACKS, Track
from ntire.errors import DataError
from ntire.files import atomic_write_text

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "ntire-shards/1"


@dataclass(frozen=True)
class ShardInfo:
    """One finished shard, as recorded in the manifest."""

    name: str
    """File name inside the shard folder, e.g. shard-000003.tar."""

    samples: int
    """Number of samples (keys) in the shard."""

    bytes: int
    """File size in bytes."""

    sha256: str
    """Hex SHA-256 of the file."""

    first_key: str
    """Key of the first sample."""

    last_key: str
    """Key of the last sample."""


@dataclass
class ShardManifest:
    """What a shard folder holds; written as manifest.json beside the shards."""

    track: Track
    """Degradation track of the LR images (bicubic or unknown)."""

    scales: tuple[int, ...]
    """LR scales stored in every sample."""

    encoding: str
    """Image encoding of the members: npy (raw uint8) or png."""

    subimage: int | None
    """HR sub-image size, or None when samples are whole images."""

    step: int | None
    """Distance between sub-image origins, or None."""

    shard_max_bytes: int
    """Target upper bound of a shard's size."""

    mix: int
    """Source images whose samples are shuffled together."""

    plan_sha256: str
    """Fingerprint of the planned samples (names, sizes, crops) and the options above."""


    total_samples: int
    """Samples in the finished dataset."""

    source_sha256: str = ""
    """Fingerprint of the source files (paths, sizes, modification times): a cache built from
    files that have since been added, removed or changed no longer matches and is rebuilt."""

    source_files: int = 0
    """Number of source files (HR and LR) the shards were made from."""

    shards: list[ShardInfo] = field(default_factory=list)
    """Finished shards, in order."""

    complete: bool = False
    """True once every planned sample is in a finished shard."""

    format: str = MANIFEST_FORMAT
    """Manifest format tag."""

    def urls(self, shard_dir: str | os.PathLike) -> list[str]:
        """Local paths of the shards, for train_batches."""
        return [str(Path(shard_dir) / s.name) for s in self.shards]

    def url_pattern(self, prefix: str) -> str:
        """A brace pattern for all shards under `prefix` (a folder path or an object-store URL)."""
        if len(self.shards) == 1:
            return f"{prefix.rstrip('/')}/{self.shards[0].name}"
        last = len(self.shards) - 1
        return f"{prefix.rstrip('/')}/shard-{{{0:06d}..{last:06d}}}.tar"

    def counts(self) -> dict[str, int]:
        """Samples per shard file name."""
        return {s.name: s.samples for s in self.shards}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["scales"] = list(self.scales)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "manifest") -> ShardManifest:
        try:
            d = dict(d)
            d["scales"] = tuple(d["scales"])
            d["shards"] = [ShardInfo(**s) for s in d.get("shards", [])]
            if d.get("format") != MANIFEST_FORMAT:
                raise DataError(
                    f"{source}: not an ntire shard manifest (format {d.get('format')!r})"
                )
            if d["track"] not in TRACKS or not d["scales"] or any(s not in SCALES for s in d["scales"]):
                raise DataError(f"{source}: track {d['track']!r} and scales {list(d['scales'])} are not among "
                                f"the challenge's ({', '.join(TRACKS)}; {', '.join(map(str, SCALES))})")
            return cls(**d)
        except (KeyError, TypeError) as e:
            raise DataError(f"{source}: malformed shard manifest ({e})") from None


def read_manifest(path: str | os.PathLike) -> ShardManifest:
    """Read a manifest file, or the manifest.json inside a shard folder."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: shard manifest not found") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable shard manifest ({e})") from None
    return ShardManifest.from_dict(data, str(path))


def save_manifest(path: Path, manifest: ShardManifest) -> None:
    """Write `manifest` to `path` atomically (JSON, one shard a line apart)."""
    atomic_write_text(path, json.dumps(manifest.to_dict(), indent=1) + "\n")
