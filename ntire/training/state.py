"""Resumable training checkpoints: save atomically, find the newest complete one, keep K + best.

A checkpoint is a folder `<output_dir>/checkpoints/step-00001000/` holding Accelerate's state
(model and optimizer, via `accelerator.save_state`), every process's RNG state as JSON
(`rng_state_<rank>.json`) and `train_state.yaml`: the update count, the loader position, the
validation result at that step, the MLflow run id and the full config. It is written under a
hidden temporary name and renamed into place once complete, so a crash mid-save leaves the
previous checkpoint as the newest complete one, and a half-written folder is never mistaken for
a checkpoint.

Resuming never unpickles anything that could run code: the weights are safetensors, the optimizer
(and scaler) states are read with `torch.load(weights_only=True)`, the RNG states are JSON, and
the files Accelerate would unpickle freely (`custom_checkpoint_*.pkl`, which older checkpoints
hold for the lr scheduler, and its `random_states_*.pkl`) are not read: the lr is a function of
the step. A file that holds anything but tensors and plain data is refused in one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ntire.errors import CheckpointError, WriteError, one_line, os_reason
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

    world_size: int | None = None
    """Processes the run trained with: each streams its own share of the shards, so the batches
    after a resume depend on it (None in older checkpoints)."""


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
    from ntire.config_io import read_yaml
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


def save_checkpoint(accelerator: Any, output_dir: str | os.PathLike, state: TrainState,
                    extra: dict[str, dict[str, Any]] | None = None) -> Path:
    """Save Accelerate's state and `state` as `checkpoints/step-<step>`, atomically.

    Every process must call this (each saves its own RNG state). The folder is filled under a
    temporary name and renamed when complete; an existing folder of the same step (left by an
    earlier run resumed from further back) is replaced. `extra`: more tensors to keep, as
    safetensors files named by its keys (e.g. the weight average, `ema.safetensors`), written by
    the main process; `read_extra` reads one back.
    """
    root = checkpoint_root(output_dir)
    final = root / f"step-{state.step:08d}"
    tmp = root / f".tmp-step-{state.step:08d}"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)  # debris of a save that crashed
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        atomic_write_text(tmp / RNG_FILE.format(rank=accelerator.process_index), json.dumps(rng_state()))
        if accelerator.is_main_process and extra:
            from safetensors.torch import save_file

            for name, tensors in extra.items():
                save_file(tensors, str(tmp / name))
    except Exception as e:  # noqa: BLE001 - safetensors and torch's zip writer raise their own kinds
        _abandon_save(tmp, e)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        apply_default_modes(tmp)  # Accelerate's safetensors files come 0600
        sizes = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        state = dataclasses.replace(state, files=sizes)
        try:
            atomic_write_text(tmp / STATE_FILE, yaml.safe_dump(asdict(state), sort_keys=False))
            _fsync_tree(tmp)
        except OSError as e:
            _abandon_save(tmp, e)
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


def read_extra(checkpoint: Checkpoint, name: str) -> dict[str, Any] | None:
    """The tensors `save_checkpoint` kept as `name` in `checkpoint` (None if it kept none)."""
    path = checkpoint.path / name
    if not path.is_file():
        return None
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: unreadable ({one_line(e)}); resume from another checkpoint") from None


def load_checkpoint(accelerator: Any, checkpoint: Checkpoint) -> TrainState:
    """Restore model, optimizer, any prepared scheduler, the scaler and the RNG state (every
    process) from `checkpoint`, reading no pickle that could run code (see the module's doc)."""
    try:
        _restore(accelerator, checkpoint.path)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - torch, safetensors and DeepSpeed each raise their own kind
        raise CheckpointError(f"{checkpoint.path}: cannot restore training state ({one_line(e)})") from None
    return checkpoint.state


def _restore(accelerator: Any, folder: Path) -> None:
    # What Accelerate's load_state does for a plain or DDP run, minus its unpickling: its model,
    # optimizer, scheduler and scaler files, by its own names (accelerate.utils.constants). Its
    # sampler.bin / dl_state_dict.bin are never written: ntire prepares no DataLoader (the loader
    # position is TrainState.batches). custom_checkpoint_*.pkl is never read: the lr is a function of the step.
    from accelerate.utils import DistributedType
    from safetensors.torch import load_model

    kind = accelerator.distributed_type
    suffix = lambda i: f"_{i}" if i else ""  # noqa: E731 - Accelerate's numbering of a second model
    if kind in (DistributedType.FSDP, DistributedType.MEGATRON_LM):
        raise CheckpointError(f"{folder}: ntire resumes single-process, DDP and DeepSpeed runs, not {kind.value}")
    if kind == DistributedType.DEEPSPEED:
        import torch

        for i, engine in enumerate(accelerator._models):
            # DeepSpeed's own loader asks torch for full unpickling: forced weights-only, with the
            # three plain DeepSpeed types its ZeRO optimizer states hold (measured, ZeRO-1/2, bf16).
            with weights_only_loads(), torch.serialization.safe_globals(_deepspeed_state_types()):
                engine.load_checkpoint(str(folder), f"pytorch_model{suffix(i)}")
    else:
        for i, model in enumerate(accelerator._models):
            weights = folder / f"model{suffix(i)}.safetensors"
            try:
                load_model(model, str(weights), device="cpu")
            except Exception as e:  # noqa: BLE001 - safetensors' own error kinds
                raise CheckpointError(f"{weights}: unreadable weights ({one_line(e)}); resume from another "
                                      "checkpoint") from None
        for i, optimizer in enumerate(accelerator._optimizers):
            optimizer.load_state_dict(safe_torch_load(folder / f"optimizer{suffix(i)}.bin"))
    for i, scheduler in enumerate(accelerator._schedulers):
        if kind != DistributedType.DEEPSPEED or type(scheduler).__name__ != "DeepSpeedSchedulerWrapper":
            scheduler.load_state_dict(safe_torch_load(folder / f"scheduler{suffix(i)}.bin"))
    if accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(safe_torch_load(folder / "scaler.pt"))
    restore_rng_state(folder, accelerator.process_index)


RNG_FILE = "rng_state_{rank}.json"
"""Each process's RNG state in a checkpoint (Python, NumPy, torch CPU and CUDA generators)."""


def rng_state() -> dict[str, Any]:
    """The state of every random generator a training process draws from, as plain JSON data."""
    import random

    import numpy as np
    import torch

    version, keys, gauss = random.getstate()
    kind, np_keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    record: dict[str, Any] = {
        "python": [version, list(keys), gauss],
        "numpy": [kind, np_keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        record["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return record


def restore_rng_state(folder: Path, rank: int) -> None:
    """Set every generator to the state saved by process `rank` in checkpoint `folder`. A
    checkpoint of an earlier ntire holds only Accelerate's pickle of it, read weights-only."""
    import random

    import numpy as np
    import torch

    path = folder / RNG_FILE.format(rank=rank)
    if not path.is_file():
        _restore_accelerate_rng(folder / f"random_states_{rank}.pkl")
        return
    try:
        record = json.loads(path.read_text())
        version, keys, gauss = record["python"]
        kind, np_keys, pos, has_gauss, cached = record["numpy"]
        random.setstate((int(version), tuple(int(k) for k in keys), None if gauss is None else float(gauss)))
        np.random.set_state((str(kind), np.asarray(np_keys, dtype=np.uint32), int(pos), int(has_gauss),
                             float(cached)))
        torch.set_rng_state(torch.tensor(record["torch"], dtype=torch.uint8))
        cuda = record.get("cuda")
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in cuda])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: unreadable RNG state ({one_line(e)}); resume from another checkpoint") from None


def _restore_accelerate_rng(path: Path) -> None:
    import random

    import numpy as np
    import torch

    # Accelerate pickles NumPy's state as an array: allow exactly the NumPy types that takes.
    with torch.serialization.safe_globals(_numpy_array_globals()):
        states = safe_torch_load(path)
    try:
        random.setstate(states["random_state"])
        np.random.set_state(states["numpy_random_seed"])
        torch.set_rng_state(states["torch_manual_seed"])
        if "torch_cuda_manual_seed" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["torch_cuda_manual_seed"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: unreadable RNG state ({one_line(e)}); resume from another checkpoint") from None


def _deepspeed_state_types() -> list[Any]:
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def _numpy_array_globals() -> list[Any]:
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def safe_torch_load(path: Path) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU: tensors and plain data only. A file that
    holds other objects (a pickle that could run code) or cannot be read is a CheckpointError."""
    import pickle

    import torch

    if not path.is_file():
        raise CheckpointError(f"{path}: missing from the checkpoint; resume from another checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: refused: it holds objects other than tensors and plain data (a pickle that could run "
            "code), which ntire never loads; resume from another checkpoint"
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({one_line(e)}); resume from another checkpoint") from None


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Make every `torch.load` inside the block weights-only, even one that asks for full
    unpickling (DeepSpeed's checkpoint loader does): torch's TORCH_FORCE_WEIGHTS_ONLY_LOAD switch."""
    name = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
    before = os.environ.get(name)
    os.environ[name] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _abandon_save(tmp: Path, error: BaseException) -> None:
    """A save that failed writing: drop its half-written folder (the previous checkpoint stays
    the newest), and say in one line which folder and why (a full disk, a read-only one)."""
    reason = os_reason(error)
    if reason is None and _nearly_full(tmp.parent):
        # torch's zip writer reports a full disk without the errno ("unexpected pos 576 vs 534").
        reason = f"{os.strerror(errno.ENOSPC)}: {shutil.disk_usage(tmp.parent).free} bytes free"
    if reason is None:
        raise error  # not a failed write: a bug, shown as one
    shutil.rmtree(tmp, ignore_errors=True)
    raise WriteError(f"{tmp.parent}: cannot save a checkpoint ({reason})") from None


def _nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < NEARLY_FULL
    except OSError:
        return False


NEARLY_FULL = 64 * 2**20
"""Free bytes under which a save that failed without saying why is taken for a full disk."""


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
        # A step folder without its state file is what an older ntire's pruning left when killed.
        removed += [p for p in root.iterdir() if _NAME.match(p.name) and not (p / STATE_FILE).exists()]
    for path in removed:
        doomed = path
        if _NAME.match(path.name):
            # Renamed out of the checkpoints' names first, in one step: a kill mid-delete then
            # leaves debris the next pruning clears, never a half-deleted `step-*` folder.
            doomed = root / f".old-{path.name}"
            shutil.rmtree(doomed, ignore_errors=True)
            os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
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
