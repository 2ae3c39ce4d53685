"""The submission manifest: which checkpoint serves each track and scale, on which data.

A manifest is a YAML file (`submissions/sample.yaml`, `submissions/div2k.yaml`) read into a
`SubmissionManifest`; `submissions/README.md` documents its fields. This module also finds what
the manifest points at: the dataset root (`resolve_data_root`) and, per scale, the first existing
checkpoint an entry lists (`find_checkpoint`, `manifest_checkpoints`). It never makes a missing
checkpoint: that is training's job (`ntire train`, or `make submission` for the sample manifest),
and a missing one is an error saying how to make it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ntire.config_io import from_dict, read_yaml
from ntire.data.challenge import SCALES, TRACKS
from ntire.errors import CheckpointError, ConfigError
from ntire.values import parse_tile

DEFAULT_SELF_ENSEMBLE = {"bicubic": True, "unknown": False}
"""The paper's choice: the geometric ensemble assumes a symmetric degradation, so it is used on the
bicubic track only (on the unknown track's asymmetric blur it may hurt)."""

SAMPLE_MANIFEST = "submissions/sample.yaml"
"""The default manifest (the sample data), relative to the repository root."""

DEFAULT_HOW_TO_MAKE = (
    "train it with `ntire train` (it exports OUTPUT/model) or convert a released .pt with `ntire convert`"
)
"""What a missing checkpoint's error suggests when its manifest entry has no `made_by`."""


@dataclass(frozen=True)
class ModelEntry:
    """One checkpoint and the scales it serves on a track."""

    checkpoint: str | tuple[str, ...]
    """A model folder (model.safetensors + config.yaml), a .safetensors file with config.yaml
    beside it, or a released EDSR/MDSR .pt/.pth file; or a list of these, the first that exists
    being used (the sample manifest prefers `make demo`'s model to a smaller one)."""

    scales: tuple[int, ...]
    """Scales this checkpoint serves on the track (one MDSR may serve 2, 3 and 4)."""

    self_ensemble: bool | None = None
    """Geometric self-ensemble (x8 compute); default the paper's: on for bicubic, off for unknown."""

    extra_data: bool = False
    """Whether training used data beyond DIV2K train (the readme's Extra Data flag)."""

    description: str = ""
    """Free text for the readme's description; model, checkpoint and ensemble are appended."""

    made_by: str | None = None
    """The command that makes the checkpoint, named in the error when none exists."""

    def __post_init__(self) -> None:
        candidates = (self.checkpoint,) if isinstance(self.checkpoint, str) else tuple(self.checkpoint)
        if not candidates or not all(isinstance(c, str) and c for c in candidates):
            raise ConfigError("checkpoint is empty")
        object.__setattr__(self, "checkpoint", candidates[0] if len(candidates) == 1 else candidates)
        if not self.scales or any(s not in SCALES for s in self.scales):
            raise ConfigError(f"scales must be drawn from {SCALES}, got {list(self.scales)}")

    @property
    def candidates(self) -> tuple[str, ...]:
        """The checkpoint paths in the order they are tried."""
        return (self.checkpoint,) if isinstance(self.checkpoint, str) else self.checkpoint

    @property
    def label(self) -> str:
        """The checkpoint(s) as messages name them: `a`, or `a or b`."""
        return " or ".join(self.candidates)


@dataclass(frozen=True)
class TrackPlan:
    """The checkpoints serving one track; each scale served by exactly one."""

    models: tuple[ModelEntry, ...]
    """Checkpoint entries; their `scales` must not overlap."""

    def __post_init__(self) -> None:
        seen: dict[int, str] = {}
        for entry in self.models:
            for s in entry.scales:
                if s in seen:
                    raise ConfigError(f"scale x{s} is served by both {seen[s]} and {entry.label}")
                seen[s] = entry.label

    @property
    def scales(self) -> tuple[int, ...]:
        """Every scale some entry serves, ascending."""
        return tuple(sorted(s for e in self.models for s in e.scales))

    def entry_for(self, scale: int) -> ModelEntry | None:
        """The entry serving `scale`, or None."""
        return next((e for e in self.models if scale in e.scales), None)


@dataclass(frozen=True)
class SubmissionManifest:
    """Which checkpoints make a set of submissions, on which data, and how inference runs."""

    name: str
    """Short name; the default output folder is `runs/submissions/<name>-<split>`."""

    data: str = "data/sample"
    """Dataset root in DIV2K layout (the folder holding `DIV2K/`, or `DIV2K/` itself)."""

    sample_data: bool = False
    """`data` is the embedded sample dataset: build it there when missing (unless --data is given)."""

    split: Literal["test", "valid"] = "test"
    """`test` (0901-1000, what the challenge scores) or `valid` (0801-0900, scored here)."""

    tile: int | str | None = "auto"
    """Inference tiles, in LR pixels: `auto` runs each image whole if it fits the memory free on
    the device, else in the largest tiles that fit; 0 or null: whole images; N: tiles of N. The
    output is the same either way (the overlap between tiles costs compute)."""

    batch_size: int = 4
    """Tiles (or ensemble variants) per forward pass."""

    bicubic: TrackPlan | None = None
    """Track 1, bicubic degradation."""

    unknown: TrackPlan | None = None
    """Track 2, unknown degradation."""

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ConfigError(f"name must be a non-empty file-name-safe string, got {self.name!r}")
        object.__setattr__(self, "tile", parse_tile(self.tile, "tile"))
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {self.batch_size}")
        if self.bicubic is None and self.unknown is None:
            raise ConfigError("the manifest names no track: give `bicubic:` and/or `unknown:`")

    def track(self, name: str) -> TrackPlan:
        """The plan for track `name`; ConfigError if the manifest has none."""
        if name not in TRACKS:
            raise ConfigError(f"unknown track {name!r}; choose from {', '.join(TRACKS)}")
        plan = getattr(self, name)
        if plan is None:
            raise ConfigError(f"manifest {self.name!r} has no `{name}:` track")
        return plan

    @property
    def tracks(self) -> tuple[str, ...]:
        """The tracks this manifest defines."""
        return tuple(t for t in TRACKS if getattr(self, t) is not None)


def default_manifest() -> Path:
    """The sample manifest: `submissions/sample.yaml` in the working folder, else in the checkout."""
    here = Path(SAMPLE_MANIFEST)
    if here.is_file():
        return here
    return Path(__file__).resolve().parents[2] / SAMPLE_MANIFEST


def load_manifest(path: str | os.PathLike) -> SubmissionManifest:
    """Read a manifest YAML; errors name the file and the key at fault."""
    path = Path(path)
    data = read_yaml(path, what="a submission manifest (a mapping)")
    # Top-level `x-...` keys hold YAML anchors shared by entries (as in docker-compose files).
    data = {k: v for k, v in data.items() if not str(k).startswith("x-")}
    # Optional sections are built here, so an error inside one names its own key.
    for track in TRACKS:
        if isinstance(data.get(track), dict):
            data[track] = _track_plan(data[track], f"{path}: {track}")
    return from_dict(SubmissionManifest, data, str(path))


def _track_plan(data: dict[str, Any], where: str) -> TrackPlan:
    models = data.get("models")
    if isinstance(models, list):
        entries = [
            from_dict(ModelEntry, entry, f"{where}.models[{i}]") if isinstance(entry, dict) else entry
            for i, entry in enumerate(models)
        ]
        data = dict(data, models=entries)
    return from_dict(TrackPlan, data, where)


def resolve_self_ensemble(entry: ModelEntry, track: str, override: bool | None = None) -> bool:
    """Self-ensemble for an entry on `track`: `override`, else the entry's, else the paper's."""
    if override is not None:
        return override
    if entry.self_ensemble is not None:
        return entry.self_ensemble
    return DEFAULT_SELF_ENSEMBLE[track]


# --------------------------------------------------------------------------------------------
# What the manifest points at


def resolve_data_root(manifest: SubmissionManifest, data: str | os.PathLike | None = None) -> Path:
    """The dataset root to use: `data` if given, else the manifest's (built if it is the sample)."""
    if data is not None:
        root = Path(data)
        if not root.is_dir():
            raise ConfigError(f"--data {root}: folder not found")
        return root
    root = Path(manifest.data)
    if manifest.sample_data:
        from ntire.data.sample import build_sample_dataset, is_complete

        if not is_complete(root):
            print(f"building the sample dataset in {root}")
            build_sample_dataset(root)
    elif not root.is_dir():
        raise ConfigError(f"manifest data {root}: folder not found; give --data DIR")
    return root


def checkpoint_exists(path: str | os.PathLike) -> bool:
    """True if `path` is something `load_model` reads: a model folder (model.safetensors and
    config.yaml), a .safetensors file with config.yaml beside it, or a released .pt/.pth file.

    A training run folder is not one (its model is `<run>/model`): its `train_config.yaml` says
    how it was trained, not which network the weights are.
    """
    # Imported here: the manifest is read by commands that should not pay for torch until they run.
    from ntire.models.checkpoint import CONFIG_NAME, RELEASED_SUFFIXES, WEIGHTS_NAME

    path = Path(path)
    if path.is_dir():
        return (path / WEIGHTS_NAME).is_file() and (path / CONFIG_NAME).is_file()
    if path.is_file() and path.suffix == ".safetensors":
        return (path.parent / CONFIG_NAME).is_file()
    return path.is_file() and path.suffix in RELEASED_SUFFIXES


def find_checkpoint(entry: ModelEntry, track: str | None = None) -> Path:
    """The first of the entry's checkpoints that exists.

    Otherwise a one-line CheckpointError naming the path(s) and the command that makes them (the
    entry's `made_by`), or, for a run folder given instead of its model, the path to give.
    """
    for candidate in entry.candidates:
        if checkpoint_exists(candidate):
            return Path(candidate)
    from ntire.models.checkpoint import WEIGHTS_NAME

    scales = "/".join(f"x{s}" for s in entry.scales)
    where = f"{track} {scales}" if track else scales
    for candidate in entry.candidates:
        if (Path(candidate) / "model" / WEIGHTS_NAME).is_file():
            raise CheckpointError(
                f"{candidate}: checkpoint not found ({where}): that is a training run folder; "
                f"its model is {Path(candidate) / 'model'}"
            )
    how = f"make it with `{entry.made_by}`" if entry.made_by else DEFAULT_HOW_TO_MAKE
    raise CheckpointError(f"{entry.label}: checkpoint not found ({where}); {how}")


def manifest_checkpoints(manifest: str | os.PathLike | None, track: str) -> dict[int, Path]:
    """Scale -> existing checkpoint for every scale `track` serves in the manifest at `manifest`
    (None: the sample manifest); a CheckpointError as `find_checkpoint`'s for a missing one."""
    plan = load_manifest(manifest if manifest is not None else default_manifest()).track(track)
    found: dict[int, Path] = {}
    for entry in plan.models:
        checkpoint = find_checkpoint(entry, track)
        found.update({s: checkpoint for s in entry.scales})
    return dict(sorted(found.items()))


__all__ = [
    "DEFAULT_SELF_ENSEMBLE",
    "ModelEntry",
    "SAMPLE_MANIFEST",
    "SubmissionManifest",
    "TRACKS",
    "TrackPlan",
    "checkpoint_exists",
    "resolve_data_root",
    "default_manifest",
    "find_checkpoint",
    "load_manifest",
    "manifest_checkpoints",
    "resolve_self_ensemble",
]
