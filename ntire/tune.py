"""Hyper-parameter sweeps with Ray Tune over the real training loop.

    ntire tune --config demo --space tiny --num-samples 4          # ASHA, on this machine
    ntire tune --config edsr_baseline_x2 --space paper --address auto --gpus-per-trial 1

Every trial calls `ntire.train.fit` (the same function as `ntire train` and `ntire/train.py`) with
a config made by `dataclasses.replace` of the swept fields. A search space is a YAML file naming
config fields (dotted paths or nested sections): a plain value fixes the field for every trial,
a one-key mapping `{DISTRIBUTION: ARGS}` samples it (see DISTRIBUTIONS). For example

    optim.lr: {loguniform: [1.0e-4, 1.0e-3]}
    model: {n_feats: {choice: [8, 16]}, n_blocks: 2}

The metric is the validation PSNR (`valid_psnr`, averaged over the scales; maximised), reported
after each validation together with that step's training checkpoint. ASHA stops poor trials at
the validation steps; a crashed trial is retried from its last checkpoint (FailureConfig); an
interrupted sweep continues with `ntire tune --resume` (Tuner.restore). The best trial's config
is written as `best.yaml`, which `ntire train --config` reads as it is.

Tracking: the sweep is one MLflow run, each trial a child run (tag `mlflow.parentRunId`) logged by
`fit` exactly as a training job, named after its setup plus the trial id. The parent run and
experiment are created here in the driver, before any trial, because trials racing to create a
fresh SQLite store collide.

Where things go (`--output-dir`, default runs/tune):

    sweep.yaml     what the sweep was started with (config, space, options, parent run id)
    trials/        Ray's experiment folder: one folder per trial (its training output in train/,
                   the checkpoints Ray keeps), plus the state `--resume` restores from
    shards/        the training data sharded once for all trials
    mlflow.db      the tracking store when neither the config nor MLFLOW_TRACKING_URI name one
    best.yaml      the best trial's training config
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

import yaml
from ray import tune

from ntire.config import from_dict, to_dict
from ntire.errors import ConfigError
from ntire.files import atomic_write_text
from ntire.config import CONFIG_DIR, TrainConfig, config_to_yaml, data_name, flatten, run_name

SPACE_DIR = CONFIG_DIR / "spaces"
"""The search spaces shipped with the package (`--space tiny` finds `tiny.yaml` here)."""

METRIC = "valid_psnr"
"""What a sweep maximises: validation PSNR in dB, averaged over the trained scales."""

MODE = "max"

TIME_ATTR = "step"
"""The reported result field ASHA counts progress in: optimizer updates."""

EXPERIMENT_DIR = "trials"
"""Name of Ray's experiment folder inside the sweep's output folder (or storage)."""

SWEEP_FILE = "sweep.yaml"
BEST_FILE = "best.yaml"

# What ntire tune sets for every trial itself; a space may not sweep or fix these.
RESERVED = ("output_dir", "resume", "progress", "save_every", "keep_last", "tracking.uri", "tracking.run_name")

# Fields that decide which shards training reads; sweeping them makes each trial shard for itself.
_SHARD_FIELDS = ("model.kind", "model.scales", "data.track", "data.train_indices", "data.subimage",
                 "data.subimage_step")


# ---------------------------------------------------------------------------------------------
# Search spaces


@dataclass(frozen=True)
class Distribution:
    """One way of drawing a value, as a search space names it."""

    build: Callable[..., Any]
    """Makes the Ray Tune domain from the YAML arguments."""

    arity: int | None
    """Number of arguments; None: one list of values."""

    usage: str
    """The arguments, for error messages."""


DISTRIBUTIONS: dict[str, Distribution] = {
    "uniform": Distribution(tune.uniform, 2, "[low, high]"),
    "quniform": Distribution(tune.quniform, 3, "[low, high, q]"),
    "loguniform": Distribution(tune.loguniform, 2, "[low, high]"),
    "qloguniform": Distribution(tune.qloguniform, 3, "[low, high, q]"),
    "randn": Distribution(tune.randn, 2, "[mean, sd]"),
    "randint": Distribution(tune.randint, 2, "[low, high] (high excluded)"),
    "qrandint": Distribution(tune.qrandint, 3, "[low, high, q] (high included)"),
    "lograndint": Distribution(tune.lograndint, 2, "[low, high] (high excluded)"),
    "choice": Distribution(tune.choice, None, "[value, value, ...]"),
    "grid": Distribution(tune.grid_search, None, "[value, value, ...] (each value num-samples times)"),
}
"""The distributions a search space may name: Ray Tune's sampling functions of the same names
(`grid` is tune.grid_search)."""


@dataclass(frozen=True)
class SpaceEntry:
    """One config field of a search space: fixed to a value or drawn from a distribution."""

    path: str
    """Dotted config field, e.g. `optim.lr`."""

    kind: str
    """A name in DISTRIBUTIONS, or `fixed`."""

    args: tuple[Any, ...]
    """The distribution's arguments (for `choice`/`grid`: the values; for `fixed`: the value)."""

    def domain(self) -> Any:
        """The Ray Tune domain (or grid) to sample this field from."""
        dist = DISTRIBUTIONS[self.kind]
        return dist.build(list(self.args)) if dist.arity is None else dist.build(*self.args)

    def probes(self) -> list[Any]:
        """Values this entry can take that are worth validating up front (bounds, every choice)."""
        if self.kind == "fixed":
            return [self.args[0]]
        if self.kind in ("choice", "grid"):
            return list(self.args)
        if self.kind in ("randint", "lograndint"):
            return [self.args[0], self.args[1] - 1]
        if self.kind == "randn":
            return []
        return [self.args[0], self.args[1]]


