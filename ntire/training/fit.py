"""`fit(config)`: train an EDSR or MDSR network, in one process or many.

`fit` reads top to bottom: set up (model, optimizer, schedule), resume, stream the data, then
loop over updates, logging, validating and checkpointing as scheduled, and export the model.
Accelerate owns devices, distribution and mixed precision, so nothing here assumes one process:
every process runs `fit`, the loader splits the shards between processes itself, and only the
main process prints, tracks and writes files (checkpoints are written by all, see
ntire.training.state). The command line over it is ntire/train.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ntire.config import TrainConfig, config_to_yaml, run_name
from ntire.config_io import flatten, to_dict
from ntire.errors import CheckpointError, ConfigError, TrainingDiverged
from ntire.files import atomic_write_text
from ntire.locks import hold_folder
from ntire.models.build import count_parameters
from ntire.training.distributed import (
    finish,
    make_accelerator,
    mixed_precision,
    record_rank,
    uses_deepspeed,
)
from ntire.training.export import export_model
from ntire.training.inputs import (
    default_batches,
    prepare_training_shards,
    shard_cache_dir,
    validation_root,
    validation_set,
)
from ntire.training.setup import StepPlan, native_bf16, resolve_channels_last, resolve_setup, step_plan
from ntire.training.state import (
    Checkpoint,
    TrainState,
    best_checkpoint,
    claim_run_folder,
    find_resume,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    read_extra,
    save_checkpoint,
)
from ntire.training.step import (
    TrainStep,
    all_finite,
    conv_autotuning,
    learning_rate,
    make_optimizer,
    set_lr,
    training_step,
)
from ntire.training.tracking import (
    Tracker,
    append_metrics_log,
    provenance_tags,
    start_tracking,
    trim_metrics_log,
)
from ntire.training.validate import Validation, run_validation

if TYPE_CHECKING:
    from accelerate import Accelerator

EMA_FILE = "ema.safetensors"
"""The weight average in a checkpoint (runs with `optim.ema_decay`)."""

RUN_CONFIG_NAME = "train_config.yaml"
"""The resolved training config of a run, in its output folder (`ntire train --config` reads it;
not to be confused with an exported model folder's `config.yaml`, which holds the architecture)."""

@dataclass(frozen=True)
class FitResult:
    """What a training job produced."""

    step: int
    """Updates done."""
    output_dir: Path
    model_dir: Path
    """The exported model (safetensors + config.yaml)."""
    validation: Validation | None
    """The last validation (None without validation data)."""
    best_checkpoint: Path | None
    """The kept checkpoint with the highest validation PSNR."""
    run_name: str
    tracking_run_id: str | None
    setup: str = ""
    """The line the run printed about its step: captured or eager and why, precision, layout."""
    plan: StepPlan | None = None
    """How the run's updates were computed (what `setup` says)."""
    ema_model_dir: Path | None = None
    """The exported averaged weights (`optim.ema_decay` > 0), else None."""
    ema_validation: Validation | None = None
    """The last validation of the averaged weights, else None."""


def fit(
    config: TrainConfig,
    accelerator: Accelerator | None = None,
    *,
    report: Callable[[int, dict[str, float], Path | None], None] | None = None,
    batches: Callable[[TrainConfig, int], Iterator[Any]] | None = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
) -> FitResult:
    """Train `config.model` as `config` says; resume, validate, checkpoint and export on the way.

    `accelerator`: one built by the caller (e.g. with launch-specific plugins); by default one is
    made from the config. `report(step, metrics, checkpoint)` is called on every process after each
    validation (a hook for hyper-parameter search); `checkpoint` is the folder saved at that step,
    or None when the step saved none. `batches(config, start)`: this process's stream of training
    batches from micro-batch `start` on (default: ntire's loader over the config's shards; a
    benchmark wraps it to time the loader). `on_log(step, metrics)`: called on the main process at
    every log point, after the device has finished the updates logged.
    """
    own_accelerator = accelerator is None
    config, setup_why = resolve_setup(config, accelerator)
    accelerator = accelerator or make_accelerator(config)
    # The layout follows the precision the launch settled on (the config's or `accelerate launch`'s).
    config = dataclasses.replace(
        config, channels_last=resolve_channels_last(config.channels_last, mixed_precision(accelerator), native_bf16)
    )
    with contextlib.ExitStack() as cleanup:
        if own_accelerator:
            cleanup.callback(release_accelerator, accelerator)
        if accelerator.gradient_accumulation_steps != config.optim.grad_accum:
            raise ConfigError(
                f"the accelerator accumulates {accelerator.gradient_accumulation_steps} micro-batches "
                f"but optim.grad_accum is {config.optim.grad_accum}; make them agree"
            )
        say = _printer(accelerator)
        out = Path(config.output_dir)
        name = run_name(config)
        main = accelerator.is_main_process
        if main:  # one run per folder: a second is refused, naming this one's pid and host
            cleanup.enter_context(hold_folder(out, "ntire train"))

        # -- The run folder: resume from its newest intact checkpoint, or claim it afresh; every
        # check before anything is written there, so a refused run changes nothing.
        resume = find_resume(out, config.resume, say=say)
        if resume is not None:
            check_resumable(resume, config, world_size=accelerator.num_processes)
        elif config.resume == "auto":
            say(f"no checkpoint in {out} yet; starting afresh")
        lineage = claim_run_folder(out, resume, archive=config.archive_old_run, main_process=main, say=say)
        accelerator.wait_for_everyone()

        # -- Model, optimizer and the step: the paper's L1 + Adam, its step decay a function of the
        # update count (ntire.training.step.learning_rate), captured as CUDA graphs where it can.
        from accelerate.utils import set_seed

        set_seed(config.seed)  # the same initial weights on every process
        plan = step_plan(config, accelerator, setup_why)
        model = build_training_model(config, fresh=resume is None, say=say)
        optimizer = make_optimizer(model, config.optim, fused=plan.fused_adam, capturable=plan.captured)
        model, optimizer = accelerator.prepare(model, optimizer)

        # -- Resume: weights, optimizer, every process's RNG and the loader position.
        state = TrainState(step=0, batches=0, lineage=lineage)
        if resume is not None:
            state = load_checkpoint(accelerator, resume)
            say(f"resuming from {resume.path} at step {state.step}")
            if main:  # the steps after the checkpoint are logged again as they are redone
                trim_metrics_log(out / "metrics.jsonl", state.step)
        lr = learning_rate(config.optim, state.step)
        train_step = training_step(model, optimizer, accelerator, config, plan, lr=lr)
        if train_step.ema is not None and resume is not None:
            averaged = read_extra(resume, EMA_FILE)
            if averaged is None:
                say(f"{resume.path} holds no weight average: the EMA starts from its weights")
            else:
                train_step.ema.load_state_dict(averaged, where=str(resume.path / EMA_FILE))

        # -- Data: a dataset root is sharded once; each process streams its own part of the shards.
        if accelerator.is_local_main_process:  # once per machine; the others wait for it
            prepare_training_shards(config, say=say, progress=main and config.progress)
        accelerator.wait_for_everyone()
        stream = (batches or default_batches(pin_memory=accelerator.device.type == "cuda"))(config, state.batches)
        cleanup.callback(_close, stream)
        valid_images = validation_set(
            config, process_index=accelerator.process_index, num_processes=accelerator.num_processes
        )
        if valid_images is None:
            say("no validation data (training from shards; give --valid-data DIR): validation skipped")

        # -- Tracking: the config as params, as resolved (precision, log interval), and tags saying
        # where the run came from (code, versions, host, devices, data).
        precision = plan.precision
        log_every = log_interval(config)
        tracker = cleanup.enter_context(
            start_tracking(
                config.tracking,
                run_name=name,
                output_dir=out,
                params={**flatten(config), "mixed_precision": precision, "log_every": log_every,
                        "captured": plan.captured},
                tags=run_tags(config, accelerator, precision) if main and config.tracking.enabled else None,
                resume_run_id=state.tracking_run_id,
                main_process=main,  # its warnings go to stderr
            )
        )
        say(_tracking_line(tracker, config))

        per_update = config.data.batch_size * config.optim.grad_accum * accelerator.num_processes
        say(
            f"{name}: {config.model.name} x{'/'.join(map(str, config.scales))}, "
            f"{count_parameters(model):,} parameters, {accelerator.num_processes} process(es) on "
            f"{accelerator.device}, precision {precision}, {per_update} patches of "
            f"{config.data.patch_size}px per update, updates {state.step} -> {config.max_steps}"
        )
        say(plan.line)

        if main:  # only a run that passed every check (model, resume, data) owns the folder's config
            atomic_write_text(out / RUN_CONFIG_NAME, config_to_yaml(config))


        # -- The loop. Nothing in it reads a device value between log points: the GPU runs ahead
        # while the loader prepares (and pins) the next batches. A non-finite loss stops the run
        # at the next log point or save, whichever comes first, before anything is written.
        step, drawn = state.step, state.batches
        validation: Validation | None = None
        ema_validation: Validation | None = None
        meter = Meter(per_update)
        guard = FiniteGuard(out, lineage, say)
        bar = cleanup.enter_context(_progress_bar(config, accelerator, initial=step))
        autotuning = cleanup.enter_context(contextlib.ExitStack())
        autotuning.enter_context(conv_autotuning(accelerator.device))
        model.train()
        while step < config.max_steps:
            # -- One update: grad_accum micro-batches of one scale each (MDSR runs only its branch).
            if (scheduled := learning_rate(config.optim, step)) != lr:
                lr = scheduled
                set_lr(optimizer, lr)
            micro_batches = [next(stream) for _ in range(config.optim.grad_accum)]
            drawn += len(micro_batches)
            train_step(micro_batches)
            meter.count()
            step += 1

            if step % log_every == 0 or step == config.max_steps:
                _synchronize(accelerator.device)  # the GPU runs ahead: wait, or patches/s lies
                metrics = meter.flush(accelerator, train_step, lr=lr)
                guard.check_loss(metrics["train/loss"], step=step, lr=lr)
                bar.update(step - bar.n)
                bar.set_postfix(loss=f"{metrics['train/loss']:.3f}",
                                patches_s=f"{metrics['train/patches_per_s']:.0f}", refresh=False)
                if bar.disable:
                    say(f"step {step}/{config.max_steps} loss {metrics['train/loss']:.4f} "
                        f"lr {metrics['train/lr']:.3g} patches/s {metrics['train/patches_per_s']:.1f}")
                tracker.log_metrics(metrics, step)
                _append_jsonl(out, main, {"step": step, **metrics})
                if on_log is not None and main:
                    on_log(step, metrics)

            validated = valid_images is not None and (
                step == config.max_steps or (config.eval_every > 0 and step % config.eval_every == 0)
            )
            if validated:
                with conv_autotuning(accelerator.device, enabled=False):  # every image size anew
                    validation = run_validation(model, config, valid_images, accelerator, tracker, step, say)
                    if train_step.ema is not None:
                        ema_validation = run_validation(model, config, valid_images, accelerator, tracker, step,
                                                        say, average=train_step.ema)
                _append_jsonl(out, main, {"step": step, **validation.metrics(), **_metrics(ema_validation)})

            saved = None
            if step % config.save_every == 0 or step == config.max_steps:
                guard.check_before_write(accelerator, train_step, model, step=step, lr=lr)
                state = TrainState(
                    step=step,
                    batches=drawn,
                    valid_psnr=validation.mean_psnr if validated else None,
                    valid={**validation.metrics(), **_metrics(ema_validation)} if validated else {},
                    tracking_run_id=tracker.run_id,
                    config=to_dict(config),
                    lineage=lineage,
                    world_size=accelerator.num_processes,
                )
                ema = {EMA_FILE: train_step.ema.state_dict()} if train_step.ema is not None else None
                saved = save_checkpoint(accelerator, out, state, extra=ema)
                if main:
                    prune_checkpoints(out, config.keep_last, lineage)
            if validated and report is not None:
                # After the save, so that a sweep can hand this step's checkpoint to its scheduler.
                report(step, validation.metrics(), saved)
            if validated or saved is not None:
                meter.restart()  # the time they took is not training throughput
        autotuning.close()
        bar.update(step - bar.n)

        if validation is None and valid_images is not None:  # resumed at the end already
            validation = run_validation(model, config, valid_images, accelerator, tracker, step, say)
            if train_step.ema is not None:
                ema_validation = run_validation(model, config, valid_images, accelerator, tracker, step, say,
                                                average=train_step.ema)

        # -- Export: safetensors + config.yaml, what `ntire upscale` and submissions read; the
        # averaged weights beside them when the run keeps an EMA.
        guard.check_before_write(accelerator, train_step, model, step=step, lr=lr)
        model_dir = export_model(model, config, accelerator, step=step, validation=validation, name=name,
                                 lineage=lineage)
        say(f"model exported to {model_dir}")
        tracker.log_artifacts(model_dir, "model")
        ema_dir = None
        if train_step.ema is not None:
            ema_dir = export_model(model, config, accelerator, step=step, validation=ema_validation, name=name,
                                   lineage=lineage, average=train_step.ema)
            say(f"EMA weights (decay {config.optim.ema_decay}) exported to {ema_dir}")
            tracker.log_artifacts(ema_dir, "model-ema")
        record_rank(accelerator, model, out, step=step, run_name=name)  # every rank: world size, weights hash
        best = best_checkpoint([c for c in list_checkpoints(out) if c.state.lineage == lineage]) if main else None
        return FitResult(
            step=step,
            output_dir=out,
            model_dir=model_dir,
            validation=validation,
            best_checkpoint=best.path if best else None,
            run_name=name,
            tracking_run_id=tracker.run_id,
            setup=plan.line,
            plan=plan,
            ema_model_dir=ema_dir,
            ema_validation=ema_validation,
        )


# ---------------------------------------------------------------------------------------------
# Setup helpers


# The Accelerator is built by ntire.training.distributed.make_accelerator (launch checks, gloo on
# CPU, DeepSpeed settings) and ended by its `finish` (barrier, process group destroyed, Accelerate's
# state reset so another `fit` in this process may set up a different one).
release_accelerator = finish


def log_interval(config: TrainConfig) -> int:
    """Updates between two logs of loss, lr and patches/s: `config.log_every`, or by default
    max(1, min(25, max_steps // 50)), so that a run logs at least every 25 updates and draws a
    curve of at least 50 points (every update for runs shorter than 100 updates)."""
    if config.log_every is not None:
        return config.log_every
    return max(1, min(25, config.max_steps // 50))


def run_tags(config: TrainConfig, accelerator: Accelerator, precision: str) -> dict[str, str]:
    """The MLflow tags of a training run (ntire.training.tracking.provenance_tags): code,
    versions, host, world size, device, precision, and the data's identity (the shard manifest's
    sha256: a dataset folder's shard cache, or the shard folder given)."""
    source = config.data.source
    deepspeed = getattr(accelerator.state, "deepspeed_plugin", None) is not None or uses_deepspeed()
    tags = provenance_tags(
        data=source,
        shard_dir=shard_cache_dir(config) if Path(source).is_dir() else None,
        valid_data=validation_root(config),
        world_size=accelerator.num_processes,
        device=accelerator.device,
        precision=precision,
        deepspeed=deepspeed,
    )
    tags["ntire.processes"] = str(accelerator.num_processes)  # the tag's earlier name
    return tags


def _tracking_line(tracker: Tracker, config: TrainConfig) -> str:
    if tracker.active:
        return tracker.where()
    if not config.tracking.enabled:
        return "MLflow tracking off (tracking.enabled is false)"
    return "MLflow tracking off for this run (see above)"


def build_training_model(config: TrainConfig, *, fresh: bool, say: Callable[[str], None]) -> nn.Module:
    """The network, initialised from `config.init_from` when starting afresh, in the configured
    memory layout, compiled if asked."""
    from ntire.models.build import build_model

    model = build_model(config.model)
    if config.init_from and fresh:
        from ntire.models.checkpoint import init_from, load_model

        source, source_config = load_model(config.init_from, say=say)
        report = init_from(model, config.model, source.state_dict())
        say(f"initialised from {config.init_from} ({source_config.name} x{source_config.scales}): {report}")
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if config.compile:
        model = torch.compile(model)
    return model


LOADER_GEOMETRY = ("batch_size", "patch_size", "patches_per_sample", "shuffle_buffer", "num_workers", "augment")
"""The data options that decide which batch each process draws at each step (with the seed and the
number of processes): a resume with others would not continue the uninterrupted run's stream."""


def check_resumable(checkpoint: Checkpoint, config: TrainConfig, *, world_size: int) -> None:
    """Refuse to resume a checkpoint of another network (its weights would not fit), or, unless
    `resume_inexact`, with another loader geometry (the run would not be the uninterrupted one)."""
    saved = checkpoint.state.config.get("model")
    if saved is not None and saved != to_dict(config.model):
        raise CheckpointError(
            f"{checkpoint.path}: saved for model {saved}, but this run trains {to_dict(config.model)}; "
            "use another --output-dir or the matching --model/--scale"
        )
    if config.resume_inexact:
        return
    data = checkpoint.state.config.get("data", {})
    now = to_dict(config.data)
    changed = [(f"data.{k}", data[k], now[k]) for k in LOADER_GEOMETRY if k in data and data[k] != now[k]]
    if "seed" in checkpoint.state.config and checkpoint.state.config["seed"] != config.seed:
        changed.append(("seed", checkpoint.state.config["seed"], config.seed))
    if checkpoint.state.world_size is not None and checkpoint.state.world_size != world_size:
        changed.append(("processes", checkpoint.state.world_size, world_size))
    if changed:
        what = ", ".join(f"{name} {old} -> {new}" for name, old, new in changed)
        raise CheckpointError(
            f"{checkpoint.path}: the loader geometry changed ({what}), so the batches would not continue the "
            "interrupted run's; resume with the checkpoint's settings, or give --resume-inexact to accept that"
        )


# ---------------------------------------------------------------------------------------------
# Loop helpers


class Meter:
    """Loss and throughput since the last log line: the loss summed on the device by the step,
    the time on the host between two synchronised points (log lines, or the end of a validation
    or save, whose time is not training)."""

    def __init__(self, per_update: int) -> None:
        self.per_update = per_update
        self.restart()

    def restart(self) -> None:
        """Start timing afresh (the device is idle: just synchronised)."""
        self.started = time.perf_counter()
        self.timed_updates = 0

    def count(self) -> None:
        """One more update since the last synchronised point."""
        self.timed_updates += 1

    def flush(self, accelerator: Accelerator, step: TrainStep, *, lr: float) -> dict[str, float]:
        """Mean loss over processes and updates, lr and patches/s; then start afresh. Call with the
        device synchronised."""
        seconds = time.perf_counter() - self.started
        loss, updates = step.take_loss()
        loss = accelerator.reduce(loss.float(), reduction="mean")
        metrics = {
            "train/loss": float(loss) / max(updates, 1),
            "train/lr": float(lr),
            "train/patches_per_s": self.per_update * self.timed_updates / seconds if seconds > 0 else 0.0,
        }
        self.restart()
        return metrics


class FiniteGuard:
    """Stops a run whose loss or weights stopped being finite, before anything is written.

    Checked where a value is read anyway (each log point) and before every save and the export:
    never a host read per update. Why stop rather than skip the update (as traiNNer-redux does, up
    to 10 times) or skip batches whose loss jumps (EDSR-PyTorch): a captured update cannot be
    skipped without reading its loss, and a NaN in L1 training on uint8 data means the learning
    rate or the data is wrong, which no skipping mends; the last checkpoint is finite by
    construction, so `--resume auto` (with a lower --lr) continues from it.
    """

    def __init__(self, out: Path, lineage: str, say: Callable[[str], None]) -> None:
        self.out, self.lineage, self.say = out, lineage, say

    def check_loss(self, loss: float, *, step: int, lr: float) -> None:
        if not math.isfinite(loss):
            self._stop(f"the training loss is {loss}", step, lr)

    def check_before_write(self, accelerator: Accelerator, step_fn: TrainStep, model: nn.Module,
                           *, step: int, lr: float) -> None:
        pending = accelerator.reduce(step_fn.peek_loss().float().reshape(1), reduction="sum")
        if not all_finite([pending]):
            self._stop("the training loss is not finite", step, lr)
        if not all_finite(list(model.parameters())):
            self._stop("the weights are not finite", step, lr)

    def _stop(self, what: str, step: int, lr: float) -> None:
        mine = [c for c in list_checkpoints(self.out) if c.state.lineage == self.lineage]
        last = (f"the last finite checkpoint is {mine[-1].path} (step {mine[-1].state.step}): continue from it "
                f"with --resume auto and a lower --lr") if mine else "no checkpoint was saved"
        raise TrainingDiverged(f"step {step}: {what} (lr {lr:.3g}); stopped without saving it; {last}")


def _printer(accelerator: Accelerator) -> Callable[[str], None]:
    from tqdm import tqdm

    def say(message: str) -> None:
        if accelerator.is_main_process:
            tqdm.write(message, file=sys.stdout)  # keeps a progress bar intact
            sys.stdout.flush()

    return say


def _progress_bar(config: TrainConfig, accelerator: Accelerator, *, initial: int) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=config.max_steps,
        initial=initial,
        unit="step",
        desc="train",
        dynamic_ncols=True,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,  # a log file needs few redraws
        disable=not (config.progress and accelerator.is_main_process),
    )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "xpu":
        torch.xpu.synchronize(device)


def _close(batches: Any) -> None:
    # Stops DataLoader worker processes now rather than whenever the generator is collected.
    close = getattr(batches, "close", None)
    if close is not None:
        close()


def _metrics(validation: Validation | None) -> dict[str, float]:
    return validation.metrics() if validation is not None else {}


def _append_jsonl(out: Path, main: bool, record: dict[str, Any]) -> None:
    # A plain record of the run beside the tracking store: one JSON object per line.
    if main:
        append_metrics_log(out / "metrics.jsonl", record)


__all__ = ["EMA_FILE", "RUN_CONFIG_NAME", "FitResult", "FiniteGuard", "Meter", "build_training_model", "fit",
           "log_interval", "run_tags"]
