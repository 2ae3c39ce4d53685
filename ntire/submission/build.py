"""Putting a track's submissions together: per scale, predict -> readme -> validated zip -> scores.

`build_track` loads each scale's checkpoint as the manifest names it (it never trains one: a
missing checkpoint is an error saying how to make it), runs it over the split's LR images
(`ntire.submission.predict`), writes the readme and the zip (`ntire.submission.package`) and, on
the valid split, scores the result (`ntire.submission.report`).

Several processes (`Processes`, e.g. one per GPU under `accelerate launch`) each make a share of
every folder's images; after all have finished a scale, the first process alone merges their
records, writes the readme and the zip and scores them, while the others go on to the next scale.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ntire.errors import ConfigError
from ntire.files import atomic_write_text, remove_stale_temp_files
from ntire.submission.manifest import ModelEntry, SubmissionManifest, find_checkpoint, resolve_self_ensemble
from ntire.submission.package import (
    README_NAME,
    Readme,
    describe,
    expected_from_lr_files,
    expected_record_path,
    format_readme,
    write_zip,
)
from ntire.submission.predict import (
    DEFAULT_IO_WORKERS,
    PredictRecord,
    Share,
    checkpoint_fingerprint,
    collect,
    lr_inputs,
    predict,
)
from ntire.submission.report import SubmissionResult, score_bicubic, score_folder


def _alone(value: Any) -> list[Any]:
    return [value]


@dataclass(frozen=True)
class Processes:
    """The processes that build together, and how they meet (one process by default)."""

    rank: int = 0
    """This process's index, 0 to world - 1; process 0 packages."""

    world: int = 1
    """How many processes share the images."""

    gather: Callable[[Any], list[Any]] = field(default=_alone)
    """Every process's `value`, in rank order, once all have called it (a barrier that also
    collects; e.g. accelerate.utils.gather_object)."""

    @property
    def share(self) -> Share:
        """Which images of each folder this process makes."""
        return Share(self.rank, self.world)


@dataclass(frozen=True)
class RunOptions:
    """How `build_track` runs, beyond what the manifest says."""

    out: Path
    """Output folder (per track and scale subfolders, zips at its top)."""

    device: str = "cpu"
    """Torch device for inference (the command checks it with `ntire.options.resolve_device`)."""

    self_ensemble: bool | None = None
    """Force self-ensemble on or off for every entry (default: manifest, then paper)."""

    compare: bool = True
    """On the valid split, also run the other ensemble setting to report the gain."""

    progress: bool = True
    """Show progress bars."""

    tile: int | Literal["auto", "manifest"] | None = "manifest"
    """Override the manifest's tile size: `auto`, 0 or None (whole images), N; `manifest`: keep it."""

    batch_size: int | None = None
    """Override the manifest's tiles per forward pass."""

    precision: str | None = None
    """`fp32`, `tf32` or `bf16` (`ntire.inference.PRECISIONS`); None: tf32 on CUDA, else fp32."""

    channels_last: bool | None = None
    """Feed the model channels_last tensors; None: on CUDA only (`ntire.inference.use_channels_last`)."""

    io_workers: int = DEFAULT_IO_WORKERS
    """Threads decoding LR and encoding SR PNGs while the model runs."""

    processes: Processes = Processes()
    """The processes sharing the build (several under `accelerate launch`)."""