@dataclass(frozen=True)
class SearchSpace:
    """A parsed search space file."""

    entries: tuple[SpaceEntry, ...]
    source: str
    """Where it came from (file path), for messages."""

    @property
    def fixed(self) -> dict[str, Any]:
        """Fields set to the same value in every trial."""
        return {e.path: e.args[0] for e in self.entries if e.kind == "fixed"}

    @property
    def sampled(self) -> tuple[SpaceEntry, ...]:
        """Fields drawn per trial."""
        return tuple(e for e in self.entries if e.kind != "fixed")

    def param_space(self) -> dict[str, Any]:
        """Ray Tune's `param_space`: dotted field -> domain."""
        return {e.path: e.domain() for e in self.sampled}

    def trials(self, num_samples: int) -> int:
        """Trials a sweep of `num_samples` runs: each grid combination `num_samples` times."""
        grid = math.prod(len(e.args) for e in self.sampled if e.kind == "grid")
        return num_samples * grid

    def to_data(self) -> dict[str, Any]:
        """The space as YAML-ready data (dotted keys), which `parse_space` reads back."""
        return {e.path: (e.args[0] if e.kind == "fixed" else {e.kind: list(e.args)}) for e in self.entries}


def resolve_space_path(name: str | os.PathLike) -> Path:
    """A search space file path, or the name of a shipped one (`tiny`, `paper.yaml`)."""
    from ntire.config import resolve_shipped

    return resolve_shipped(name, SPACE_DIR, "search space file", "spaces")


def load_space(name: str | os.PathLike, base: TrainConfig | None = None) -> SearchSpace:
    """Read a search space file (or shipped name); with `base`, check every field and value
    against that training config (errors name the file and the field)."""
    path = resolve_space_path(name)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    space = parse_space(data, str(path))
    if base is not None:
        check_space(space, base)
    return space


def parse_space(data: Any, where: str = "space") -> SearchSpace:
    """A search space from plain data: dotted keys or nested sections; plain values are fixed,
    one-key mappings `{distribution: args}` are sampled."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of config fields, got {type(data).__name__}")
    entries = [_entry(path, value, where) for path, value in _flatten_space(data, "", where)]
    if not any(e.kind != "fixed" for e in entries):
        raise ConfigError(f"{where}: nothing to sweep; give at least one field a distribution, "
                          f"e.g. optim.lr: {{loguniform: [1.0e-4, 1.0e-3]}}")
    seen: set[str] = set()
    for e in entries:
        if e.path in seen:
            raise ConfigError(f"{where}: {e.path} is given twice")
        seen.add(e.path)
    return SearchSpace(tuple(entries), where)


def _flatten_space(data: dict, prefix: str, where: str) -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{where}: field names must be text, got {key!r}")
        path = f"{prefix}{key}"
        if isinstance(value, dict) and not _is_distribution(value):
            if not value:
                raise ConfigError(f"{where}: {path} is an empty section")
            yield from _flatten_space(value, f"{path}.", where)
        else:
            yield path, value


def _is_distribution(value: dict) -> bool:
    return len(value) == 1 and next(iter(value)) in DISTRIBUTIONS


def _entry(path: str, value: Any, where: str) -> SpaceEntry:
    if not isinstance(value, dict):
        return SpaceEntry(path, "fixed", (value,))
    (kind, args), = value.items()
    usage, arity = DISTRIBUTIONS[kind].usage, DISTRIBUTIONS[kind].arity
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}: {path}: {kind} takes a list {usage}, got {args!r}")
    if arity is None:
        return SpaceEntry(path, kind, tuple(args))
    if len(args) != arity:
        raise ConfigError(f"{where}: {path}: {kind} takes {usage}, got {args!r}")
    numbers = []
    for a in args:
        try:
            # YAML reads 1e-4 (no dot) as text; every ranged distribution takes numbers.
            number = float(a) if not isinstance(a, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise ConfigError(f"{where}: {path}: {kind} takes numbers {usage}, got {args!r}")
        numbers.append(int(number) if kind.endswith("randint") else number)
    if kind != "randn" and not numbers[0] < numbers[1]:
        raise ConfigError(f"{where}: {path}: {kind} needs low < high, got {args!r}")
    if kind.startswith("log") or kind.startswith("qlog"):
        if numbers[0] <= 0:
            raise ConfigError(f"{where}: {path}: {kind} needs a positive low bound, got {args!r}")
    return SpaceEntry(path, kind, tuple(numbers))


def field_types(cls: type = TrainConfig, prefix: str = "") -> dict[str, Any]:
    """Every leaf field of a (nested) config dataclass: dotted path -> its type hint."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            out.update(field_types(hint, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = hint
    return out


