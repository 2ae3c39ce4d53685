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
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ntire.config import TrainConfig, config_to_yaml, flatten, run_name, to_dict
from ntire.errors import CheckpointError, ConfigError
from ntire.files import atomic_write_text
from ntire.locks import hold_folder
from ntire.models.build import count_parameters
from ntire.training.distributed import (
    finish,
    has_gpu,
    make_accelerator,
    mixed_precision,
    record_rank,
    uses_deepspeed,
)
from ntire.training.export import export_model
from ntire.training.inputs import (
    prepare_training_shards,
    shard_cache_dir,
    training_batches,
    training_urls,
    validation_root,
    validation_set,
)
from ntire.training.state import (
    Checkpoint,
    TrainState,
    best_checkpoint,
    claim_run_folder,
    find_resume,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
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


def fit(
    config: TrainConfig,
    accelerator: Accelerator | None = None,
    *,
    report: Callable[[int, dict[str, float], Path | None], None] | None = None,
) -> FitResult:
    """Train `config.model` as `config` says; resume, validate, checkpoint and export on the way.

    `accelerator`: one built by the caller (e.g. with launch-specific plugins); by default one is
    made from the config. `report(step, metrics, checkpoint)` is called on every process after each
    validation (a hook for hyper-parameter search); `checkpoint` is the folder saved at that step,
    or None when the step saved none.
    """
    own_accelerator = accelerator is None
    if config.mixed_precision == "auto":
        config = dataclasses.replace(config, mixed_precision="bf16" if native_bf16() else "no")
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
            check_resumable(resume, config)
        elif config.resume == "auto":
            say(f"no checkpoint in {out} yet; starting afresh")
        lineage = claim_run_folder(out, resume, archive=config.archive_old_run, main_process=main, say=say)
        accelerator.wait_for_everyone()

        # -- Model, optimizer and schedule: the paper's L1 + Adam + step decay, in updates.
        from accelerate.utils import set_seed

        set_seed(config.seed)  # the same initial weights on every process
        model = build_training_model(config, fresh=resume is None, say=say)
        optimizer = torch.optim.Adam(
            model.parameters(),
            lr=config.optim.lr,
            betas=config.optim.betas,
            eps=config.optim.eps,
            weight_decay=config.optim.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=config.optim.lr_step, gamma=config.optim.lr_gamma
        )
        model, optimizer = accelerator.prepare(model, optimizer)
        # Not prepared (Accelerate would step it once per process per update), but registered
        # so that save_state/load_state carry it.
        accelerator.register_for_checkpointing(scheduler)

        # -- Resume: weights, optimizer, schedule, every process's RNG and the loader position.
        state = TrainState(step=0, batches=0, lineage=lineage)
        if resume is not None:
            state = load_checkpoint(accelerator, resume)
            say(f"resuming from {resume.path} at step {state.step}")
            if main:  # the steps after the checkpoint are logged again as they are redone
                trim_metrics_log(out / "metrics.jsonl", state.step)

        # -- Data: a dataset root is sharded once; each process streams its own part of the shards.
        if accelerator.is_local_main_process:  # once per machine; the others wait for it
            prepare_training_shards(config, say=say, progress=main and config.progress)
        accelerator.wait_for_everyone()
        batches = training_batches(config, training_urls(config), start=state.batches)
        cleanup.callback(_close, batches)
        valid_images = validation_set(
            config, process_index=accelerator.process_index, num_processes=accelerator.num_processes
        )
        if valid_images is None:
            say("no validation data (training from shards; give --valid-data DIR): validation skipped")

        # -- Tracking: the config as params, as resolved (precision, log interval), and tags saying
        # where the run came from (code, versions, host, devices, data).
        precision = mixed_precision(accelerator)
        log_every = log_interval(config)
        tracker = cleanup.enter_context(
            start_tracking(
                config.tracking,
                run_name=name,
                output_dir=out,
                params={**flatten(config), "mixed_precision": precision, "log_every": log_every},
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

        if main:  # only a run that passed every check (model, resume, data) owns the folder's config
            atomic_write_text(out / RUN_CONFIG_NAME, config_to_yaml(config))

        step, drawn = state.step, state.batches
        validation: Validation | None = None
        meter = Meter()
        bar = cleanup.enter_context(_progress_bar(config, accelerator, initial=step))
        model.train()
        while step < config.max_steps:
            # -- One update: grad_accum micro-batches of one scale each (MDSR runs only its branch).
            started = time.perf_counter()
            micro_batches = [next(batches) for _ in range(config.optim.grad_accum)]
            drawn += len(micro_batches)
            meter.add_loss(update(model, optimizer, accelerator, micro_batches, config))
            scheduler.step()
            step += 1
            if step % log_every == 0 or step == config.max_steps:
                # The GPU runs ahead of this loop: wait for it before timing, or patches/s lies.
                _synchronize(accelerator.device)
            meter.add_update(time.perf_counter() - started, per_update)
            bar.update(1)

            if step % log_every == 0 or step == config.max_steps:
                metrics = meter.flush(accelerator, lr=scheduler.get_last_lr()[0])
                bar.set_postfix(loss=f"{metrics['train/loss']:.3f}",
                                patches_s=f"{metrics['train/patches_per_s']:.0f}", refresh=False)
                if bar.disable:
                    say(f"step {step}/{config.max_steps} loss {metrics['train/loss']:.4f} "
                        f"lr {metrics['train/lr']:.3g} patches/s {metrics['train/patches_per_s']:.1f}")
                tracker.log_metrics(metrics, step)
                _append_jsonl(out, main, {"step": step, **metrics})

            validated = valid_images is not None and (
                step == config.max_steps or (config.eval_every > 0 and step % config.eval_every == 0)
            )
            if validated:
                validation = run_validation(model, config, valid_images, accelerator, tracker, step, say)
                _append_jsonl(out, main, {"step": step, **validation.metrics()})

            saved = None
            if step % config.save_every == 0 or step == config.max_steps:
                state = TrainState(
                    step=step,
                    batches=drawn,
                    valid_psnr=validation.mean_psnr if validated else None,
                    valid=validation.metrics() if validated else {},
                    tracking_run_id=tracker.run_id,
                    config=to_dict(config),
                    lineage=lineage,
                )
                saved = save_checkpoint(accelerator, out, state)
                if main:
                    prune_checkpoints(out, config.keep_last, lineage)
            if validated and report is not None:
                # After the save, so that a sweep can hand this step's checkpoint to its scheduler.
                report(step, validation.metrics(), saved)

        if validation is None and valid_images is not None:  # resumed at the end already
            validation = run_validation(model, config, valid_images, accelerator, tracker, step, say)

        # -- Export: safetensors + config.yaml, what `ntire upscale` and submissions read.
        model_dir = export_model(model, config, accelerator, step=step, validation=validation, name=name,
                                 lineage=lineage)
        say(f"model exported to {model_dir}")
        tracker.log_artifacts(model_dir, "model")
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
        )


# ---------------------------------------------------------------------------------------------
# Setup helpers


# The Accelerator is built by ntire.training.distributed.make_accelerator (launch checks, gloo on
# CPU, DeepSpeed settings) and ended by its `finish` (barrier, process group destroyed, Accelerate's
# state reset so another `fit` in this process may set up a different one).
release_accelerator = finish


def native_bf16() -> bool:
    """Whether the training device computes bf16 natively (fast) rather than by emulation."""
    if has_gpu() and os.environ.get("ACCELERATE_USE_CPU", "").strip().lower() not in ("1", "true", "yes", "on"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    # Private probes, guarded: without AVX512-BF16 or AMX, CPU bf16 convolutions are emulated
    # (measured over 10x slower than fp32 on an AVX2-only EPYC).
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe() for probe in probes if probe is not None)


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


def resolve_channels_last(asked: bool | None, precision: str, native_bf16: Callable[[], bool]) -> bool:
    """`channels_last` as a run uses it: as asked, or by default exactly when it computes in bf16
    on hardware that has bf16 natively (where the layout was measured to pay)."""
    if asked is not None:
        return asked
    return precision == "bf16" and native_bf16()


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


def check_resumable(checkpoint: Checkpoint, config: TrainConfig) -> None:
    """Refuse to resume a checkpoint of another network (its weights would not fit)."""
    saved = checkpoint.state.config.get("model")
    if saved is not None and saved != to_dict(config.model):
        raise CheckpointError(
            f"{checkpoint.path}: saved for model {saved}, but this run trains {to_dict(config.model)}; "
            "use another --output-dir or the matching --model/--scale"
        )


def model_inputs(batch: Any, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's uint8 LR and HR patches as float [0, 255] tensors on `device`."""
    lr = torch.as_tensor(batch.lr).to(device, non_blocking=True).float()
    hr = torch.as_tensor(batch.hr).to(device, non_blocking=True).float()
    if channels_last:
        lr = lr.contiguous(memory_format=torch.channels_last)
    return lr, hr


# ---------------------------------------------------------------------------------------------
# Loop helpers


def update(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    accelerator: Accelerator,
    micro_batches: list[Any],
    config: TrainConfig,
) -> torch.Tensor:
    """One optimizer update over `micro_batches` (grad_accum of them), then a step.

    Accelerate's `backward` divides each micro-batch's loss by the accumulation count, so the
    gradients add up to their average: the update equals one on all micro-batches at once.
    Returns the mean loss over the micro-batches (detached, on the device). Gradients are reset
    to None, not zero: Adam skips a parameter without a gradient, so MDSR's branches for other
    scales than a batch's keep their weights and their Adam moments untouched.
    """
    total = torch.zeros((), device=accelerator.device)
    for batch in micro_batches:
        lr, hr = model_inputs(batch, accelerator.device, config.channels_last)
        with accelerator.accumulate(model):
            loss = F.l1_loss(model(lr, batch.scale), hr)
            accelerator.backward(loss)
            if accelerator.sync_gradients and config.optim.grad_clip:
                accelerator.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
            optimizer.step()  # Accelerate skips it until the last micro-batch
            optimizer.zero_grad(set_to_none=True)
        total += loss.detach()
    return total / len(micro_batches)


class Meter:
    """Loss and throughput accumulated since the last log line."""

    def __init__(self) -> None:
        self.loss: torch.Tensor | float = 0.0
        self.updates = 0
        self.seconds = 0.0
        self.patches = 0

    def add_loss(self, loss: torch.Tensor) -> None:
        # Kept on the device: reading it every step would stall a GPU.
        self.loss = self.loss + loss

    def add_update(self, seconds: float, patches: int) -> None:
        self.updates += 1
        self.seconds += seconds
        self.patches += patches

    def flush(self, accelerator: Accelerator, *, lr: float) -> dict[str, float]:
        """Mean loss over processes and updates, lr and patches/s; then start afresh."""
        loss = torch.as_tensor(self.loss, device=accelerator.device, dtype=torch.float32)
        loss = accelerator.reduce(loss, reduction="mean")
        metrics = {
            "train/loss": float(loss) / max(self.updates, 1),
            "train/lr": float(lr),
            "train/patches_per_s": self.patches / self.seconds if self.seconds > 0 else 0.0,
        }
        self.__init__()
        return metrics


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


def _append_jsonl(out: Path, main: bool, record: dict[str, Any]) -> None:
    # A plain record of the run beside the tracking store: one JSON object per line.
    if main:
        append_metrics_log(out / "metrics.jsonl", record)


__all__ = ["RUN_CONFIG_NAME", "FitResult", "build_training_model", "fit", "log_interval", "native_bf16", "run_tags",
           "update"]