def build_track(
    manifest: SubmissionManifest,
    track: str,
    *,
    scales: tuple[int, ...] | None = None,
    split: str | None = None,
    data_root: Path,
    options: RunOptions,
) -> list[SubmissionResult]:
    """Make, validate and zip the submissions of one track, one per scale (see module doc).

    Returns the results on the first process, [] on the others."""
    import torch

    from ntire.inference import resolve_precision, use_channels_last

    plan = manifest.track(track)
    split = split or manifest.split
    if split not in ("test", "valid"):
        raise ConfigError(f"split must be 'test' or 'valid', got {split!r}")
    scales = tuple(scales) if scales else plan.scales
    for s in scales:
        if plan.entry_for(s) is None:
            served = ", ".join(f"x{t}" for t in plan.scales)
            raise ConfigError(f"manifest {manifest.name!r} serves no x{s} on the {track} track (it serves {served})")
    # Every checkpoint is found before any inference, so a missing one fails in seconds.
    checkpoints = {s: find_checkpoint(plan.entry_for(s), track) for s in scales}  # type: ignore[arg-type]
    device = torch.device(options.device)
    run = _Run(
        track=track,
        split=split,
        out=options.out,
        device=device,
        tile=manifest.tile if options.tile == "manifest" else options.tile,
        batch=options.batch_size or manifest.batch_size,
        compare=options.compare,
        progress=options.progress and options.processes.rank == 0,
        precision=resolve_precision(options.precision, device),
        channels_last=use_channels_last(device) if options.channels_last is None else options.channels_last,
        io_workers=options.io_workers,
        processes=options.processes,
    )
    say = print if run.processes.rank == 0 else lambda _: None
    # Packaging a scale (decoding every PNG twice to validate the folder and the zip, writing the
    # zip, scoring) is CPU work: a thread does it while the device computes the next scale.
    packaging: list[Future] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ntire-package") as packager:
        _make_scales(run, plan, scales, checkpoints, options, data_root, say, packager, packaging)
    return [job.result() for job in packaging]


def _make_scales(
    run: _Run, plan: Any, scales: tuple[int, ...], checkpoints: dict[int, Path], options: RunOptions,
    data_root: Path, say: Callable[[str], None], packager: ThreadPoolExecutor, packaging: list[Future],
) -> None:
    import torch

    from ntire.models.checkpoint import load_model

    models: dict[Path, tuple[Any, Any]] = {}  # one MDSR serving several scales is loaded once
    for scale in scales:
        for job in packaging:  # a zip that failed stops the build now, not after every scale's compute
            if job.done() and job.exception() is not None:
                job.result()
        checkpoint = checkpoints[scale]
        if checkpoint not in models:
            model, config = load_model(checkpoint, map_location="cpu", say=say)
            layout = torch.channels_last if run.channels_last else torch.contiguous_format
            models[checkpoint] = (model.eval().to(run.device, memory_format=layout), config)
        model, config = models[checkpoint]
        if scale not in config.scales:
            raise ConfigError(
                f"{checkpoint}: a {config.name} model for x{list(config.scales)}; the manifest asks it for x{scale}"
            )
        entry = plan.entry_for(scale)
        assert entry is not None
        ensemble = resolve_self_ensemble(entry, run.track, options.self_ensemble)
        package = _build_scale(run, entry, checkpoint, model, config, scale, ensemble, data_root)
        if package is not None:
            packaging.append(packager.submit(package))


@dataclass(frozen=True)
class _Run:
    """What every scale of one `build_track` call shares."""

    track: str
    split: str
    out: Path
    device: Any
    tile: int | Literal["auto"] | None
    """`auto`, None or 0 (whole images), or a tile size: `ntire.inference.upscale_image`'s `tile`."""
    batch: int
    compare: bool
    progress: bool
    precision: str
    channels_last: bool
    io_workers: int
    processes: Processes

    @property
    def device_kind(self) -> str:
        return "cpu" if self.device.type == "cpu" else "gpu"