def check_space(space: SearchSpace, base: TrainConfig) -> None:
    """Refuse unknown or reserved fields, and values the training config would refuse."""
    known = field_types()
    sections = {p.rsplit(".", i)[0] for p in known for i in range(1, p.count(".") + 1)}
    for e in space.entries:
        if e.path in sections:
            raise ConfigError(f"{space.source}: {e.path} is a section; sweep its fields ({e.path}.FIELD)")
        parent, _, last = e.path.rpartition(".")
        if parent in known:
            raise ConfigError(f"{space.source}: {parent}: unknown distribution {last!r}; "
                              f"choose from {', '.join(DISTRIBUTIONS)}")
        if e.path not in known:
            near = ", ".join(p for p in known if p.rsplit(".", 1)[-1] == e.path.rsplit(".", 1)[-1])
            hint = f" (did you mean {near}?)" if near else ""
            raise ConfigError(f"{space.source}: {e.path}: no such training config field{hint}")
        if e.path in RESERVED:
            raise ConfigError(f"{space.source}: {e.path} is set by ntire tune for each trial; leave it out")
        if e.path == "max_steps" and e.kind != "fixed":
            raise ConfigError(f"{space.source}: max_steps cannot be swept (it is every trial's step budget, "
                              "which ASHA divides into rungs); fix it instead")
        for value in e.probes():
            try:
                apply_params(base, {e.path: value})
            except ConfigError as err:
                raise ConfigError(f"{space.source}: {e.path}: value {value!r} is refused: {err}") from None


def apply_params(config: TrainConfig, params: Mapping[str, Any]) -> TrainConfig:
    """`config` with the dotted fields in `params` replaced (nested `dataclasses.replace`).

    Values are checked and coerced as a YAML config file's would be (numbers to the field's type,
    lists to tuples, literals checked), and the config's own validation runs.
    """
    for path, value in params.items():
        config = _replace(config, path.split("."), value, path)
    return config


def _replace(obj: Any, parts: list[str], value: Any, path: str) -> Any:
    name = parts[0]
    if not dataclasses.is_dataclass(obj) or name not in {f.name for f in dataclasses.fields(obj)}:
        raise ConfigError(f"{path}: no such training config field")
    if len(parts) > 1:
        return dataclasses.replace(obj, **{name: _replace(getattr(obj, name), parts[1:], value, path)})
    hint = typing.get_type_hints(type(obj))[name]
    if dataclasses.is_dataclass(hint):
        raise ConfigError(f"{path}: is a section; sweep its fields ({path}.FIELD)")
    # Read the value exactly as a config file's value is read (a one-field dataclass through
    # from_dict): numpy scalars from Ray's samplers become Python numbers first.
    leaf = dataclasses.make_dataclass("Field", [("value", hint)])
    coerced = from_dict(leaf, {"value": _python(value)}, path).value
    try:
        return dataclasses.replace(obj, **{name: coerced})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path}: {e}") from None


def _python(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_python(v) for v in value]
    item = getattr(value, "item", None)  # numpy scalars
    return item() if callable(item) and not isinstance(value, (str, bytes)) else value


# ---------------------------------------------------------------------------------------------
# Trials


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a sweep shares (sent to the trial processes)."""

    base: TrainConfig
    """The training config with the space's fixed fields applied and paths made absolute."""

    tracking_uri: str | None
    """MLflow store of the sweep (None: tracking off)."""

    parent_run_id: str | None
    """The sweep's MLflow run; each trial's run is filed under it."""

    workers: int = 1
    """Training processes per trial (more than 1: a Ray Train TorchTrainer)."""

    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_failures: int = 2
    """Retries of a crashed trial (distributed trials: of its Ray Train run)."""

    storage: str = ""
    """The sweep's Ray storage (folder or URI); distributed trials keep their Ray Train runs there."""

    trials_root: str = ""
    """Local folder of the trials' training outputs: `<trials_root>/<trial id>/train`."""

    def train_dir(self, trial_id: str) -> Path:
        """Where trial `trial_id` trains (not Ray's get_trial_dir(), which a reused trial process
        reports for its previous trial)."""
        return Path(self.trials_root) / trial_id / "train"


