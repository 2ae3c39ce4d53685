"""Resumable training checkpoints: save atomically, find the newest complete one, keep K + best.

A checkpoint is a folder `<output_dir>/checkpoints/step-00001000/` holding Accelerate's state
(model, optimizer, scheduler and every process's RNG, via `accelerator.save_state`) plus
`train_state.yaml`: the update count, the loader position, the validation result at that step,
the MLflow run id and the full config. It is written under a hidden temporary name and renamed
into place once complete, so a crash mid-save leaves the previous checkpoint as the newest
complete one, and a half-written folder is never mistaken for a checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ntire.errors import CheckpointError, one_line
from ntire.files import apply_default_modes, atomic_write_text

CHECKPOINTS = "checkpoints"
"""Sub-folder of the output folder holding the checkpoints."""

STATE_FILE = "train_state.yaml"
"""Written last into a checkpoint: its presence (after the rename) marks the checkpoint complete."""

_NAME = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True)
class TrainState:
    """What a checkpoint records besides Accelerate's state."""

    step: int
    """Optimizer updates done."""

    batches: int
    """Micro-batches each process has drawn from the loader (its position to resume at)."""

    valid_psnr: float | None = None
    """Mean validation PSNR over the scales, if validation ran at this very step."""

    valid: dict[str, float] = field(default_factory=dict)
    """Validation metrics at this step (`psnr_x2`, `ssim_x2`, ...), if it ran."""

    tracking_run_id: str | None = None
    """MLflow run this job logs to, so a resumed job continues the same run."""

    config: dict[str, Any] = field(default_factory=dict)
    """The training config, as plain data."""

    lineage: str = ""
    """Id of the run this checkpoint belongs to, made when the run started afresh and kept by
    every resume: pruning removes only the current run's checkpoints ("" in older checkpoints)."""

    files: dict[str, int] = field(default_factory=dict)
    """Size in bytes of every file of the checkpoint (relative paths) when it was saved, so a
    truncated or missing file is found before resuming from it (empty in older checkpoints)."""


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint folder and its recorded state."""

    path: Path
    state: TrainState


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    """The folder holding a run's checkpoints."""
    return Path(output_dir) / CHECKPOINTS


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """The checkpoint at `path`; CheckpointError if it is missing or incomplete."""
    path = Path(path)
    state_file = path / STATE_FILE
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint folder")
    if not state_file.is_file():
        raise CheckpointError(f"{path}: incomplete checkpoint (no {STATE_FILE}); resume from another one")
    from ntire.config import read_yaml
    from ntire.errors import ConfigError

    try:
        return Checkpoint(path, TrainState(**read_yaml(state_file, "a training state")))
    except ConfigError as e:
        raise CheckpointError(f"unreadable training state: {e}") from None
    except TypeError as e:
        raise CheckpointError(f"{state_file}: unreadable training state ({e})") from None


def list_checkpoints(output_dir: str | os.PathLike) -> list[Checkpoint]:
    """The complete checkpoints of a run, oldest first. Temporary (partial) folders are ignored."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        if _NAME.match(child.name) and (child / STATE_FILE).is_file():
            found.append(read_checkpoint(child))
    return sorted(found, key=lambda c: c.state.step)


def find_resume(output_dir: str | os.PathLike, resume: str | None,
                say: Callable[[str], None] = print) -> Checkpoint | None:
    """The checkpoint `resume` asks for: None (start afresh), `auto` (the newest complete and
    intact one in `output_dir`, saying which corrupt ones it passed over; None if there is none
    yet) or a checkpoint folder (CheckpointError if it is corrupt)."""
    if resume is None:
        return None
    if resume != "auto":
        checkpoint = read_checkpoint(resume)
        problem = checkpoint_problem(checkpoint)
        if problem:
            raise CheckpointError(f"{problem}; resume from another checkpoint")
        return checkpoint
    found = list_checkpoints(output_dir)
    for checkpoint in reversed(found):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint
        say(f"{problem}; falling back to the previous checkpoint")
    if found:
        raise CheckpointError(f"{checkpoint_root(output_dir)}: no intact checkpoint to resume from (all "
                              f"{len(found)} are damaged); start afresh with another --output-dir")
    return None


def checkpoint_problem(checkpoint: Checkpoint) -> str | None:
    """What is wrong with a complete checkpoint's files, in one line naming the file; None if
    they are intact. Cheap: sizes against those recorded at save time, and every safetensors
    file's header against its length (what a truncated copy or a disk-full write breaks)."""
    for name, size in sorted(checkpoint.state.files.items()):
        path = checkpoint.path / name
        if not path.is_file():
            return f"{path}: missing from the checkpoint"
        if path.stat().st_size != size:
            return f"{path}: {path.stat().st_size} bytes, but {size} were saved (truncated or damaged)"
    for path in sorted(checkpoint.path.rglob("*.safetensors")):
        problem = _safetensors_problem(path)
        if problem:
            return f"{path}: {problem}"
    return None


def _safetensors_problem(path: Path) -> str | None:
    # The header gives every tensor's byte range; data past the file's end means truncation.
    import json
    import struct

    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                return "not a complete safetensors file (header longer than the file)"
            header = json.loads(f.read(n))
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as e:
        return f"not a safetensors file ({e})"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        return f"{size} bytes, but its header describes {8 + n + end} (truncated or damaged)"
    return None


def best_checkpoint(checkpoints: list[Checkpoint]) -> Checkpoint | None:
    """The checkpoint with the highest validation PSNR (the later one on ties), if any has one."""
    scored = [c for c in checkpoints if c.state.valid_psnr is not None]
    return max(scored, key=lambda c: (c.state.valid_psnr, c.state.step)) if scored else None


