"""Training configuration: typed dataclasses, YAML files, command-line overrides.

A run's settings come from three layers, each overriding the one before: the dataclass defaults
(the paper's recipe, with a data source and step budget sized for a 2-core machine), a YAML file
(`--config`, e.g. one shipped in ntire/configs/), and command-line options. `build_config` merges
them and validates the result; variants are made with `dataclasses.replace`.

This module imports no torch, so the CLI and config tests stay fast.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from ntire.config import MODEL_PRESETS, ModelConfig, from_dict, to_dict
from ntire.errors import ConfigError

CONFIG_DIR = Path(__file__).parent / "configs"
"""The YAML configurations shipped with the package (`--config demo` finds `demo.yaml` here)."""


@dataclass(frozen=True)
class DataConfig:
    """Where training and validation images come from, and how batches are cut from them."""

    source: str = "data/sample"
    """Training data: a dataset root in DIV2K layout (holding `DIV2K/`), sharded once into
    `shard_dir` and streamed from there; or WebDataset shard URLs (a path or URL, brace notation
    such as `shards/train-{000000..000041}.tar` allowed)."""

    name: str | None = None
    """Short data name used in the run name; default: the last folder name of `source`."""

    track: Literal["bicubic", "unknown"] = "bicubic"
    """NTIRE degradation track: which LR images are paired with the HR ones."""

    train_indices: tuple[int, int] | None = None
    """First and last DIV2K image number (inclusive) to train on, e.g. [1, 800]; default all."""

    valid_root: str | None = None
    """Dataset root in DIV2K layout for validation; default `source` when that is a folder."""

    valid_indices: tuple[int, int] | None = None
    """First and last DIV2K validation image number (inclusive), e.g. [801, 810]; default all."""

    valid_tile: int | None = None
    """Validate in tiles of this many LR pixels (bounds memory on big images); default whole."""

    shard_dir: str | None = None
    """Where a dataset root is sharded to; default `<output_dir>/shards`. Reused when complete."""

    subimage: int | None = None
    """Cut HR images into sub-images of this size when sharding (faster patch sampling)."""

    subimage_step: int | None = None
    """Stride between sub-images; default `subimage` (no overlap)."""

    batch_size: int = 16
    """Patches per micro-batch on each process (paper: 16 in total)."""

    patch_size: int = 48
    """LR patch side in pixels; the HR patch is `patch_size * scale` (paper: 48)."""

    patches_per_sample: int = 8
    """Patches cut from each decoded image before the next is read (amortises decoding)."""

    shuffle_buffer: int = 256
    """Patches held in the loader's shuffle buffer."""

    num_workers: int = 2
    """DataLoader worker processes per training process (0: load in the training process)."""

    augment: bool = True
    """Random horizontal flips and 90-degree rotations (paper recipe)."""

    skip_bad_samples: bool = False
    """Skip an undecodable sample with a warning instead of stopping."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "patch_size", "patches_per_sample", "shuffle_buffer"):
            _positive(self, name, "data")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")
        for name in ("train_indices", "valid_indices"):
            span = getattr(self, name)
            if span is not None and not (1 <= span[0] <= span[1]):
                raise ConfigError(f"data.{name} must be [first, last] with 1 <= first <= last, got {list(span)}")
        for name in ("valid_tile", "subimage", "subimage_step"):
            if getattr(self, name) is not None:
                _positive(self, name, "data")
        if not self.source:
            raise ConfigError("data.source is empty; give a dataset folder or shard URLs (--data)")


@dataclass(frozen=True)
class OptimConfig:
    """Loss minimisation: Adam with a step learning-rate schedule counted in updates."""

    lr: float = 1e-4
    """Initial learning rate (paper: 1e-4)."""

    betas: tuple[float, float] = (0.9, 0.999)
    """Adam's beta1 and beta2 (paper: 0.9, 0.999)."""

    eps: float = 1e-8
    """Adam's epsilon (paper: 1e-8)."""

    weight_decay: float = 0.0
    """L2 weight decay (paper: none)."""

    lr_step: int = 200_000
    """Multiply the learning rate by `lr_gamma` every this many updates (paper: 2e5)."""

    lr_gamma: float = 0.5
    """Learning-rate factor applied every `lr_step` updates (paper: halved)."""

    grad_clip: float | None = None
    """Clip the global gradient norm to this value; default no clipping."""

    grad_accum: int = 1
    """Micro-batches whose gradients are summed into one update (effective batch multiplier)."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.eps <= 0:
            raise ConfigError(f"optim.lr and optim.eps must be positive, got {self.lr}, {self.eps}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas must lie in [0, 1), got {list(self.betas)}")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 < self.lr_gamma <= 1.0:
            raise ConfigError(f"optim.lr_gamma must lie in (0, 1], got {self.lr_gamma}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"optim.grad_clip must be positive, got {self.grad_clip}")
        _positive(self, "lr_step", "optim")
        _positive(self, "grad_accum", "optim")


@dataclass(frozen=True)
class TrackingConfig:
    """Experiment tracking with MLflow (optional: off when mlflow is not installed)."""

    enabled: bool = True
    """Log this run to MLflow (main process only)."""

    uri: str | None = None
    """Tracking URI; default $MLFLOW_TRACKING_URI, else a SQLite file `<output_dir>/mlflow.db`."""

    experiment: str = "ntire"
    """MLflow experiment the run is filed under."""

    run_name: str | None = None
    """Run name; default one encoding the setup, e.g. `EDSR_x2_f64b16_bicubic_sample_3k`."""

    comparison_crop: int = 128
    """Side in HR pixels of the bicubic | SR | HR comparison image logged at each validation."""

    def __post_init__(self) -> None:
        _positive(self, "comparison_crop", "tracking")


def _default_model() -> ModelConfig:
    return ModelConfig.preset("edsr-baseline", 2)


@dataclass(frozen=True)
class TrainConfig:
    """One training job: model, data, optimiser, schedule of checkpoints and validations."""

    model: ModelConfig = field(default_factory=_default_model)
    """Network to train (YAML may name a preset: `model: {preset: edsr-baseline, scales: [2]}`)."""

    data: DataConfig = field(default_factory=DataConfig)
    """Training and validation data."""

    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser and learning-rate schedule."""

    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """MLflow tracking."""

    max_steps: int = 1000
    """Optimiser updates to train for (paper: 1e6 on DIV2K; the default finishes on 2 CPU cores
    in under an hour with the paper's batch)."""

    seed: int = 0
    """Seed for weights initialisation and the data stream; a run is reproducible from it."""

    output_dir: str = "runs/train"
    """Folder for checkpoints, the exported model, the shard cache and the tracking database."""

    save_every: int = 250
    """Save a resumable checkpoint every this many updates (and at the end)."""

    keep_last: int = 2
    """Checkpoints kept besides the best one by validation PSNR; older ones are deleted."""

    eval_every: int = 250
    """Validate every this many updates (and at the end); 0 validates only at the end."""

    log_every: int = 50
    """Log loss, learning rate and patches/s every this many updates."""

    resume: str | None = None
    """`auto`: continue from the newest complete checkpoint in `output_dir` (if any); or a
    checkpoint folder to continue from. Default: start afresh."""

    init_from: str | None = None
    """Initialise the weights from a trained model (exported folder or released file), e.g. a
    x3/x4 model from the x2 one; tensors that do not fit (the upsampler) are skipped and reported."""

    mixed_precision: Literal["auto", "no", "bf16", "fp16"] | None = None
    """Autocast precision. `auto`: bf16 where the hardware runs it natively (GPUs from Ampere on,
    CPUs with AVX512-BF16 or AMX, where it is 2x faster than fp32), else fp32 (emulated bf16 is
    many times slower). Default: what `accelerate launch` or its config file says, else fp32."""

    channels_last: bool = False
    """Keep activations in channels-last memory layout (faster convolutions on CPU and GPU)."""

    compile: bool = False
    """Compile the model with torch.compile (helps on GPUs; no gain measured on CPU)."""

    progress: bool = True
    """Show a progress bar with patches/s and ETA on the main process."""

    def __post_init__(self) -> None:
        _positive(self, "max_steps")
        _positive(self, "save_every")
        _positive(self, "log_every")
        if self.eval_every < 0:
            raise ConfigError(f"eval_every must be >= 0, got {self.eval_every}")
        if self.keep_last < 1:
            raise ConfigError(f"keep_last must be >= 1 (the newest checkpoint is what resumes), got {self.keep_last}")
        if not self.output_dir:
            raise ConfigError("output_dir is empty")

    @property
    def scales(self) -> tuple[int, ...]:
        """The scales trained (the model's)."""
        return self.model.scales