def trial_config(setup: TrialSetup, params: Mapping[str, Any], *, trial_id: str, output_dir: str | os.PathLike,
                 resume: str | os.PathLike | None) -> TrainConfig:
    """The training config of one trial: the base with the sampled `params` replaced, writing to
    `output_dir`, tracked under the sweep, saving a checkpoint at every validation (what Ray
    keeps and retries from), resuming from `resume` if given."""
    config = apply_params(setup.base, params)
    tracking = dataclasses.replace(
        config.tracking,
        enabled=config.tracking.enabled and setup.tracking_uri is not None,
        uri=setup.tracking_uri,
        run_name=f"{run_name(config)}_{trial_id}",
    )
    return dataclasses.replace(
        config,
        output_dir=str(output_dir),
        resume=str(resume) if resume is not None else None,
        save_every=config.eval_every if config.eval_every > 0 else config.max_steps,
        keep_last=1,
        progress=False,
        tracking=tracking,
    )


class TrialReporter:
    """`fit`'s report hook in a trial: validation metrics plus that step's checkpoint to Ray.

    The first report also files the trial's MLflow run (created by `fit`) under the sweep's run.
    """

    def __init__(self, setup: TrialSetup, trial_id: str, report: Callable[..., None], *,
                 resumed_from: int = 0, send_checkpoint: bool = True) -> None:
        self.setup = setup
        self.trial_id = trial_id
        self._report = report
        self.resumed_from = resumed_from
        self.send_checkpoint = send_checkpoint
        self._filed = False

    def __call__(self, step: int, metrics: Mapping[str, float], checkpoint: Path | None) -> None:
        import ray

        psnrs = [v for k, v in metrics.items() if k.startswith("valid/psnr_x")]
        row: dict[str, Any] = {
            TIME_ATTR: step,
            METRIC: sum(psnrs) / len(psnrs) if psnrs else float("nan"),
            # Ray reads "/" as nesting; keep its results flat.
            **{k.replace("/", "_"): float(v) for k, v in metrics.items()},
            "resumed_from": self.resumed_from,
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
        }
        if checkpoint is not None and self.send_checkpoint:
            if not self._filed:
                self._file_run(checkpoint)
            self._report(row, checkpoint=tune.Checkpoint.from_directory(str(checkpoint)))
        else:
            self._report(row)

    def _file_run(self, checkpoint: Path) -> None:
        """Tag the trial's MLflow run (its id is in the checkpoint) as a child of the sweep's."""
        self._filed = True
        if not (self.setup.parent_run_id and self.setup.tracking_uri):
            return
        from ntire.training.state import read_checkpoint

        run_id = read_checkpoint(checkpoint).state.tracking_run_id
        if not run_id:
            return
        try:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=self.setup.tracking_uri)
            client.set_tag(run_id, "mlflow.parentRunId", self.setup.parent_run_id)
            client.set_tag(run_id, "ntire.trial_id", self.trial_id)
        except Exception as e:  # noqa: BLE001 - tracking must never stop training
            print(f"ntire tune: could not file MLflow run {run_id} under the sweep ({e})", file=sys.stderr)


def _checkpoint_step(path: str | os.PathLike) -> int:
    from ntire.training.state import read_checkpoint

    return read_checkpoint(path).state.step


def run_trial(params: dict[str, Any], setup: TrialSetup) -> None:
    """One trial in this process: `fit` with the trial's config, resumed from Ray's checkpoint
    of this trial if it is being retried or restored."""
    from ntire.training.fit import fit

    context = tune.get_context()
    trial_id = context.get_trial_id()
    checkpoint = tune.get_checkpoint()
    with contextlib.ExitStack() as stack:
        resume = stack.enter_context(checkpoint.as_directory()) if checkpoint is not None else None
        config = trial_config(setup, params, trial_id=trial_id, resume=resume,
                              output_dir=setup.train_dir(trial_id))
        reporter = TrialReporter(setup, trial_id, tune.report,
                                 resumed_from=_checkpoint_step(resume) if resume else 0)
        fit(config, report=reporter)