def save_checkpoint(accelerator: Any, output_dir: str | os.PathLike, state: TrainState) -> Path:
    """Save Accelerate's state and `state` as `checkpoints/step-<step>`, atomically.

    Every process must call this (each saves its own RNG state). The folder is filled under a
    temporary name and renamed when complete; an existing folder of the same step (left by an
    earlier run resumed from further back) is replaced.
    """
    root = checkpoint_root(output_dir)
    final = root / f"step-{state.step:08d}"
    tmp = root / f".tmp-step-{state.step:08d}"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)  # debris of a save that crashed
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        apply_default_modes(tmp)  # Accelerate's safetensors files come 0600
        sizes = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        state = dataclasses.replace(state, files=sizes)
        atomic_write_text(tmp / STATE_FILE, yaml.safe_dump(asdict(state), sort_keys=False))
        _fsync_tree(tmp)
        if final.exists():
            old = root / f".old-step-{state.step:08d}"
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Any, checkpoint: Checkpoint) -> TrainState:
    """Restore model, optimizer, scheduler and RNG state (every process) from `checkpoint`."""
    try:
        accelerator.load_state(str(checkpoint.path))
    except Exception as e:  # noqa: BLE001 - torch, safetensors and pickle each raise their own kind
        raise CheckpointError(f"{checkpoint.path}: cannot restore training state ({one_line(e)})") from None
    return checkpoint.state


def prune_checkpoints(output_dir: str | os.PathLike, keep_last: int, lineage: str) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints of run `lineage` and its best by
    validation PSNR, plus leftovers of crashed saves; another run's checkpoints are never touched.
    Returns the folders removed. Call on the main process only."""
    root = checkpoint_root(output_dir)
    checkpoints = [c for c in list_checkpoints(output_dir) if c.state.lineage == lineage]
    keep = {c.path for c in checkpoints[-keep_last:]}
    best = best_checkpoint(checkpoints)
    if best is not None:
        keep.add(best.path)
    removed = [c.path for c in checkpoints if c.path not in keep]
    if root.is_dir():
        removed += [p for p in root.iterdir() if p.name.startswith((".tmp-step-", ".old-step-"))]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


# ---------------------------------------------------------------------------------------------
# Who owns a run folder

ARCHIVE_DIR = "archive"
"""Sub-folder of an output folder where `--archive-old-run` moves an earlier run."""

RUN_FILES = (CHECKPOINTS, "model", "model-ema", "metrics.jsonl", "ranks", "train_config.yaml")
"""What a run writes into its output folder, and what archiving moves. The shard cache and the
tracking store stay: the first is keyed by content, the second holds every run's history."""


def new_lineage() -> str:
    """A fresh run id for `TrainState.lineage`."""
    import uuid

    return uuid.uuid4().hex[:12]


def foreign_run(output_dir: str | os.PathLike, lineage: str | None) -> str | None:
    """What in `output_dir` belongs to another run than `lineage` (None: a fresh start, so any
    run is another), in words; None if nothing does."""
    out = Path(output_dir)
    others = [c for c in list_checkpoints(out) if lineage is None or c.state.lineage != lineage]
    if others:
        return f"{len(others)} checkpoint(s) of an earlier run (newest: step {others[-1].state.step})"
    model = out / "model" / "model.safetensors"
    if model.is_file():
        from ntire.models.checkpoint import read_metadata

        try:
            owner = read_metadata(out / "model").get("lineage")
        except Exception:  # noqa: BLE001 - an unreadable export is someone's too
            owner = None
        if lineage is None or owner != lineage:
            return "an exported model (model/) of an earlier run"
    return None


def claim_run_folder(output_dir: str | os.PathLike, resume: Checkpoint | None, *, archive: bool,
                     main_process: bool = True, say: Callable[[str], None] = print) -> str:
    """Make `output_dir` this run's, before anything is written there; return the run's lineage.

    A fresh start (`resume` None) or a resume from another run's checkpoint into a folder that
    holds an earlier run is refused, naming the folder and the choices, unless `archive`: then the
    main process moves that run to `<output_dir>/archive/<date-time>/` (nothing is deleted).
    """
    lineage = resume.state.lineage if resume is not None else None
    found = foreign_run(output_dir, lineage)
    if found:
        if not archive:
            raise CheckpointError(
                f"{output_dir}: holds {found}; continue it with --resume auto, start afresh elsewhere "
                "with another --output-dir, or move it aside with --archive-old-run"
            )
        if main_process:
            where = archive_run(output_dir)
            say(f"moved the earlier run in {output_dir} to {where}")
    return lineage if lineage is not None else new_lineage()


def archive_run(output_dir: str | os.PathLike) -> Path:
    """Move a run's files (RUN_FILES) from `output_dir` into a new `archive/<date-time>/`."""
    import time

    out = Path(output_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = out / ARCHIVE_DIR / stamp
    n = 1
    while target.exists():
        n += 1
        target = out / ARCHIVE_DIR / f"{stamp}-{n}"
    target.mkdir(parents=True)
    for name in RUN_FILES:
        if (out / name).exists():
            os.replace(out / name, target / name)
    return target


def _fsync_tree(folder: Path) -> None:
    # The rename must not reach the disk before the files it publishes.
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = [
    "CHECKPOINTS",
    "STATE_FILE",
    "Checkpoint",
    "TrainState",
    "best_checkpoint",
    "ARCHIVE_DIR",
    "archive_run",
    "checkpoint_problem",
    "claim_run_folder",
    "foreign_run",
    "checkpoint_root",
    "find_resume",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "read_checkpoint",
    "save_checkpoint",
]