def _build_scale(
    run: _Run, entry: ModelEntry, checkpoint: Path, model: Any, config: Any, scale: int, ensemble: bool, data_root: Path
) -> Callable[[], SubmissionResult] | None:
    """One scale's SR images (this process's share), then, on the first process, the job that
    packages them: readme, validated zip and the valid split's scores. None on the others."""
    from ntire.inference import upscale_image

    inputs = lr_inputs(data_root, run.split, run.track, scale)
    work = run.out / run.track / f"x{scale}"
    fingerprint = checkpoint_fingerprint(checkpoint)

    def setup(with_ensemble: bool) -> dict[str, Any]:
        return {"checkpoint": fingerprint, "self_ensemble": with_ensemble, "scale": scale, "device": run.device_kind,
                "precision": run.precision}

    def predict_into(folder: str, with_ensemble: bool) -> PredictRecord:
        def upscale(lr: Any) -> Any:
            import torch

            try:
                return upscale_image(model, config, lr, scale=scale, tile=run.tile, self_ensemble=with_ensemble,
                                     device=run.device, max_batch=run.batch, precision=run.precision,
                                     channels_last=run.channels_last)
            except torch.OutOfMemoryError:
                # The memory plan's margin was not enough (another process took memory meanwhile, say).
                tiles = "whole images" if run.tile in (None, 0) else f"tile {run.tile}"
                raise ConfigError(
                    f"{run.track} x{scale}: out of memory on {run.device} ({tiles}, {run.batch} per pass); "
                    "run again with --tile 512, a smaller --max-batch, or NTIRE_MEMORY_BUDGET below what is free "
                    "(finished images are kept)"
                ) from None

        return predict(
            upscale,
            inputs,
            work / folder,
            scale=scale,
            setup=setup(with_ensemble),
            state_path=work / f"state-{folder}.json",
            progress=run.progress,
            desc=f"{run.track} x{scale}{'+' if with_ensemble else ''}",
            share=run.processes.share,
            io_workers=run.io_workers,
        )

    # Into alt/, beside the zipped sr/: the gain column needs both settings.
    compare = run.split == "valid" and run.compare
    made = [predict_into("sr", ensemble)]
    if compare:
        made.append(predict_into("alt", not ensemble))
    counts = run.processes.gather((made[0].done, made[0].skipped))  # returns once every process is here
    if run.processes.rank != 0:
        return None
    done, skipped = sum(c[0] for c in counts), sum(c[1] for c in counts)
    return lambda: _package_scale(run, entry, checkpoint, model, config, scale, ensemble, inputs, setup, done,
                                  skipped)


def _package_scale(
    run: _Run, entry: ModelEntry, checkpoint: Path, model: Any, config: Any, scale: int, ensemble: bool,
    inputs: list, setup: Callable[[bool], dict[str, Any]], done: int, skipped: int,
) -> SubmissionResult:
    """Readme, validated zip and (valid split) scores of one scale whose images are all made."""
    from ntire.models.build import count_parameters

    work = run.out / run.track / f"x{scale}"
    compare = run.split == "valid" and run.compare
    zip_target = run.out / f"{run.track}_x{scale}.zip"
    # Debris of a run killed while this process wrote these files (only ever this one writes them).
    remove_stale_temp_files(work / "sr", [README_NAME])
    remove_stale_temp_files(work, ["state-sr.json", "state-alt.json", "scores.json"])
    remove_stale_temp_files(run.out, [zip_target.name, expected_record_path(zip_target).name])

    record = collect(inputs, work / "state-sr.json", setup(ensemble))
    readme = Readme(
        runtime=record.runtime,
        cpu=run.device_kind == "cpu",
        extra_data=entry.extra_data,
        description=describe(entry, checkpoint, config.name, count_parameters(model), ensemble, run.precision),
    )
    atomic_write_text(work / "sr" / README_NAME, format_readme(readme))
    expected = expected_from_lr_files([i.path for i in inputs], scale)
    zip_path = write_zip(work / "sr", zip_target, expected)

    scores = None
    if run.split == "valid":
        scores = {"bicubic": score_bicubic(inputs, scale)}
        scores["model+" if ensemble else "model"] = score_folder(work / "sr", inputs, scale)
        if compare:
            collect(inputs, work / "state-alt.json", setup(not ensemble))
            scores["model" if ensemble else "model+"] = score_folder(work / "alt", inputs, scale)
        atomic_write_text(work / "scores.json", json.dumps(scores, indent=1))
    return SubmissionResult(
        track=run.track,
        scale=scale,
        zip_path=zip_path,
        folder=work / "sr",
        checkpoint=checkpoint,
        model_name=config.name,
        self_ensemble=ensemble,
        n_images=len(inputs),
        runtime=record.runtime,
        done=done,
        skipped=skipped,
        device=str(run.device),
        scores=scores,
    )


__all__ = ["Processes", "RunOptions", "build_track"]
