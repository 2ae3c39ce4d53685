"""Every option of ntire, defined once: typed dataclasses with a docstring under each field.

The field and its docstring are the definition; everything else is derived from them: the
`ntire train` / `ntire/train.py` flags and their help (ntire.options), `--set KEY=VALUE`, YAML
loading (unknown keys are errors naming the file and the key; a typo is never silently ignored)
and the tracking params. A run's settings come in three layers, each overriding the one before:
the dataclass defaults (the paper's recipe, with a data source and step budget sized for a
2-core machine), a YAML file (`--config`, e.g. one shipped in ntire/configs/), and command-line
options. `build_config` merges them and validates the result; variants are made with
`dataclasses.replace`. The model's architecture (`ModelConfig`, the presets) is defined with the
networks, in ntire/models/config.py, and re-exported here; the machinery that turns dataclasses
into YAML and plain data and back, merges layers and walks the options is ntire.config_io.

This module imports no torch, so the CLI and config tests stay fast (checking a model's `kind`
imports the table of networks, hence torch, when a config is first built).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ntire.config_io import from_dict, merge, read_yaml, to_dict
from ntire.data.challenge import Track
from ntire.errors import ConfigError
from ntire.fields import flag as flag  # re-exported: config modules declare flags with it

# The architecture lives with the networks (ntire/models/config.py); re-exported so that
# `from ntire.config import ModelConfig` and the like keep working.
from ntire.models.config import MODEL_PRESETS as MODEL_PRESETS
from ntire.models.config import SUPPORTED_SCALES as SUPPORTED_SCALES
from ntire.models.config import ModelConfig as ModelConfig
from ntire.models.config import expand_model as expand_model
from ntire.models.network import DIV2K_RGB_MEAN as DIV2K_RGB_MEAN
from ntire.values import parse_tile

CONFIG_DIR = Path(__file__).parent / "configs"
"""The YAML configurations shipped with the package (`--config demo` finds `demo.yaml` here)."""


@dataclass(frozen=True)
class DataConfig:
    """Where training and validation images come from, and how batches are cut from them."""

    source: str = field(default="data/sample", metadata=flag("--data", metavar="DIR|URLS"))
    """Training data: a dataset root in DIV2K layout (holding `DIV2K/`), sharded once into
    `shard_dir` and streamed from there; or WebDataset shard URLs (a path or URL, brace notation
    such as `shards/train-{000000..000041}.tar` allowed)."""

    name: str | None = None
    """Short data name used in the run name; default: the last folder name of `source`."""

    track: Track = field(default="bicubic", metadata=flag("--track"))
    """NTIRE degradation track: which LR images are paired with the HR ones."""

    train_indices: tuple[int, int] | None = None
    """First and last DIV2K image number (inclusive) to train on, e.g. [1, 800]; default all."""

    valid_root: str | None = field(default=None, metadata=flag("--valid-data", metavar="DIR"))
    """Dataset root in DIV2K layout for validation; default `source` when that is a folder."""

    valid_indices: tuple[int, int] | None = None
    """First and last DIV2K validation image number (inclusive), e.g. [801, 810]; default all."""

    valid_tile: int | str | None = field(default=None, metadata=flag(metavar="auto|0|T", parse=parse_tile))
    """Validate in tiles of this many LR pixels (bounds memory on big images; the output is the
    same); auto: whole if it fits the memory free on the device, else the largest tiles that fit;
    null or 0: whole images (default)."""

    shard_dir: str | None = field(default=None, metadata=flag("--shard-dir", metavar="DIR"))
    """Where a dataset root is sharded to; default `<output_dir>/shards`. Reused when complete."""

    subimage: int | None = None
    """Cut HR images into sub-images of this size when sharding (faster patch sampling)."""

    subimage_step: int | None = None
    """Stride between sub-images; default `subimage` (no overlap)."""

    batch_size: int = field(default=16, metadata=flag("--batch-size", metavar="N"))
    """Patches per micro-batch on each process (paper: 16 in total)."""

    patch_size: int = field(default=48, metadata=flag("--patch-size", metavar="P"))
    """LR patch side in pixels; the HR patch is `patch_size * scale` (paper: 48)."""

    patches_per_sample: int = 8
    """Patches cut from each decoded image before the next is read (amortises decoding)."""

    shuffle_buffer: int = 256
    """Patches held in the loader's shuffle buffer."""

    num_workers: int = field(default=2, metadata=flag("--num-workers", metavar="N"))
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
        object.__setattr__(self, "valid_tile", parse_tile(self.valid_tile, "data.valid_tile"))
        for name in ("subimage", "subimage_step"):
            if getattr(self, name) is not None:
                _positive(self, name, "data")
        if not self.source:
            raise ConfigError("data.source is empty; give a dataset folder or shard URLs (--data)")