def _positive(obj: Any, name: str, section: str = "") -> None:
    value = getattr(obj, name)
    if value < 1:
        where = f"{section}.{name}" if section else name
        raise ConfigError(f"{where} must be positive, got {value}")


# ---------------------------------------------------------------------------------------------
# Layering: defaults < YAML < command line


def expand_model(data: Any, where: str) -> Any:
    """Expand `{preset: NAME, ...}` in a model mapping into the preset's explicit fields."""
    if not isinstance(data, dict) or "preset" not in data:
        return data
    data = dict(data)
    name = data.pop("preset")
    if name not in MODEL_PRESETS:
        raise ConfigError(f"{where}.preset: unknown model {name!r}; choose from {', '.join(MODEL_PRESETS)}")
    fields = dict(MODEL_PRESETS[name])
    if "scales" not in data:
        data["scales"] = [2, 3, 4] if fields["kind"] == "mdsr" else [2]
    fields.update(data)
    return fields


def resolve_shipped(name: str | os.PathLike, folder: Path, what: str, plural: str) -> Path:
    """A file path, or the name of a YAML file shipped in `folder` (`demo`, `edsr_x2.yaml`)."""
    path = Path(name)
    if path.exists():
        return path
    shipped = folder / (path.name if path.suffix else f"{path.name}.yaml")
    if not path.parent.parts and shipped.exists():
        return shipped
    known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
    raise ConfigError(f"{name}: no such {what} (shipped {plural}: {known})")


