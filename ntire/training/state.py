"""Resumable training checkpoints: save atomically, find the newest complete one, keep K + best.

A checkpoint is a folder `<output_dir>/checkpoints/step-00001000/` holding Accelerate's state
(model, optimizer, scheduler and every process's RNG, via `accelerator.save_state`) plus
`train_state.yaml`: the update count, the loader position, the validation result at that step,
the MLflow run id and the full config. It is written under a hidden temporary name and renamed
into place once complete, so a crash mid-save leaves the previous checkpoint as the newest
complete one, and a half-written folder is never mistaken for a checkpoint.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ntire.errors import CheckpointError
from ntire.files import atomic_write_text

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
    try:
        data = yaml.safe_load(state_file.read_text())
        return Checkpoint(path, TrainState(**data))
    except (OSError, yaml.YAMLError, TypeError) as e:
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


def find_resume(output_dir: str | os.PathLike, resume: str | None) -> Checkpoint | None:
    """The checkpoint `resume` asks for: None (start afresh), `auto` (newest complete one in
    `output_dir`, or None if there is none yet) or a checkpoint folder."""
    if resume is None:
        return None
    if resume == "auto":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    return read_checkpoint(resume)


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
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{checkpoint.path}: cannot restore training state ({e})") from None
    return checkpoint.state


def prune_checkpoints(output_dir: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints and the best by validation PSNR,
    plus leftovers of crashed saves. Returns the folders removed. Call on the main process only."""
    root = checkpoint_root(output_dir)
    checkpoints = list_checkpoints(output_dir)
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
    "checkpoint_root",
    "find_resume",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "read_checkpoint",
    "save_checkpoint",
]
