"""Train an EDSR or MDSR network, in one process or many.

    accelerate launch ntire/train.py --model edsr-baseline --scale 2 --data data/DIV2K ...
    ntire train --config demo                 # the same in this process

`fit(config)` reads top to bottom: set up (model, optimizer, schedule), resume, stream the data,
then loop over updates, logging, validating and checkpointing as scheduled, and export the model.
Accelerate owns devices, distribution and mixed precision, so nothing here assumes one process:
every process runs `fit`, the loader splits the shards between processes itself, and only the
main process prints, tracks and writes files (checkpoints are written by all, see train_state).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # `python ntire/train.py` (which `accelerate launch` runs) puts ntire/ itself first on
    # sys.path, where its modules would shadow top-level ones; put the repository root there.
    _here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _here:
        sys.path[0] = os.path.dirname(_here)

import argparse
import contextlib
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ntire.config import to_dict
from ntire.distributed import finish, has_gpu, make_accelerator, record_rank
from ntire.errors import CheckpointError, ConfigError, DataError, NtireError
from ntire.files import atomic_write_text
from ntire.tracking import Tracker, start_tracking
from ntire.train_config import (
    TrainConfig,
    build_config,
    config_to_yaml,
    data_name,
    flatten,
    merge,
    parse_set,
    run_name,
)
from ntire.train_state import (
    Checkpoint,
    TrainState,
    best_checkpoint,
    find_resume,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from ntire.validate import Validation, ValidationImage, load_validation, validate

if TYPE_CHECKING:
    from accelerate import Accelerator

HELP = "train an EDSR or MDSR network (run it with `accelerate launch` for several processes)"


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
        if main:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / "config.yaml", config_to_yaml(config))

        # -- Model, optimizer and schedule: the paper's L1 + Adam + step decay, in updates.
        from accelerate.utils import set_seed

        set_seed(config.seed)  # the same initial weights on every process
        resume = find_resume(out, config.resume)
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
        state = TrainState(step=0, batches=0)
        if resume is not None:
            check_resumable(resume, config)
            state = load_checkpoint(accelerator, resume)
            say(f"resuming from {resume.path} at step {state.step}")
        elif config.resume == "auto":
            say(f"no checkpoint in {out} yet; starting afresh")

        # -- Data: a dataset root is sharded once; each process streams its own part of the shards.
        batches = training_batches(config, accelerator, start=state.batches, say=say)
        cleanup.callback(_close, batches)
        valid_images = validation_set(config, accelerator, say)

        tracker = cleanup.enter_context(
            start_tracking(
                config.tracking,
                run_name=name,
                output_dir=out,
                params=flatten(config),
                resume_run_id=state.tracking_run_id,
                main_process=main,  # its warnings go to stderr
            )
        )
        tracker.set_tags({"ntire.processes": accelerator.num_processes, "ntire.device": accelerator.device})

        per_update = config.data.batch_size * config.optim.grad_accum * accelerator.num_processes
        say(
            f"{name}: {config.model.name} x{'/'.join(map(str, config.scales))}, "
            f"{count_parameters(model):,} parameters, {accelerator.num_processes} process(es) on "
            f"{accelerator.device}, precision {accelerator.mixed_precision}, {per_update} patches of "
            f"{config.data.patch_size}px per update, updates {state.step} -> {config.max_steps}"
        )

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
            meter.add_update(time.perf_counter() - started, per_update)
            bar.update(1)

            if step % config.log_every == 0 or step == config.max_steps:
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
                )
                saved = save_checkpoint(accelerator, out, state)
                if main:
                    prune_checkpoints(out, config.keep_last)
            if validated and report is not None:
                # After the save, so that a sweep can hand this step's checkpoint to its scheduler.
                report(step, validation.metrics(), saved)

        if validation is None and valid_images is not None:  # resumed at the end already
            validation = run_validation(model, config, valid_images, accelerator, tracker, step, say)

        # -- Export: safetensors + config.yaml, what `ntire upscale` and submissions read.
        model_dir = export_model(model, config, accelerator, step=step, validation=validation, name=name)
        say(f"model exported to {model_dir}")
        tracker.log_artifacts(model_dir, "model")
        record_rank(accelerator, model, out, step=step, run_name=name)  # every rank: world size, weights hash
        best = best_checkpoint(list_checkpoints(out)) if main else None
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


# The Accelerator is built by ntire.distributed.make_accelerator (launch checks, gloo on CPU,
# DeepSpeed settings) and ended by ntire.distributed.finish (barrier, process group destroyed,
# Accelerate's state reset so another `fit` in this process may set up a different one).
release_accelerator = finish


def native_bf16() -> bool:
    """Whether the training device computes bf16 natively (fast) rather than by emulation."""
    if has_gpu() and os.environ.get("ACCELERATE_USE_CPU", "").strip().lower() not in ("1", "true", "yes", "on"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    # Private probes, guarded: without AVX512-BF16 or AMX, CPU bf16 convolutions are emulated
    # (measured over 10x slower than fp32 on an AVX2-only EPYC).
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe() for probe in probes if probe is not None)


def build_training_model(config: TrainConfig, *, fresh: bool, say: Callable[[str], None]) -> nn.Module:
    """The network, initialised from `config.init_from` when starting afresh, in the configured
    memory layout, compiled if asked."""
    from ntire.models.build import build_model

    model = build_model(config.model)
    if config.init_from and fresh:
        from ntire.checkpoint import init_from, load_model

        source, source_config = load_model(config.init_from)
        report = init_from(model, config.model, source.state_dict())
        say(f"initialised from {config.init_from} ({source_config.name} x{source_config.scales}): {report}")
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if config.compile:
        model = torch.compile(model)
    return model


def count_parameters(model: nn.Module) -> int:
    """Learnable parameters."""
    return sum(p.numel() for p in model.parameters())


def check_resumable(checkpoint: Checkpoint, config: TrainConfig) -> None:
    """Refuse to resume a checkpoint of another network (its weights would not fit)."""
    saved = checkpoint.state.config.get("model")
    if saved is not None and saved != to_dict(config.model):
        raise CheckpointError(
            f"{checkpoint.path}: saved for model {saved}, but this run trains {to_dict(config.model)}; "
            "use another --output-dir or the matching --model/--scale"
        )


def training_urls(config: TrainConfig, accelerator: Accelerator, say: Callable[[str], None]) -> list[str] | str:
    """The shard URLs to stream. A dataset root in DIV2K layout is sharded once (by the first
    process of each machine) into `<shard_dir>/<split_track_scales...>` and reused after; a shard
    folder (with manifest.json) is used as it is; anything else is taken as shard URLs."""
    from ntire.data.shards import MANIFEST_NAME, read_manifest

    source = config.data.source
    path = Path(source)
    if path.is_dir() and (path / MANIFEST_NAME).is_file():
        return read_manifest(path).urls(path)
    if not path.is_dir():
        if "://" in source or "{" in source or "::" in source or source.endswith(".tar"):
            return source
        raise DataError(f"{source}: no such dataset folder (--data takes a DIV2K-layout folder or shard URLs)")

    shard_dir = Path(config.data.shard_dir or Path(config.output_dir) / "shards") / shard_name(config)
    if accelerator.is_local_main_process and not _complete(shard_dir):
        from ntire.data.layout import div2k_pairs
        from ntire.data.shards import write_shards

        say(f"sharding {source} into {shard_dir} (once; reused by later runs)")
        pairs = div2k_pairs(source, split="train", track=config.data.track, scales=config.scales,
                            indices=_span(config.data.train_indices))
        write_shards(pairs, shard_dir, track=config.data.track, scales=config.scales,
                     subimage=config.data.subimage, step=config.data.subimage_step,
                     progress=accelerator.is_main_process and config.progress)
    accelerator.wait_for_everyone()
    return read_manifest(shard_dir).urls(shard_dir)


def shard_name(config: TrainConfig) -> str:
    """Folder name of a shard cache, from what decides its content (the source folder included,
    so that a shared --shard-dir never serves one dataset's shards for another)."""
    import hashlib

    d = config.data
    source = Path(d.source).resolve()
    tag = hashlib.sha256(str(source).encode()).hexdigest()[:8]
    parts = [f"{source.name}-{tag}", f"train_{d.track}_x{''.join(map(str, config.scales))}"]
    if d.train_indices:
        parts.append(f"{d.train_indices[0]:04d}-{d.train_indices[1]:04d}")
    if d.subimage:
        parts.append(f"sub{d.subimage}s{d.subimage_step or d.subimage}")
    return "_".join(parts)


def _complete(shard_dir: Path) -> bool:
    from ntire.data.shards import read_manifest

    try:
        return read_manifest(shard_dir).complete
    except DataError:
        return False


def _span(span: tuple[int, int] | None) -> range | None:
    return None if span is None else range(span[0], span[1] + 1)


def training_batches(config: TrainConfig, accelerator: Accelerator, *, start: int,
                     say: Callable[[str], None]) -> Iterator[Any]:
    """The endless stream of training batches of this process, from micro-batch `start` on."""
    from ntire.data.loader import train_batches

    urls = training_urls(config, accelerator, say)
    d = config.data
    return train_batches(
        urls,
        scales=config.scales,
        batch_size=d.batch_size,
        patch_size=d.patch_size,
        patches_per_sample=d.patches_per_sample,
        shuffle_buffer=d.shuffle_buffer,
        seed=config.seed,
        num_workers=d.num_workers,
        start_step=start,
        skip_bad_samples=d.skip_bad_samples,
        augment=d.augment,
    )


def validation_set(config: TrainConfig, accelerator: Accelerator,
                   say: Callable[[str], None]) -> list[ValidationImage] | None:
    """This process's share of the validation images (None: no validation data for this run)."""
    from ntire.data.shards import MANIFEST_NAME

    root = config.data.valid_root
    if root is None:
        source = Path(config.data.source)
        if source.is_dir() and not (source / MANIFEST_NAME).is_file():
            root = config.data.source
    if root is None:
        say("no validation data (training from shards; give --valid-data DIR): validation skipped")
        return None
    return load_validation(
        root,
        track=config.data.track,
        scales=config.scales,
        indices=_span(config.data.valid_indices),
        protocol="div2k",
        process_index=accelerator.process_index,
        num_processes=accelerator.num_processes,
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
    """One optimizer update: L1 loss and gradients of each micro-batch summed, then a step.

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


def run_validation(
    model: nn.Module,
    config: TrainConfig,
    images: list[ValidationImage],
    accelerator: Accelerator,
    tracker: Tracker,
    step: int,
    say: Callable[[str], None],
) -> Validation:
    """Validate on every process's share, print a line per scale, log metrics and pictures.

    Runs a plain fp32 copy of the weights, whatever the training precision and wrappers (DDP,
    compile, autocast): the scores are those of the exported model under `ntire upscale`.
    """
    from accelerate.utils import gather_object

    network = fp32_network(model, config, accelerator, accelerator.device)
    gather = gather_object if accelerator.num_processes > 1 else (lambda rows: rows)
    result = validate(
        network,
        config.model,
        images,
        device=accelerator.device,
        tile=config.data.valid_tile,
        gather=gather,
        comparison_crop=config.tracking.comparison_crop,
    )
    for scale_result in result.scales.values():
        say(f"step {step}: {scale_result.line()}")
    tracker.log_metrics(result.metrics(), step)
    for scale, picture in result.comparisons.items():
        tracker.log_image(picture, f"comparisons/step-{step:08d}_x{scale}.png")
    return result


def plain_network(model: nn.Module) -> nn.Module:
    """The network inside the training wrappers (DDP or DeepSpeed `.module`, compile's `_orig_mod`).

    Not `accelerator.unwrap_model`, which imports DeepSpeed whenever it is installed (seconds, and
    a warning on every CPU run).
    """
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def trained_weights(model: nn.Module, accelerator: Accelerator) -> dict[str, torch.Tensor]:
    """The network's state_dict, gathered from every process under DeepSpeed ZeRO-3 (where all
    processes must call this)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return accelerator.get_state_dict(model)
    return plain_network(model).state_dict()


def fp32_network(model: nn.Module, config: TrainConfig, accelerator: Accelerator, device: Any) -> nn.Module:
    """A plain fp32 copy of the trained network on `device`, outside every training wrapper (DDP,
    DeepSpeed, compile, autocast): what the exported model computes. Every process must call it."""
    from ntire.models.build import build_model

    weights = trained_weights(model, accelerator)
    with torch.device("meta"):  # no initialisation: no time, and no draw from the RNG
        network = build_model(config.model)
    network = network.to_empty(device=device)
    network.load_state_dict(weights)
    return network


def export_model(model: nn.Module, config: TrainConfig, accelerator: Accelerator, *, step: int,
                 validation: Validation | None, name: str) -> Path:
    """Write the trained network to `<output_dir>/model` (safetensors + config.yaml), for
    inference. Every process must call it; the main process writes."""
    from ntire.checkpoint import save_model

    model_dir = Path(config.output_dir) / "model"
    network = fp32_network(model, config, accelerator, "cpu")
    if accelerator.is_main_process:
        metadata = {
            "source": "ntire train",
            "run_name": name,
            "step": step,
            "track": config.data.track,
            "data": data_name(config),
        }
        if validation is not None:
            metadata["valid"] = {k.split("/", 1)[1]: round(v, 4) for k, v in validation.metrics().items()}
        save_model(model_dir, network, config.model, metadata)
    accelerator.wait_for_everyone()
    return model_dir


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


def _close(batches: Any) -> None:
    # Stops DataLoader worker processes now rather than whenever the generator is collected.
    close = getattr(batches, "close", None)
    if close is not None:
        close()


def _append_jsonl(out: Path, main: bool, record: dict[str, Any]) -> None:
    # A plain record of the run beside the tracking store: one JSON object per line.
    if main:
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------------------------------------
# Command line


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's config: defaults < --config FILE < options < --set KEY=VALUE."""
    from ntire.commands.train import overrides_from_args

    overrides = merge(overrides_from_args(args), parse_set(args.set))
    return build_config(args.config, overrides, model=args.model, scales=tuple(args.scale) if args.scale else None)


def run_from_args(args: argparse.Namespace) -> int:
    """Run a training job from parsed options (`ntire train` and this file's `main`)."""
    config = config_from_args(args)
    if args.print_config:
        print(config_to_yaml(config), end="")
        return 0
    result = fit(config)
    if result.validation is not None:
        for scale_result in result.validation.scales.values():
            print(scale_result.line())
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python ntire/train.py ...` / `accelerate launch ntire/train.py ...`."""
    from ntire.commands.train import add_arguments

    parser = argparse.ArgumentParser(prog="ntire/train.py", description=HELP)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_from_args(args)
    except NtireError as e:
        print(f"ntire train: error: {e}", file=sys.stderr)
        return 2


__all__ = [
    "FitResult",
    "build_training_model",
    "config_from_args",
    "export_model",
    "fit",
    "make_accelerator",
    "training_urls",
]

if __name__ == "__main__":
    sys.exit(main())