def run_distributed_trial(params: dict[str, Any], setup: TrialSetup) -> None:
    """One trial as a Ray Train run of `setup.workers` processes, each calling `fit` (Accelerate
    picks up the process group Ray Train sets up). Metrics and checkpoints reach Tune through
    Ray Train; a retried trial's run resumes from its own latest checkpoint (same run name)."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    context = tune.get_context()
    trial_id = context.get_trial_id()
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"params": params, "setup": setup, "trial_id": trial_id},
        scaling_config=ray.train.ScalingConfig(
            num_workers=setup.workers,
            use_gpu=setup.gpus_per_worker > 0,
            resources_per_worker={"CPU": setup.cpus_per_worker, "GPU": setup.gpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=f"train-{trial_id}",
            storage_path=f"{setup.storage.rstrip('/')}/train-runs",
            failure_config=ray.train.FailureConfig(max_failures=setup.max_failures),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()


def _train_worker(loop_config: dict[str, Any]) -> None:
    """Body of each Ray Train worker of a distributed trial."""
    import ray.train

    from ntire.training.fit import fit

    setup: TrialSetup = loop_config["setup"]
    trial_id = loop_config["trial_id"]
    context = ray.train.get_context()
    checkpoint = ray.train.get_checkpoint()
    with contextlib.ExitStack() as stack:
        resume = stack.enter_context(checkpoint.as_directory()) if checkpoint is not None else None
        config = trial_config(setup, loop_config["params"], trial_id=trial_id, resume=resume,
                              output_dir=setup.train_dir(trial_id))
        # Every worker reports (Ray Train gathers them); the checkpoint folder is shared by the
        # workers of one machine, so only the first sends it.
        reporter = TrialReporter(setup, trial_id, ray.train.report,
                                 resumed_from=_checkpoint_step(resume) if resume else 0,
                                 send_checkpoint=context.get_world_rank() == 0)
        fit(config, report=reporter)


def trial_dirname(trial: Any) -> str:
    """Short trial folder names (Ray's default spells out every parameter)."""
    return str(trial.trial_id)


# ---------------------------------------------------------------------------------------------
# Sweeps


@dataclass(frozen=True)
class SweepOptions:
    """How a sweep runs (what `ntire tune` takes besides the config and the space)."""

    num_samples: int = 4
    """Trials drawn from the space (times the grid's combinations, if any)."""

    scheduler: Literal["asha", "fifo"] = "asha"
    """`asha`: stop poor trials early at the validation steps; `fifo`: run every trial to the end."""

    reduction_factor: int = 2
    """ASHA keeps about 1/reduction_factor of the trials at each rung."""

    cpus_per_trial: float = 1.0
    """CPUs per trial (per worker when workers_per_trial > 1)."""

    gpus_per_trial: float = 0.0
    """GPUs per trial (per worker when workers_per_trial > 1)."""

    workers_per_trial: int = 1
    """Training processes per trial; more than 1 runs each trial as a Ray Train TorchTrainer."""

    max_concurrent: int | None = None
    """Trials running at once; default as many as the resources allow."""

    max_failures: int = 2
    """Times a crashed trial is retried from its last checkpoint."""

    seed: int | None = 0
    """Seed of the random search (None: a different draw each time)."""

    storage: str | None = None
    """Where Ray keeps trial results and checkpoints (a folder or s3://...; every node must reach
    it on a multi-node cluster); default the sweep's output folder."""

    verbose: int = 1
    """Ray Tune's console output: 0 silent, 1 status table, 2 every result."""

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ConfigError(f"--num-samples must be positive, got {self.num_samples}")
        if self.workers_per_trial < 1:
            raise ConfigError(f"--workers-per-trial must be positive, got {self.workers_per_trial}")
        if self.cpus_per_trial < 0 or self.gpus_per_trial < 0:
            raise ConfigError("--cpus-per-trial and --gpus-per-trial must be >= 0")
        if self.max_failures < 0:
            raise ConfigError(f"--max-failures must be >= 0, got {self.max_failures}")
        if self.reduction_factor < 2:
            raise ConfigError(f"the ASHA reduction factor must be >= 2, got {self.reduction_factor}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ConfigError(f"--max-concurrent must be positive, got {self.max_concurrent}")


@dataclass(frozen=True)
class SweepState:
    """`sweep.yaml`: everything `--resume` needs to rebuild the sweep as it was started."""

    config: TrainConfig
    """The training config the sweep started from (before the space's fixed fields)."""

    space: dict[str, Any]
    """The search space (dotted keys), as read from `space_source`."""

    space_source: str
    options: SweepOptions
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    name: str = ""
    """The sweep's MLflow run name."""

    cwd: str = ""
    """The folder the sweep was started in: relative paths in `config` are relative to it."""


@dataclass(frozen=True)
class SweepResult:
    """What a sweep produced."""

    best_config: TrainConfig | None
    """The best trial's training config (as written to best.yaml); None if no trial validated."""

    best_path: Path | None
    best_metrics: dict[str, Any]
    best_trial_id: str | None
    trials: int
    """Trials that ended (finished, stopped early or failed)."""

    errors: int
    complete: bool
    """False when the sweep was interrupted before every trial ended (continue with --resume)."""

    parent_run_id: str | None
    tracking_uri: str | None
    output_dir: Path
    results: Any
    """Ray Tune's ResultGrid."""


def sweep_name(config: TrainConfig, space: SearchSpace) -> str:
    """The sweep's MLflow run name, from the space and what no trial changes, e.g.
    `tune_tiny_EDSR_x2_bicubic_sample`."""
    m = config.model
    scales = "".join(str(s) for s in m.scales)
    return f"tune_{Path(space.source).stem}_{m.kind.upper()}_x{scales}_{config.data.track}_{data_name(config)}"


def _say(message: str) -> None:
    print(f"ntire tune: {message}", file=sys.stderr, flush=True)


def prepare_base(config: TrainConfig, space: SearchSpace, output_dir: Path, cwd: str | os.PathLike = "") -> TrainConfig:
    """The config every trial starts from: the space's fixed fields applied, local paths (relative
    to `cwd`, default the current folder) made absolute, since trials run in their own folders,
    possibly on other machines, and the shard cache shared by the trials."""
    here = Path(cwd or os.getcwd())

    def absolute(value: str | None) -> str | None:
        return str((here / value).resolve()) if value and (here / value).exists() else value

    base = apply_params(config, space.fixed)
    data = base.data
    updates: dict[str, Any] = {"source": absolute(data.source), "valid_root": absolute(data.valid_root)}
    swept = {e.path for e in space.sampled}
    if data.shard_dir:
        updates["shard_dir"] = str((here / data.shard_dir).resolve())
    elif not swept & set(_SHARD_FIELDS):
        updates["shard_dir"] = str((output_dir / "shards").resolve())
    return dataclasses.replace(base, data=dataclasses.replace(data, **updates), init_from=absolute(base.init_from))


def shard_once(base: TrainConfig) -> None:
    """Shard a local dataset folder for the trials before any starts (they would race to)."""
    from ntire.training.inputs import prepare_training_shards

    if base.data.shard_dir and Path(base.data.source).is_dir():
        prepare_training_shards(base, say=_say)


def check_validation(base: TrainConfig) -> None:
    """A sweep ranks trials by validation PSNR: refuse a config without validation data."""
    from ntire.training.inputs import validation_root

    if validation_root(base) is None:
        raise ConfigError(f"data.source {base.data.source} is shards, and data.valid_root is not set: "
                          "a sweep needs validation data to rank its trials (set data.valid_root)")


def run_sweep(
    config: TrainConfig,
    space: SearchSpace,
    options: SweepOptions = SweepOptions(),
    *,
    output_dir: str | os.PathLike = "runs/tune",
    address: str | None = None,
    callbacks: Sequence[Any] = (),
) -> SweepResult:
    """Run a new sweep of `config` over `space`; see the module doc for what it writes.

    `address`: a Ray cluster to join (`auto`, HOST:PORT, ray://...); default: the Ray session
    this process already has, else a new local one. `callbacks`: extra Ray Tune callbacks.
    """
    out = Path(output_dir)
    if (out / SWEEP_FILE).exists():
        raise ConfigError(f"{out}: holds a sweep already; continue it with --resume or choose another --output-dir")
    check_space(space, config)
    base = prepare_base(config, space, out)
    check_validation(base)
    out.mkdir(parents=True, exist_ok=True)
    state = SweepState(config=config, space=space.to_data(), space_source=space.source, options=options,
                       name=sweep_name(base, space), cwd=os.getcwd())
    with _parent_run(state, base, out) as (state, tracker):
        atomic_write_text(out / SWEEP_FILE, yaml.safe_dump(to_dict(state), sort_keys=False))
        shard_once(base)
        with ray_session(address):
            results = _tuner(state, base, space, out, callbacks).fit()
        return _finish(state, base, space, out, results, tracker)


def resume_sweep(output_dir: str | os.PathLike = "runs/tune", *, address: str | None = None,
                 callbacks: Sequence[Any] = ()) -> SweepResult:
    """Continue the interrupted sweep in `output_dir` (Tuner.restore): unfinished and errored
    trials resume from their last checkpoints, finished ones are kept, the rest start."""
    out = Path(output_dir)
    state = read_sweep_state(out)
    space = parse_space(state.space, state.space_source)
    base = prepare_base(state.config, space, out, state.cwd)
    path = experiment_path(state.options, out)
    with _parent_run(state, base, out) as (state, tracker):
        with ray_session(address):
            if not tune.Tuner.can_restore(path):
                raise ConfigError(f"{path}: no Ray Tune experiment to resume there")
            tuner = tune.Tuner.restore(path, trainable=_trainable(state, base, out), resume_unfinished=True,
                                       resume_errored=True)
            results = tuner.fit()
        return _finish(state, base, space, out, results, tracker)


def read_sweep_state(output_dir: str | os.PathLike) -> SweepState:
    """The `sweep.yaml` of a sweep's output folder."""
    path = Path(output_dir) / SWEEP_FILE
    if not path.is_file():
        raise ConfigError(f"{output_dir}: no sweep to resume ({SWEEP_FILE} missing); start one without --resume")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read ({e})") from None
    return from_dict(SweepState, data, str(path))


def experiment_path(options: SweepOptions, output_dir: Path) -> str:
    """Ray's experiment folder (or URI) of a sweep."""
    storage = options.storage or str(output_dir.resolve())
    return f"{storage.rstrip('/')}/{EXPERIMENT_DIR}"


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Join `address`, or use the Ray session this process already has, or start a local one;
    shut down only what was started here."""
    import ray

    if ray.is_initialized():
        yield
        return
    if address:
        ray.init(address=address)
    else:
        ray.init(include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _parent_run(state: SweepState, base: TrainConfig, out: Path) -> Iterator[tuple[SweepState, Any]]:
    """Open (or reopen) the sweep's MLflow run; the experiment exists before any trial starts."""
    from ntire.training.tracking import default_tracking_uri, start_tracking

    if not base.tracking.enabled:
        yield dataclasses.replace(state, tracking_uri=None), None
        return
    uri = state.tracking_uri or base.tracking.uri or default_tracking_uri(out)
    params = {f"sweep.space.{k}": v for k, v in state.space.items()}
    params.update({f"sweep.{k}": v for k, v in to_dict(state.options).items()})
    params.update(flatten(base))
    tracker = start_tracking(dataclasses.replace(base.tracking, uri=uri), run_name=state.name, output_dir=out,
                             params=params, resume_run_id=state.parent_run_id, say=_say)
    if not tracker.active:
        yield dataclasses.replace(state, tracking_uri=None), None
        return
    with tracker:
        tracker.set_tags({"ntire.sweep": "parent", "ntire.space": state.space_source})
        yield dataclasses.replace(state, tracking_uri=uri, parent_run_id=tracker.run_id), tracker


def _setup(state: SweepState, base: TrainConfig, out: Path) -> TrialSetup:
    o = state.options
    return TrialSetup(base=base, tracking_uri=state.tracking_uri, parent_run_id=state.parent_run_id,
                      workers=o.workers_per_trial, cpus_per_worker=o.cpus_per_trial,
                      gpus_per_worker=o.gpus_per_trial, max_failures=o.max_failures,
                      storage=o.storage or str(out.resolve()), trials_root=_trials_root(state, out))


def _trials_root(state: SweepState, out: Path) -> str:
    """Beside Ray's trial folders when they are local; else a scratch folder on each machine."""
    if state.options.storage and "://" in state.options.storage:
        import tempfile

        return str(Path(tempfile.gettempdir()) / "ntire-tune" / state.name)
    return experiment_path(state.options, out)


def _trainable(state: SweepState, base: TrainConfig, out: Path) -> Any:
    o = state.options
    setup = _setup(state, base, out)
    if o.workers_per_trial > 1:
        # The trial itself only drives its Ray Train run; the workers hold the resources (Ray
        # refuses a trial of no resources at all).
        return tune.with_resources(tune.with_parameters(run_distributed_trial, setup=setup), {"cpu": 0.01})
    return tune.with_resources(tune.with_parameters(run_trial, setup=setup),
                               {"cpu": o.cpus_per_trial, "gpu": o.gpus_per_trial})


def _tuner(state: SweepState, base: TrainConfig, space: SearchSpace, out: Path, callbacks: Sequence[Any]) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    o = state.options
    if o.scheduler == "asha":
        first = base.eval_every if 0 < base.eval_every < base.max_steps else base.max_steps
        # max_t one past the last step: ASHA stops a trial that reaches max_t, which would cut
        # off the end of `fit` (the model export) in trials that run to completion.
        scheduler = ASHAScheduler(time_attr=TIME_ATTR, max_t=base.max_steps + 1, grace_period=first,
                                  reduction_factor=o.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    storage = o.storage or str(out.resolve())
    return tune.Tuner(
        _trainable(state, base, out),
        param_space=space.param_space(),
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode=MODE,
            num_samples=o.num_samples,
            scheduler=scheduler,
            search_alg=BasicVariantGenerator(random_state=o.seed, max_concurrent=o.max_concurrent or 0),
            trial_dirname_creator=trial_dirname,
            # A finished trial's process runs the next one: torch, Accelerate and MLflow are
            # imported once per process rather than once per trial (seconds each).
            reuse_actors=o.workers_per_trial == 1,
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT_DIR,
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=o.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=METRIC,
                                                    checkpoint_score_order=MODE),
            callbacks=list(callbacks),
            verbose=o.verbose,
        ),
    )


def _finish(state: SweepState, base: TrainConfig, space: SearchSpace, out: Path, results: Any,
            tracker: Any) -> SweepResult:
    """Export the best trial's config, summarise the sweep in its MLflow run, close child runs
    left open by trials that ASHA stopped."""
    # A trial ended if it failed for good or its last result says done (finished, or stopped by
    # ASHA); trials cut off by an interruption have neither, and pending ones no result at all.
    ended = sum(1 for r in results if r.error is not None or r.metrics.get("done"))
    complete = ended >= space.trials(state.options.num_samples)
    best_config = best_path = best_trial = None
    best_metrics: dict[str, Any] = {}
    try:
        # Ranked by each trial's last validation: a trial stopped early competes with what it
        # reached, a finished one with where it ended (not a peak it fell back from).
        best = results.get_best_result(metric=METRIC, mode=MODE, scope="last", filter_nan_and_inf=True)
    except RuntimeError:
        best = None
    if best is not None and best.metrics and METRIC in best.metrics:
        params = {k: v for k, v in best.config.items() if k in {e.path for e in space.sampled}}
        best_config = dataclasses.replace(
            apply_params(apply_params(state.config, space.fixed), params),
            output_dir=str(out / "best"),
        )
        best_path = out / BEST_FILE
        atomic_write_text(best_path, _best_header(state, best) + config_to_yaml(best_config))
        best_trial = best.metrics.get("trial_id")
        best_metrics = {k: v for k, v in best.metrics.items() if isinstance(v, (int, float, str))}
    if tracker is not None:
        _summarise(tracker, state, results, best_metrics, best_path, complete, base.max_steps)
    return SweepResult(best_config=best_config, best_path=best_path, best_metrics=best_metrics,
                       best_trial_id=best_trial, trials=ended, errors=results.num_errors, complete=complete,
                       parent_run_id=state.parent_run_id, tracking_uri=state.tracking_uri, output_dir=out,
                       results=results)


def _best_header(state: SweepState, best: Any) -> str:
    trial = best.metrics.get("trial_id", "?")
    psnr = best.metrics.get(METRIC, float("nan"))
    return (f"# Best trial {trial} of sweep {state.name} ({state.space_source}): {METRIC} {psnr:.3f} dB "
            f"at step {best.metrics.get(TIME_ATTR)}.\n# Train it: ntire train --config <this file>\n")


def _summarise(tracker: Any, state: SweepState, results: Any, best: Mapping[str, Any], best_path: Path | None,
               complete: bool, max_steps: int) -> None:
    tracker.set_tags({"ntire.trials": len(results), "ntire.trial_errors": results.num_errors,
                      "ntire.sweep_complete": complete, "ntire.best_trial": best.get("trial_id", "")})
    if METRIC in best:
        tracker.log_metrics({f"best/{METRIC}": float(best[METRIC]), "best/step": float(best.get(TIME_ATTR, 0))},
                            step=int(best.get(TIME_ATTR, 0)))
    if not (state.tracking_uri and state.parent_run_id):
        return
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=state.tracking_uri)
        if best_path is not None:
            client.log_artifact(state.parent_run_id, str(best_path))
        _settle_children(client, state.parent_run_id, results, max_steps, complete)
    except Exception as e:  # noqa: BLE001 - the sweep's results are on disk whatever MLflow says
        _say(f"could not complete the sweep's MLflow run ({e})")
    if not complete:
        tracker.finish("KILLED")  # reopened by --resume


