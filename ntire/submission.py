"""Challenge submissions: predict -> readme -> validate -> zip, per track and scale.

A manifest (YAML, `Manifest`) says which checkpoint serves each track and scale and whether
self-ensemble is on. For each scale `build_track` then

1. runs the model on every LR image of the split (DIV2K test 0901-1000, or valid 0801-0900),
   tiled and batched, writing one SR PNG per input named after it (`0901x4.png`). Each PNG is
   written atomically and recorded in `state-sr.json` with its runtime and the setup that made it,
   so an interrupted run resumes where it stopped and a re-run redoes nothing;
2. writes `readme.txt` (runtime per image from those records, CPU/GPU from the device used,
   extra data and the description from the manifest);
3. validates the folder, zips it to a temporary file beside the target, validates the zip and
   only then renames it over the target, so a valid zip is never replaced by a broken one;
4. on the valid split (HR known), scores the SR images, the bicubic baseline and the other
   self-ensemble setting under the DIV2K protocol, for a table with the self-ensemble gain.

Folders, for `--out runs/submissions/sample-valid` (the default for the sample manifest):

    bicubic/x2/sr/0801x2.png ... readme.txt   what the zip holds
    bicubic/x2/alt/...                        the other ensemble setting (valid split only)
    bicubic/x2/state-sr.json, scores.json     per-image runtimes and setup; valid-split scores
    bicubic_x2.zip, bicubic_x2.inputs.json    the submission, and its LR sizes for --check
    bicubic-report/table.txt, results.json    what `ntire submit` prints and logs to MLflow
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from ntire.config import SUPPORTED_SCALES, from_dict
from ntire.errors import CheckpointError, ConfigError, NtireError
from ntire.files import atomic_path, atomic_write_text
from ntire.submission_check import (
    README_NAME,
    Expected,
    Readme,
    SubmissionError,
    check_folder,
    check_zip,
    expected_from_lr_files,
    expected_record_path,
    format_readme,
    png_header,
    sr_name,
)

TRACKS = ("bicubic", "unknown")

DEFAULT_SELF_ENSEMBLE = {"bicubic": True, "unknown": False}
"""The paper's choice: the geometric ensemble assumes a symmetric degradation, so it is used on the
bicubic track only (on the unknown track's asymmetric blur it may hurt)."""


# --------------------------------------------------------------------------------------------
# Manifest


@dataclass(frozen=True)
class QuickTrain:
    """A small model trained on the spot (with `ntire.train.fit`) when a checkpoint is missing.

    It makes the sample manifest work on a fresh clone: `make submission` trains this (a few
    minutes on 2 CPU cores) instead of stopping, and later runs reuse it from `output`.
    """

    output: str
    """Training folder; the model is exported to `<output>/model` and reused once it exists."""

    kind: Literal["edsr", "mdsr"] = "mdsr"
    """Network family; an MDSR serves every scale in `scales` from one model."""

    scales: tuple[int, ...] = (2, 3, 4)
    """Scales it is trained for (an EDSR takes exactly one)."""

    n_blocks: int = 4
    """Residual blocks."""

    n_feats: int = 16
    """Feature channels."""

    steps: int = 200
    """Optimiser updates."""

    batch_size: int = 8
    """Patches per update."""

    patch_size: int = 24
    """LR patch side in pixels."""

    lr: float = 5e-4
    """Adam learning rate (higher than the paper's 1e-4: the run is very short)."""

    mixed_precision: Literal["no", "bf16", "fp16"] | None = None
    """Autocast precision for training (bf16 is 2x faster on CPUs with AVX512-BF16)."""

    def __post_init__(self) -> None:
        if not self.output:
            raise ConfigError("fallback.output is empty")
        if self.steps < 1 or self.batch_size < 1 or self.patch_size < 4:
            raise ConfigError("fallback: steps and batch_size must be positive, patch_size at least 4")


@dataclass(frozen=True)
class ModelEntry:
    """One checkpoint and the scales it serves on a track."""

    checkpoint: str
    """Our model folder (model.safetensors + config.yaml) or a released EDSR/MDSR .pt file."""

    scales: tuple[int, ...]
    """Scales this checkpoint serves on the track (one MDSR may serve 2, 3 and 4)."""

    self_ensemble: bool | None = None
    """Geometric self-ensemble (x8 compute); default the paper's: on for bicubic, off for unknown."""

    extra_data: bool = False
    """Whether training used data beyond DIV2K train (the readme's Extra Data flag)."""

    description: str = ""
    """Free text for the readme's description; model, checkpoint and ensemble are appended."""

    fallback: QuickTrain | None = None
    """Train this small model instead when `checkpoint` does not exist (sample manifest only)."""

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise ConfigError("checkpoint is empty")
        if not self.scales or any(s not in SUPPORTED_SCALES for s in self.scales):
            raise ConfigError(f"scales must be drawn from {SUPPORTED_SCALES}, got {list(self.scales)}")


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
                    raise ConfigError(f"scale x{s} is served by both {seen[s]} and {entry.checkpoint}")
                seen[s] = entry.checkpoint

    @property
    def scales(self) -> tuple[int, ...]:
        """Every scale some entry serves, ascending."""
        return tuple(sorted(s for e in self.models for s in e.scales))

    def entry_for(self, scale: int) -> ModelEntry | None:
        """The entry serving `scale`, or None."""
        return next((e for e in self.models if scale in e.scales), None)


@dataclass(frozen=True)
class Manifest:
    """Which checkpoints make a set of submissions, on which data, and how inference runs."""

    name: str
    """Short name; the default output folder is `runs/submissions/<name>-<split>`."""

    data: str = "data/sample"
    """Dataset root in DIV2K layout (the folder holding `DIV2K/`, or `DIV2K/` itself)."""

    sample_data: bool = False
    """`data` is the embedded sample dataset: build it there when missing (unless --data is given)."""

    split: Literal["test", "valid"] = "test"
    """`test` (0901-1000, what the challenge scores) or `valid` (0801-0900, scored here)."""

    tile: int | None = 512
    """Run inference in tiles of this many LR pixels (bounded memory, same output; the overlap
    between tiles costs compute); null: whole images."""

    batch_size: int = 4
    """Tiles (or ensemble variants) per forward pass."""

    bicubic: TrackPlan | None = None
    """Track 1, bicubic degradation."""

    unknown: TrackPlan | None = None
    """Track 2, unknown degradation."""

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ConfigError(f"name must be a non-empty file-name-safe string, got {self.name!r}")
        if self.tile is not None and self.tile < 1:
            raise ConfigError(f"tile must be positive or null, got {self.tile}")
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


SAMPLE_MANIFEST = "submissions/sample.yaml"
"""The default manifest (the sample data), relative to the repository root."""


def default_manifest() -> Path:
    """The sample manifest: `submissions/sample.yaml` in the working folder, else in the checkout."""
    here = Path(SAMPLE_MANIFEST)
    if here.is_file():
        return here
    return Path(__file__).resolve().parents[1] / SAMPLE_MANIFEST


def load_manifest(path: str | os.PathLike) -> Manifest:
    """Read a manifest YAML; errors name the file and the key at fault."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the manifest ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping, got {type(data).__name__}")
    # Top-level `x-...` keys hold YAML anchors shared by entries (as in docker-compose files).
    data = {k: v for k, v in data.items() if not str(k).startswith("x-")}
    # Optional sections are built here, so an error inside one names its own key.
    for track in TRACKS:
        if isinstance(data.get(track), dict):
            data[track] = _track_plan(data[track], f"{path}: {track}")
    return from_dict(Manifest, data, str(path))


def _track_plan(data: dict[str, Any], where: str) -> TrackPlan:
    models = data.get("models")
    if isinstance(models, list):
        entries = []
        for i, entry in enumerate(models):
            here = f"{where}.models[{i}]"
            if isinstance(entry, dict) and isinstance(entry.get("fallback"), dict):
                entry = dict(entry, fallback=from_dict(QuickTrain, entry["fallback"], f"{here}.fallback"))
            entries.append(from_dict(ModelEntry, entry, here) if isinstance(entry, dict) else entry)
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
# Data and checkpoints


def ensure_data(manifest: Manifest, data: str | os.PathLike | None = None) -> Path:
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
    """True if `path` is a checkpoint file, or a folder holding a model config."""
    path = Path(path)
    return path.is_file() or (path.is_dir() and (path / "config.yaml").is_file())


def ensure_checkpoint(entry: ModelEntry, data_root: Path, track: str, *, progress: bool = True) -> Path:
    """The checkpoint to use for `entry`: its own, else its fallback (trained now if missing).

    Raises CheckpointError naming the checkpoint if it is missing and there is no fallback.
    """
    if checkpoint_exists(entry.checkpoint):
        return Path(entry.checkpoint)
    if entry.fallback is None:
        raise CheckpointError(f"{entry.checkpoint}: checkpoint not found (manifest entry for x{list(entry.scales)})")
    out = Path(entry.fallback.output) / "model"
    if not checkpoint_exists(out):
        print(f"{entry.checkpoint} not found: training a small {entry.fallback.kind} in {entry.fallback.output} instead")
        out = quick_train(entry.fallback, data_root=data_root, track=track, progress=progress)
    return out


def quick_train(spec: QuickTrain, *, data_root: Path, track: str, progress: bool = True) -> Path:
    """Train `spec`'s small model with `ntire.train.fit` on the track's train images; return its export.

    The run lives in `spec.output` (shards, checkpoints, and the exported model in
    `spec.output/model`); it validates once at the end, against bicubic, on the valid split.
    Tracking is off: this is a stand-in, not an experiment.
    """
    from ntire.config import ModelConfig
    from ntire.training.fit import fit
    from ntire.config import DataConfig, OptimConfig, TrackingConfig, TrainConfig

    config = TrainConfig(
        model=ModelConfig(kind=spec.kind, scales=spec.scales, n_blocks=spec.n_blocks, n_feats=spec.n_feats),
        data=DataConfig(
            source=str(data_root),
            track=track,
            batch_size=spec.batch_size,
            patch_size=spec.patch_size,
            num_workers=0,
        ),
        optim=OptimConfig(lr=spec.lr),
        tracking=TrackingConfig(enabled=False),
        max_steps=spec.steps,
        save_every=spec.steps,
        eval_every=0,
        log_every=max(1, spec.steps // 4),
        keep_last=1,
        output_dir=spec.output,
        mixed_precision=spec.mixed_precision,
        progress=progress,
    )
    return fit(config).model_dir


def checkpoint_fingerprint(path: str | os.PathLike) -> str:
    """A short hash of a checkpoint's resolved path and its files' sizes and times.

    Recorded with every SR image, so a resumed run redoes images made by another checkpoint.
    """
    path = Path(path).resolve()
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    h = hashlib.sha256(str(path).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def describe(entry: ModelEntry, checkpoint: Path, model_name: str, params: int, self_ensemble: bool) -> str:
    """The readme's description: the manifest's text, then model, checkpoint and ensemble.

    When the entry's fallback stands in for its checkpoint, the manifest's text (which describes
    the missing checkpoint) is replaced by a line saying so.
    """
    text = entry.description.strip().rstrip(".")
    if Path(checkpoint) != Path(entry.checkpoint):
        text = f"small model quick-trained by ntire (stand-in for the missing {entry.checkpoint})"
    parts = [text] if text else []
    parts.append(f"model {model_name} ({params / 1e6:.2f}M parameters)")
    parts.append(f"checkpoint {checkpoint.name if checkpoint.is_file() else checkpoint}")
    parts.append("geometric self-ensemble x8" if self_ensemble else "no self-ensemble")
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------
# Prediction (resumable)


@dataclass(frozen=True)
class LRInput:
    """One LR image to super-resolve."""

    path: Path
    """The LR file."""

    hr: Path | None = None
    """Its HR file, where known (valid split)."""

    @property
    def sr_name(self) -> str:
        """The SR file's name: the LR file's, as PNG."""
        return sr_name(self.path)


@dataclass
class PredictRecord:
    """What `predict` did for one folder."""

    seconds: dict[str, float]
    """SR file name -> seconds its inference took (measured on the run that made it)."""

    done: int
    """Images made on this call."""

    skipped: int
    """Images found finished from an earlier call with the same setup."""

    @property
    def runtime(self) -> float:
        """Mean seconds per image."""
        return sum(self.seconds.values()) / len(self.seconds) if self.seconds else 0.0


def _load_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text())
        return state if isinstance(state, dict) and isinstance(state.get("images"), dict) else {"images": {}}
    except (OSError, ValueError):
        return {"images": {}}


def _finished(out: Path, lr_size: tuple[int, int], scale: int) -> bool:
    """True if `out` is an 8-bit RGB PNG of scale x the LR size (a whole, valid earlier result)."""
    try:
        with open(out, "rb") as f:
            header = png_header(f.read(33))
    except OSError:
        return False
    return header is not None and header == (lr_size[0] * scale, lr_size[1] * scale, 8, 2)


def predict(
    upscale: Callable[[Any], Any],
    inputs: list[LRInput],
    out_dir: str | os.PathLike,
    *,
    scale: int,
    setup: dict[str, Any],
    state_path: str | os.PathLike,
    progress: bool = True,
    desc: str = "predict",
) -> PredictRecord:
    """Run `upscale` (uint8 LR array -> uint8 SR array) on every input, writing `out_dir/<name>.png`.

    Resumable: an image is skipped if its PNG exists, has the right size and mode, and
    `state_path` records it as made with the same `setup` (checkpoint fingerprint, ensemble,
    scale, device kind); anything else is redone. Each PNG is written atomically and the state
    after it, so an interruption loses at most the image in progress.
    """
    from PIL import Image
    from tqdm import tqdm

    from ntire.images import read_image, write_png

    out_dir, state_path = Path(out_dir), Path(state_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = _load_state(state_path)
    if state.get("setup") != setup:
        state = {"setup": setup, "images": {}}
    images: dict[str, Any] = state["images"]
    wanted = {i.sr_name for i in inputs}
    for name in list(images):
        if name not in wanted:
            del images[name]
    seconds: dict[str, float] = {}
    done = skipped = 0
    bar = tqdm(inputs, desc=desc, unit="image", disable=not progress, leave=False)
    for item in bar:
        out = out_dir / item.sr_name
        with Image.open(item.path) as im:
            lr_size = im.size
        if item.sr_name in images and _finished(out, lr_size, scale):
            seconds[item.sr_name] = float(images[item.sr_name]["seconds"])
            skipped += 1
            continue
        lr = read_image(item.path)
        start = time.perf_counter()
        sr = upscale(lr)
        elapsed = time.perf_counter() - start
        if sr.shape[:2] != (lr.shape[0] * scale, lr.shape[1] * scale):
            raise NtireError(f"{item.path}: model returned {sr.shape[1]}x{sr.shape[0]}, not x{scale} the LR size")
        write_png(out, sr)
        images[item.sr_name] = {"seconds": elapsed}
        seconds[item.sr_name] = elapsed
        done += 1
        atomic_write_text(state_path, json.dumps(state, indent=1, sort_keys=True))
    # Leftovers from an earlier input list would make the folder an invalid submission.
    for stale in out_dir.glob("*.png"):
        if stale.name not in wanted:
            stale.unlink()
    atomic_write_text(state_path, json.dumps(state, indent=1, sort_keys=True))
    return PredictRecord(seconds=seconds, done=done, skipped=skipped)


# --------------------------------------------------------------------------------------------
# Zip


def write_zip(folder: str | os.PathLike, zip_path: str | os.PathLike, expected: Expected) -> Path:
    """Validate `folder`, zip its files at the top level, validate the zip, then move it in place.

    Raises SubmissionError listing every problem; an existing zip at `zip_path` is then left
    untouched (the new one is built beside it under a temporary name and renamed only once valid).
    Also records the LR sizes beside the zip (`*.inputs.json`) for `ntire submit --check`.
    """
    folder, zip_path = Path(folder), Path(zip_path)
    problems = check_folder(folder, expected)
    if problems:
        raise SubmissionError(str(folder), problems)
    members = [folder / README_NAME] + sorted(p for p in folder.iterdir() if p.name != README_NAME)
    with atomic_path(zip_path) as tmp:
        with zipfile.ZipFile(tmp, "w") as archive:
            for path in members:
                # PNGs are compressed already; deflating them again costs time for nothing.
                method = zipfile.ZIP_DEFLATED if path.suffix == ".txt" else zipfile.ZIP_STORED
                archive.write(path, arcname=path.name, compress_type=method)
        problems = check_zip(tmp, expected)
        if problems:
            raise SubmissionError(f"{zip_path} (not written)", problems)
    atomic_write_text(expected_record_path(zip_path), expected.to_json())
    return zip_path


def load_expected(zip_path: str | os.PathLike, lr_dir: str | os.PathLike | None, scale: int | None) -> tuple[Expected | None, str]:
    """What `--check` compares a zip against, and a line saying where that came from.

    From `lr_dir` when given (scale from `scale`, else from the LR names `0901x4.png`), else from
    the record the builder wrote beside the zip, else None (sizes unchecked).
    """
    import re

    from ntire.submission_check import expected_from_lr_dir

    if lr_dir is not None:
        lr_dir = Path(lr_dir)
        if scale is None:
            found = {int(m.group(1)) for p in lr_dir.glob("*.png") if (m := re.search(r"x(\d+)$", p.stem))}
            if len(found) != 1:
                raise ConfigError(f"--lr {lr_dir}: cannot tell the scale from the file names; give --scale")
            scale = found.pop()
        return expected_from_lr_dir(lr_dir, scale), f"sizes checked against the LR images in {lr_dir} (x{scale})"
    record = expected_record_path(zip_path)
    if record.is_file():
        expected = Expected.from_json(record.read_text(), str(record))
        if scale is not None and scale != expected.scale:
            raise ConfigError(f"--scale {scale} disagrees with {record} (x{expected.scale})")
        return expected, f"sizes checked against {record} (x{expected.scale})"
    return None, "sizes not checked (give --lr DIR, the LR folder, to check them)"


# --------------------------------------------------------------------------------------------
# Scoring (valid split)


def score_folder(sr_dir: Path, inputs: list[LRInput], scale: int) -> dict[str, float]:
    """Mean PSNR/SSIM of `sr_dir`'s images against the inputs' HR images, DIV2K protocol."""
    from ntire.images import read_image

    return _mean([_score(read_image(sr_dir / i.sr_name), read_image(i.hr), scale) for i in inputs])


def score_bicubic(inputs: list[LRInput], scale: int) -> dict[str, float]:
    """Mean PSNR/SSIM of MATLAB-bicubic upscaling of the LR inputs, DIV2K protocol."""
    from ntire.data.degrade import bicubic_upscale
    from ntire.images import read_image

    return _mean([_score(bicubic_upscale(read_image(i.path), scale), read_image(i.hr), scale) for i in inputs])


def _score(sr, hr, scale: int) -> dict[str, float]:
    from ntire.metrics import score

    h, w = sr.shape[:2]
    # HR was cropped to a multiple of the scale before downscaling; crop it the same way.
    if not (0 <= hr.shape[0] - h < scale and 0 <= hr.shape[1] - w < scale):
        raise NtireError(f"SR {w}x{h} does not match HR {hr.shape[1]}x{hr.shape[0]} at x{scale}")
    s = score(sr, hr[:h, :w], scale=scale, protocol="div2k")
    return {"psnr": s.psnr, "ssim": s.ssim}


def _mean(scores: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(s[k] for s in scores) / len(scores) for k in ("psnr", "ssim")}


# --------------------------------------------------------------------------------------------
# Putting it together


@dataclass
class ScaleResult:
    """One track/scale submission."""

    track: str
    scale: int
    zip_path: Path
    folder: Path
    checkpoint: Path
    model_name: str
    self_ensemble: bool
    n_images: int
    runtime: float
    done: int
    skipped: int
    device: str
    scores: dict[str, dict[str, float]] | None = None
    """On the valid split: {"bicubic": .., "model": .., "model+": ..} each {"psnr", "ssim"}."""


@dataclass(frozen=True)
class RunOptions:
    """How `build_track` runs, beyond what the manifest says."""

    out: Path
    """Output folder (per track and scale subfolders, zips at its top)."""

    device: str = "cpu"
    """Torch device for inference."""

    self_ensemble: bool | None = None
    """Force self-ensemble on or off for every entry (default: manifest, then paper)."""

    compare: bool = True
    """On the valid split, also run the other ensemble setting to report the gain."""

    progress: bool = True
    """Show progress bars."""

    tile: int | None | Literal["manifest"] = "manifest"
    """Override the manifest's tile size."""

    batch_size: int | None = None
    """Override the manifest's tiles per forward pass."""


def lr_inputs(data_root: Path, split: str, track: str, scale: int) -> list[LRInput]:
    """The split's LR images for `track` at `scale` (with HR on the valid split)."""
    from ntire.data.layout import div2k_pairs

    pairs = div2k_pairs(data_root, split=split, track=track, scales=(scale,))
    return [LRInput(path=p.lr[scale], hr=p.hr) for p in pairs]


def build_track(
    manifest: Manifest,
    track: str,
    *,
    scales: tuple[int, ...] | None = None,
    split: str | None = None,
    data_root: Path,
    options: RunOptions,
) -> list[ScaleResult]:
    """Make, validate and zip the submissions of one track, one per scale (see module doc)."""
    import torch

    from ntire.models.checkpoint import load_model
    from ntire.inference import upscale_image
    from ntire.models.build import count_parameters

    plan = manifest.track(track)
    split = split or manifest.split
    if split not in ("test", "valid"):
        raise ConfigError(f"split must be 'test' or 'valid', got {split!r}")
    scales = tuple(scales) if scales else plan.scales
    for s in scales:
        if plan.entry_for(s) is None:
            served = ", ".join(f"x{t}" for t in plan.scales)
            raise ConfigError(f"manifest {manifest.name!r} serves no x{s} on the {track} track (it serves {served})")
    tile = manifest.tile if options.tile == "manifest" else options.tile
    batch = options.batch_size or manifest.batch_size
    device = torch.device(options.device)
    device_kind = "cpu" if device.type == "cpu" else "gpu"

    results = []
    models: dict[Path, tuple[Any, Any]] = {}
    for scale in scales:
        entry = plan.entry_for(scale)
        assert entry is not None
        checkpoint = ensure_checkpoint(entry, data_root, track, progress=options.progress)
        if checkpoint not in models:
            model, config = load_model(checkpoint, map_location="cpu")
            models[checkpoint] = (model.eval().to(device), config)
        model, config = models[checkpoint]
        if scale not in config.scales:
            raise ConfigError(
                f"{checkpoint}: a {config.name} model for x{list(config.scales)}; the manifest asks it for x{scale}"
            )
        ensemble = resolve_self_ensemble(entry, track, options.self_ensemble)
        inputs = lr_inputs(data_root, split, track, scale)
        work = options.out / track / f"x{scale}"
        fingerprint = checkpoint_fingerprint(checkpoint)

        def run(folder: str, with_ensemble: bool) -> PredictRecord:
            setup = {"checkpoint": fingerprint, "self_ensemble": with_ensemble, "scale": scale, "device": device_kind}
            return predict(
                lambda lr: upscale_image(
                    model, config, lr, scale=scale, tile=tile, self_ensemble=with_ensemble, device=device, max_batch=batch
                ),
                inputs,
                work / folder,
                scale=scale,
                setup=setup,
                state_path=work / f"state-{folder}.json",
                progress=options.progress,
                desc=f"{track} x{scale}{'+' if with_ensemble else ''}",
            )

        record = run("sr", ensemble)
        readme = Readme(
            runtime=record.runtime,
            cpu=device_kind == "cpu",
            extra_data=entry.extra_data,
            description=describe(entry, checkpoint, config.name, count_parameters(model), ensemble),
        )
        atomic_write_text(work / "sr" / README_NAME, format_readme(readme))
        expected = expected_from_lr_files([i.path for i in inputs], scale)
        zip_path = write_zip(work / "sr", options.out / f"{track}_x{scale}.zip", expected)

        scores = None
        if split == "valid":
            scores = {"bicubic": score_bicubic(inputs, scale)}
            scores["model+" if ensemble else "model"] = score_folder(work / "sr", inputs, scale)
            if options.compare:
                run("alt", not ensemble)
                scores["model" if ensemble else "model+"] = score_folder(work / "alt", inputs, scale)
            atomic_write_text(work / "scores.json", json.dumps(scores, indent=1))
        results.append(
            ScaleResult(
                track=track,
                scale=scale,
                zip_path=zip_path,
                folder=work / "sr",
                checkpoint=checkpoint,
                model_name=config.name,
                self_ensemble=ensemble,
                n_images=len(inputs),
                runtime=record.runtime,
                done=record.done,
                skipped=record.skipped,
                device=str(device),
                scores=scores,
            )
        )
    return results


def format_results(results: list[ScaleResult]) -> str:
    """A table of the submissions made: zip, images, runtime; with scores on the valid split."""
    scored = any(r.scores for r in results)
    head = ["track", "scale", "images", "made", "s/image", "ensemble"]
    if scored:
        head += ["bicubic", "model", "model+", "gain(+)"]
    head += ["zip"]
    rows = []
    for r in results:
        row = [r.track, f"x{r.scale}", str(r.n_images), str(r.done), f"{r.runtime:.3f}", "on" if r.self_ensemble else "off"]
        if scored:
            s = r.scores or {}
            gain = s["model+"]["psnr"] - s["model"]["psnr"] if "model" in s and "model+" in s else None
            row += [_cell(s.get("bicubic")), _cell(s.get("model")), _cell(s.get("model+")), "-" if gain is None else f"{gain:+.2f} dB"]
        row.append(str(r.zip_path))
        rows.append(row)
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    note = ""
    if scored:
        note = "\nPSNR dB / SSIM, DIV2K protocol (RGB, scale+6 border pixels ignored); model+ = self-ensemble x8"
    return "\n".join(lines) + note


def _cell(s: dict[str, float] | None) -> str:
    if not s:
        return "-"
    psnr = "inf" if math.isinf(s["psnr"]) else f"{s['psnr']:.2f}"
    return f"{psnr}/{s['ssim']:.4f}".replace("/0.", "/.")


# --------------------------------------------------------------------------------------------
# MLflow


def log_results(
    results: list[ScaleResult],
    *,
    run_name: str,
    params: dict[str, Any],
    report_dir: Path,
    uri: str | None = None,
    say: Callable[[str], None] = print,
) -> None:
    """Log a track's results to one MLflow run (metrics per scale, the report folder as artifacts).

    MLflow is optional: without it (or with its store unreachable) this says so and returns.
    The store is `uri`, else $MLFLOW_TRACKING_URI, else the SQLite file `runs/mlflow.db`.
    """
    try:
        import mlflow  # noqa: F401
    except ImportError:
        say("MLflow is not installed (pip install 'ntire[track]'): results not logged")
        return
    from ntire.training.tracking import start_tracking
    from ntire.config import TrackingConfig

    tracker = start_tracking(
        TrackingConfig(uri=uri, experiment="ntire-submissions"),
        run_name=run_name,
        output_dir="runs",
        params=params,
        say=say,
    )
    if not tracker.active:
        return
    tracker.log_metrics(results_metrics(results), step=0)
    tracker.log_artifacts(report_dir, "report")
    tracker.finish()
    say(f"logged to MLflow run {tracker.run_id} ({run_name}) at {tracker.uri}")


def results_metrics(results: list[ScaleResult]) -> dict[str, float]:
    """Flat MLflow metrics for a track's results: `x2_runtime_s`, `x2_psnr_model_plus`, ..."""
    metrics: dict[str, float] = {}
    for r in results:
        metrics[f"x{r.scale}_runtime_s"] = r.runtime
        for variant, s in (r.scores or {}).items():
            key = variant.replace("+", "_plus")
            metrics[f"x{r.scale}_psnr_{key}"] = s["psnr"]
            metrics[f"x{r.scale}_ssim_{key}"] = s["ssim"]
    return metrics


def write_report(results: list[ScaleResult], report_dir: Path) -> None:
    """Write the results table (`table.txt`) and every number (`results.json`) to `report_dir`."""
    rows = []
    for r in results:
        row = {k: getattr(r, k) for k in ("track", "scale", "model_name", "self_ensemble", "n_images", "runtime", "device", "scores")}
        row.update(zip=str(r.zip_path), checkpoint=str(r.checkpoint))
        rows.append(row)
    atomic_write_text(report_dir / "results.json", json.dumps(rows, indent=1) + "\n")
    atomic_write_text(report_dir / "table.txt", format_results(results) + "\n")


__all__ = [
    "DEFAULT_SELF_ENSEMBLE",
    "LRInput",
    "Manifest",
    "ModelEntry",
    "PredictRecord",
    "QuickTrain",
    "RunOptions",
    "ScaleResult",
    "TRACKS",
    "TrackPlan",
    "SAMPLE_MANIFEST",
    "build_track",
    "checkpoint_fingerprint",
    "ensure_checkpoint",
    "default_manifest",
    "ensure_data",
    "format_results",
    "load_expected",
    "load_manifest",
    "log_results",
    "lr_inputs",
    "predict",
    "resolve_self_ensemble",
    "quick_train",
    "results_metrics",
    "write_report",
    "write_zip",
]