@dataclass(frozen=True)
class OptimConfig:
    """Loss minimisation: Adam with a step learning-rate schedule counted in updates."""

    lr: float = field(default=1e-4, metadata=flag("--lr", metavar="LR"))
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

    loss: Literal["l1", "l2", "charbonnier"] = field(default="l1", metadata=flag("--loss"))
    """Training loss (ntire.training.losses): `l1` (the paper's), `l2` (the paper's Table 1 ablation:
    lower PSNR) or `charbonnier` (sqrt(d^2 + eps^2), a smooth L1)."""

    loss_eps: float = 1e-3
    """Charbonnier's epsilon, on images scaled to [0, 1] (1e-3 is the common choice)."""

    ema_decay: float = field(default=0.0, metadata=flag("--ema-decay", metavar="D"))
    """Keep an exponential moving average of the weights, ema = D * ema + (1 - D) * w after every
    update (BasicSR's EDSR recipe: 0.999); validated beside the raw weights and exported to
    `OUTPUT/model-ema`. 0 (default): none."""

    grad_clip: float | None = field(default=None, metadata=flag("--grad-clip", metavar="NORM"))
    """Clip the global gradient norm to this value; default no clipping."""

    grad_accum: int = field(default=1, metadata=flag("--grad-accum", metavar="N"))
    """Micro-batches per update. Accelerate divides each micro-batch's loss by this count, so the
    update averages their gradients: the same update as one batch this many times larger."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.eps <= 0:
            raise ConfigError(f"optim.lr and optim.eps must be positive, got {self.lr}, {self.eps}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas must lie in [0, 1), got {list(self.betas)}")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 < self.lr_gamma <= 1.0:
            raise ConfigError(f"optim.lr_gamma must lie in (0, 1], got {self.lr_gamma}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"optim.ema_decay must lie in [0, 1) (0: no EMA), got {self.ema_decay}")
        if self.loss_eps <= 0:
            raise ConfigError(f"optim.loss_eps must be positive, got {self.loss_eps}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"optim.grad_clip must be positive, got {self.grad_clip}")
        _positive(self, "lr_step", "optim")
        _positive(self, "grad_accum", "optim")


@dataclass(frozen=True)
class TrackingConfig:
    """Experiment tracking with MLflow (optional: off when mlflow is not installed)."""

    enabled: bool = field(default=True, metadata=flag("--tracking"))
    """Log this run to MLflow (main process only)."""

    uri: str | None = field(default=None, metadata=flag("--tracking-uri", metavar="URI"))
    """Tracking URI; default $MLFLOW_TRACKING_URI, else a SQLite file `<output_dir>/mlflow.db`."""

    experiment: str = "ntire"
    """MLflow experiment the run is filed under."""

    run_name: str | None = field(default=None, metadata=flag("--run-name", metavar="NAME"))
    """Run name; default one encoding the setup, e.g. `EDSR_x2_f64b16_bicubic_sample_3k`."""

    comparison_crop: int = 128
    """Side in HR pixels of the box of the labelled comparison figure logged at each validation (the
    square where SR and bicubic differ most)."""

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

    max_steps: int = field(default=1000, metadata=flag(metavar="N"))
    """Optimiser updates to train for (paper: 1e6 on DIV2K; the default finishes on 2 CPU cores
    in under an hour with the paper's batch)."""

    seed: int = 0
    """Seed for weights initialisation and the data stream; a run is reproducible from it."""

    output_dir: str = field(default="runs/train", metadata=flag(metavar="DIR"))
    """Folder for checkpoints, the exported model, the shard cache and the tracking database."""

    save_every: int = field(default=250, metadata=flag(metavar="N"))
    """Save a resumable checkpoint every this many updates (and at the end)."""

    keep_last: int = field(default=2, metadata=flag(metavar="K"))
    """Checkpoints kept besides the best one by validation PSNR; older ones are deleted."""

    eval_every: int = field(default=250, metadata=flag(metavar="N"))
    """Validate every this many updates (and at the end); 0 validates only at the end."""

    log_every: int | None = field(default=None, metadata=flag(metavar="N"))
    """Log loss, learning rate and patches/s every this many updates. Default: every
    max(1, min(25, max_steps // 50)) updates, i.e. at least every 25 updates and at least 50
    points per run (every update for runs shorter than 100 updates)."""

    resume: str | None = field(default=None, metadata=flag(metavar="auto|PATH"))
    """`auto`: continue from the newest complete checkpoint in `output_dir` (if any); or a
    checkpoint folder to continue from. Default: start afresh."""

    archive_old_run: bool = False
    """Starting afresh in an `output_dir` that holds an earlier run (checkpoints or an exported
    model): move that run to `<output_dir>/archive/<date-time>/` first. Default: refuse, so that
    no run is silently replaced (continue one with `resume: auto`)."""

    resume_inexact: bool = False
    """Allow a resume whose loader geometry (processes, loader workers, batch and patch sizes,
    patches per sample, shuffle buffer, seed, augmentation) differs from the checkpoint's: the
    batches then differ from an uninterrupted run's. Default: refuse, naming what changed."""

    init_from: str | None = field(default=None, metadata=flag(metavar="CKPT"))
    """Initialise the weights from a trained model (exported folder or released file), e.g. a
    x3/x4 model from the x2 one; tensors that do not fit (the upsampler) are skipped and reported."""

    mixed_precision: Literal["auto", "no", "bf16", "fp16"] | None = "auto"
    """Autocast precision. `auto` (default): what was measured fastest for the model on the device
    (README, "Speed"): on CPUs bf16 where it is native (AVX512-BF16 or AMX: 2x fp32; emulated bf16
    is many times slower), else fp32; on GPUs bf16 with a captured step, and with an eager step
    bf16 only for compute-bound models (EDSR), fp32 with TF32 convolutions for launch-bound ones
    (EDSR-baseline). null: what `accelerate launch` or its config file says."""

    channels_last: bool | None = None
    """Keep activations in channels-last memory layout (faster convolutions). Default: chosen with
    the precision (on with bf16 where it is native: 2.1x fp32 on an AVX512-BF16 CPU against 1.84x
    for bf16 alone; on with bf16 on GPUs); true or false force it."""

    compile: bool = False
    """Compile the model with torch.compile (no gain measured on CPU; on a GPU the captured step
    is faster, and a compiled model runs eager)."""

    capture: bool = True
    """On a CUDA device, capture each update (forward, backward, clipping, Adam) as a CUDA graph
    and replay it: a small network's step is paced by kernel launches (H200, EDSR-baseline x2:
    3.4x). Runs eager, saying why, with several processes, DeepSpeed, fp16 or --compile."""

    progress: bool = True
    """Show a progress bar with patches/s and ETA on the main process."""

    def __post_init__(self) -> None:
        _positive(self, "max_steps")
        _positive(self, "save_every")
        if self.log_every is not None:
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
    data = read_yaml(path)
    if "model" in data:
        data["model"] = expand_model(data["model"], f"{path}: model")
    return data


def build_config(
    file: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    model: str | None = None,
) -> TrainConfig:
    """Merge defaults, the YAML `file`, the preset `model` and `overrides` (nested, as
    `parse_set` makes) into a config, each layer winning over the one before.

    `model` (a preset name, `--model`) replaces the whole architecture, which is why it is a layer
    of its own: a preset is several fields at once. The result is validated, and errors name the
    file or option at fault.
    """
    data = to_dict(TrainConfig())
    where = "config"
    if file is not None:
        path = resolve_config_path(file)
        where = str(path)
        data = merge(data, read_config_file(path))
    if model is not None:
        data["model"] = expand_model({"preset": model}, "--model")
    if overrides:
        override = dict(overrides)
        if "model" in override:
            override["model"] = expand_model(override["model"], "--set model")
        data = merge(data, override)
    if model is not None or overrides:
        where = f"{where} with command-line options"
    return from_dict(TrainConfig, data, where)


def config_to_yaml(config: TrainConfig) -> str:
    """A config as YAML text that `build_config(file)` reads back to an equal config."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


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