def _settle_children(client: Any, parent_run_id: str, results: Any, max_steps: int, complete: bool) -> None:
    """Give the runs of trials that did not finish their steps the status they ended with.

    Ray ends a trial that ASHA stops (or an interrupted sweep's running trials) from outside
    `fit`, so its run would stay RUNNING or read FAILED; it is KILLED (and, in a complete sweep,
    tagged `ntire.stopped_early` with the step it reached; an interrupted one's trials are
    reopened by --resume). A trial that crashed for good stays (or becomes) FAILED.
    """
    by_trial = {r.metrics.get("trial_id"): r for r in results if r.metrics}
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")
    for run in runs:
        result = by_trial.get(run.data.tags.get("ntire.trial_id"))
        if result is None:
            continue
        if result.error is not None:
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, "FAILED")
        elif result.metrics.get(TIME_ATTR, max_steps) < max_steps:
            if complete:
                client.set_tag(run.info.run_id, "ntire.stopped_early", result.metrics[TIME_ATTR])
            client.set_terminated(run.info.run_id, "KILLED")


__all__ = [
    "BEST_FILE",
    "DISTRIBUTIONS",
    "METRIC",
    "SPACE_DIR",
    "SearchSpace",
    "SpaceEntry",
    "SweepOptions",
    "SweepResult",
    "SweepState",
    "TrialReporter",
    "TrialSetup",
    "apply_params",
    "check_space",
    "load_space",
    "parse_space",
    "read_sweep_state",
    "resume_sweep",
    "run_sweep",
    "run_trial",
    "trial_config",
]
