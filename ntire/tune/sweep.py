"""Hyper-parameter sweeps with Ray Tune over the real training loop: the driver side.

    ntire tune --config demo --space tiny --num-samples 4          # ASHA, on this machine
    ntire tune --config edsr_baseline_x2 --space paper --address auto --gpus-per-trial 1

`run_sweep` checks the search space (ntire.tune.space) against the config, prepares the config
every trial starts from, opens the sweep's MLflow run and hands the trials (ntire.tune.trial) to
a Ray Tune Tuner; `resume_sweep` continues an interrupted sweep (Tuner.restore) from what
`sweep.yaml` recorded. The metric is the validation PSNR (`valid_psnr`, averaged over the scales;
maximised). ASHA stops poor trials at the validation steps; a crashed trial is retried from its
last checkpoint (FailureConfig). The best trial's config is written as `best.yaml`, which
`ntire train --config` reads as it is.

Tracking: the sweep is one MLflow run, each trial a child run (tag `mlflow.parentRunId`) logged by
`fit` exactly as a training job (provenance tags included), named after its setup plus the trial
id; the parent run carries the driver's provenance tags (`sweep_tags`). The parent run and
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
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from ntire.config import TrainConfig, config_to_yaml, data_name
from ntire.config_io import flatten, from_dict, read_yaml, save_yaml, to_dict
from ntire.errors import ConfigError
from ntire.files import atomic_write_text
from ntire.tune.options import SweepOptions as SweepOptions  # re-exported: run_sweep's callers import it here
from ntire.tune.space import SearchSpace, apply_params, check_space, parse_space
from ntire.tune.trial import METRIC, MODE, TIME_ATTR, TrialSetup, run_distributed_trial, run_trial

EXPERIMENT_DIR = "trials"
"""Name of Ray's experiment folder inside the sweep's output folder (or storage)."""

SWEEP_FILE = "sweep.yaml"
BEST_FILE = "best.yaml"

# Fields that decide which shards training reads; sweeping them makes each trial shard for itself.
_SHARD_FIELDS = ("model.kind", "model.scales", "data.track", "data.train_indices", "data.subimage",
                 "data.subimage_step")


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
        save_yaml(state, out / SWEEP_FILE)
        shard_once(base)
        if tracker is not None:
            tracker.set_tags(sweep_tags(base))  # now with the shard cache's manifest
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
    return from_dict(SweepState, read_yaml(path, "a sweep's state"), str(path))


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
                             params=params, tags=sweep_tags(base), resume_run_id=state.parent_run_id, say=_say)
    if not tracker.active:
        yield dataclasses.replace(state, tracking_uri=None), None
        return
    _say(tracker.where())
    with tracker:
        tracker.set_tags({"ntire.sweep": "parent", "ntire.space": state.space_source})
        yield dataclasses.replace(state, tracking_uri=uri, parent_run_id=tracker.run_id), tracker


def sweep_tags(base: TrainConfig) -> dict[str, str]:
    """The sweep's MLflow run tags (ntire.training.tracking.provenance_tags): the driver's code,
    versions (Ray's too) and host, and the data's identity (with the shared shard cache's
    manifest once it is built). Each trial's run has its own, from `fit`: its host, devices,
    precision."""
    import ray

    from ntire.training.inputs import shard_cache_dir, validation_root
    from ntire.training.tracking import provenance_tags

    source = base.data.source
    shared = base.data.shard_dir and Path(source).is_dir()
    tags = provenance_tags(data=source, shard_dir=shard_cache_dir(base) if shared else None,
                           valid_data=validation_root(base))
    tags["ntire.version.ray"] = ray.__version__
    return tags


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


def trial_dirname(trial: Any) -> str:
    """Short trial folder names (Ray's default spells out every parameter)."""
    return str(trial.trial_id)


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
