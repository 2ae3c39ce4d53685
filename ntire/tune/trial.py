"""One trial of a sweep: its training config, and the functions Ray Tune runs for it.

Every trial calls `ntire.training.fit.fit` (the same loop as `ntire train`) on the sweep's base
config with the drawn fields replaced (`trial_config`). `TrialReporter` is `fit`'s report hook:
after each validation it sends Ray the metric with that step's training checkpoint, which is what
ASHA ranks and a retried or restored trial resumes from. `run_trial` runs a trial in its own
process; `run_distributed_trial` as a Ray Train run of several processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from ntire.config import TrainConfig, run_name
from ntire.tune.space import apply_params

METRIC = "valid_psnr"
"""What a sweep maximises: validation PSNR in dB, averaged over the trained scales."""

MODE = "max"

TIME_ATTR = "step"
"""The reported result field ASHA counts progress in: optimizer updates."""


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
        """Tag the trial's MLflow run (its id is in the checkpoint) as a child of the sweep's
        (`fit` has set its provenance tags: code, versions, host, devices, precision, data)."""
        self._filed = True
        if not (self.setup.parent_run_id and self.setup.tracking_uri):
            return
        from ntire.training.state import read_checkpoint

        run_id = read_checkpoint(checkpoint).state.tracking_run_id
        if not run_id:
            return
        try:
            from mlflow.entities import RunTag
            from mlflow.tracking import MlflowClient

            tags = {"mlflow.parentRunId": self.setup.parent_run_id, "ntire.trial_id": self.trial_id,
                    "ntire.sweep": "trial"}
            MlflowClient(tracking_uri=self.setup.tracking_uri).log_batch(
                run_id, tags=[RunTag(k, v) for k, v in tags.items()])
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