def resolve_config_path(name: str | os.PathLike) -> Path:
    """A config file path, or the name of a shipped one (`demo`, `edsr_x2.yaml`)."""
    return resolve_shipped(name, CONFIG_DIR, "config file", "configs")


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The raw mapping in a YAML config file, with a model preset expanded."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    if "model" in data:
        data["model"] = expand_model(data["model"], f"{path}: model")
    return data


def merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively overlay `override` on `base` (mappings merge, anything else replaces)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """`["optim.lr=2e-4", "data.patch_size=32"]` as a nested mapping; values are YAML scalars."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. optim.lr=2e-4")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({e})") from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is set both as a value and a section")
        node[parts[-1]] = value
    return out


def build_config(
    file: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    model: str | None = None,
    scales: tuple[int, ...] | None = None,
) -> TrainConfig:
    """Merge defaults, the YAML `file` and `overrides` (nested, as `parse_set` makes) into a config.

    `model` (a preset name) replaces the architecture; `scales` the trained scales. These two are
    separate because a preset is several fields at once. Later layers win; the result is
    validated, and errors name the file or option at fault.
    """
    data = to_dict(TrainConfig())
    where = "config"
    if file is not None:
        path = resolve_config_path(file)
        where = str(path)
        data = merge(data, read_config_file(path))
    if model is not None:
        data["model"] = expand_model({"preset": model, **({"scales": list(scales)} if scales else {})}, "--model")
        where = f"{where} with command-line options"
    elif scales:
        data["model"] = dict(data["model"], scales=list(scales))
    if overrides:
        override = dict(overrides)
        if "model" in override:
            override["model"] = expand_model(override["model"], "--set model")
        data = merge(data, override)
        where = f"{where} with command-line options"
    return from_dict(TrainConfig, data, where)


def config_to_yaml(config: TrainConfig) -> str:
    """A config as YAML text that `build_config(file)` reads back to an equal config."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """A config as flat `section.field -> value` pairs (for tracking params)."""
    data = to_dict(config) if dataclasses.is_dataclass(config) else config
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def data_name(config: TrainConfig) -> str:
    """Short name of the training data for run names: `data.name`, else from `data.source`."""
    if config.data.name:
        return config.data.name
    source = config.data.source.rstrip("/")
    # Shard URLs name the shards, not the dataset: use their folder.
    if any(ch in source for ch in "{:") or source.endswith(".tar"):
        source = source.rsplit("/", 1)[0] if "/" in source else "shards"
    return Path(source).name or "data"


def _short_count(n: int) -> str:
    if n >= 1000 and n % 100 == 0:
        k = n / 1000
        return f"{k:g}k"
    return str(n)


def run_name(config: TrainConfig) -> str:
    """A name encoding the setup, BasicSR style: `EDSR_x2_f64b16_bicubic_sample_3k`."""
    if config.tracking.run_name:
        return config.tracking.run_name
    m = config.model
    scales = "".join(str(s) for s in m.scales)
    return "_".join(
        [m.kind.upper(), f"x{scales}", f"f{m.n_feats}b{m.n_blocks}", config.data.track,
         data_name(config), _short_count(config.max_steps)]
    )


__all__ = [
    "CONFIG_DIR",
    "DataConfig",
    "OptimConfig",
    "TrackingConfig",
    "TrainConfig",
    "build_config",
    "config_to_yaml",
    "data_name",
    "expand_model",
    "flatten",
    "merge",
    "parse_set",
    "read_config_file",
    "resolve_config_path",
    "run_name",
]
