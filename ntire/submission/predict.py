"""Running a model over a split's LR images, one SR PNG each, resumably, by one or several processes.

`predict` writes each SR image atomically, named as the challenge expects (`sr_name`), and records
it in a state file with its runtime and the setup that made it (checkpoint fingerprint,
self-ensemble, scale, CPU/GPU, precision). A later call with the same setup skips every finished
image, so an interrupted run resumes where it stopped; any other setup redoes everything. The
runtimes are what the readme reports.

PNG work overlaps the model: a pool of threads decodes the next LR images and encodes and writes
the finished SR images while the model runs (Pillow's zlib releases the GIL). An image enters the
state file only once its PNG has been renamed into place, so a kill at any moment loses at most
the images in flight, never a record of an image that is not there.

Several processes (`accelerate launch -m ntire submit`) share one folder: process `rank` of
`world` makes every world-th image (`Share`) and records it in its own part of the state
(`state-sr.part-<rank>.json`); all parts with the same setup count as finished work, whichever
world size made them, so a run interrupted with one number of processes resumes with another.
`collect` (one process, after all are done) merges the parts into the state file, which is what
the readme's runtime comes from.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ntire.errors import NtireError
from ntire.files import atomic_write_text

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

PNG_COMPRESS_LEVEL = 1
"""zlib level of the SR PNGs (lossless at every level). Measured on 2040x1356 SR-sized photos
(`benchmarks/submissions.py --png`): level 1 encodes in a fifth of level 6's time (177 vs 841 ms)
for files 19% larger (2.5 vs 2.1 MiB); level 0 is faster still but stores 3x the bytes."""

DEFAULT_IO_WORKERS = 4
"""Threads decoding LR and encoding SR PNGs beside the model. The fastest case, EDSR x2 without
the ensemble on an H200, takes about 0.25 s per image; encoding its 2040x1356 SR image at level 1
took 0.18 s on one core of a 2-core EPYC (decoding an LR image a fraction of that): 4 threads keep
up with it, with room for the slower cores a GPU machine may have."""


def sr_name(lr_path: str | os.PathLike) -> str:
    """The SR file name the challenge expects for an LR input: its name, as a PNG."""
    return Path(lr_path).stem + ".png"


def png_header(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, bit depth, colour type) from a PNG's IHDR chunk, or None if not a PNG.

    Read from the bytes because Pillow silently converts 16-bit RGB to 8-bit on opening.
    """
    if len(data) < 33 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height, depth, color = struct.unpack(">IIBB", data[16:26])
    return width, height, depth, color


@dataclass(frozen=True)
class LRInput:
    """One LR image to super-resolve."""

    path: Path
    """The LR file."""

    hr: Path | None = None
    """Its HR file, where known (valid split)."""

    @property
    def sr_name(self) -> str:
        """The SR file's name: the LR file's, as PNG."""
        return sr_name(self.path)


def lr_inputs(data_root: Path, split: str, track: str, scale: int) -> list[LRInput]:
    """The split's LR images for `track` at `scale` (with HR on the valid split)."""
    from ntire.data.layout import div2k_pairs

    pairs = div2k_pairs(data_root, split=split, track=track, scales=(scale,))
    return [LRInput(path=p.lr[scale], hr=p.hr) for p in pairs]


def checkpoint_fingerprint(path: str | os.PathLike) -> str:
    """A short hash of a checkpoint's resolved path and its files' sizes and times.

    Recorded with every SR image, so a resumed run redoes images made by another checkpoint.
    """
    path = Path(path).resolve()
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    h = hashlib.sha256(str(path).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


@dataclass
class PredictRecord:
    """What `predict` did for one folder."""

    seconds: dict[str, float]
    """SR file name -> seconds its inference took (measured on the run that made it)."""

    done: int
    """Images made on this call."""

    skipped: int
    """Images found finished from an earlier call with the same setup."""

    @property
    def runtime(self) -> float:
        """Mean seconds per image."""
        return sum(self.seconds.values()) / len(self.seconds) if self.seconds else 0.0


@dataclass(frozen=True)
class Share:
    """Which images of a folder this process makes: every `world`-th, starting at `rank`."""

    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank must be in [0, world), got rank {self.rank} of {self.world}")

    def mine(self, inputs: list[LRInput]) -> list[LRInput]:
        """This process's images; interleaved, so every process gets the same mix of sizes."""
        return inputs[self.rank :: self.world]


def part_path(state_path: Path, rank: int) -> Path:
    """Where process `rank` of a multi-process run records its images: `<state>.part-<rank>.json`."""
    return state_path.with_name(f"{state_path.stem}.part-{rank}{state_path.suffix}")


def _state_files(state_path: Path) -> list[Path]:
    """The state file and every part beside it (from this run, or one of another world size)."""
    parts = sorted(state_path.parent.glob(f"{state_path.stem}.part-*{state_path.suffix}"))
    return [state_path, *parts]


def _read_state(path: Path) -> dict[str, Any] | None:
    # A missing or damaged state file only costs a redo, never a failed build.
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("images"), dict) else None


def _load_images(state_path: Path, setup: dict[str, Any], *, drop_others: bool) -> dict[str, Any]:
    """Every image recorded with `setup` in the state file or its parts.

    With `drop_others`, files recorded with another setup (or unreadable) are deleted first: their
    PNGs are about to be overwritten, and a record that outlived that would later pass a stale
    image for a finished one. Every process does this before writing anything, so no such record
    survives a run's first image.
    """
    images: dict[str, Any] = {}
    for path in _state_files(state_path):
        state = _read_state(path)
        if state is None or state.get("setup") != setup:
            if drop_others:
                path.unlink(missing_ok=True)
            continue
        images.update(state["images"])
    return images


def _finished(out: Path, lr_size: tuple[int, int], scale: int) -> bool:
    """True if `out` is an 8-bit RGB PNG of scale x the LR size (a whole, valid earlier result)."""
    try:
        with open(out, "rb") as f:
            header = png_header(f.read(33))
    except OSError:
        return False
    return header is not None and header == (lr_size[0] * scale, lr_size[1] * scale, 8, 2)


def _lr_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header, as PNG headers order them (the pixel limit checked too)."""
    from ntire.data.layout import image_size

    height, width = image_size(path)
    return width, height


def predict(
    upscale: Callable[[Any], Any],
    inputs: list[LRInput],
    out_dir: str | os.PathLike,
    *,
    scale: int,
    setup: dict[str, Any],
    state_path: str | os.PathLike,
    progress: bool = True,
    desc: str = "predict",
    share: Share = Share(),
    io_workers: int = DEFAULT_IO_WORKERS,
    compress_level: int = PNG_COMPRESS_LEVEL,
) -> PredictRecord:
    """Run `upscale` (uint8 LR array -> uint8 SR array) on this process's share of `inputs`,
    writing `out_dir/<name>.png`; returns what this process found and made.

    Resumable: an image is skipped if its PNG exists, has the right size and mode, and the state
    (`state_path` or a part of it, see the module doc) records it as made with the same `setup`
    (checkpoint fingerprint, ensemble, scale, device kind, precision); anything else is redone.
    Each PNG is written atomically by a pool thread, and the image is recorded in this process's
    state file only after that write has finished, so an interruption loses at most the images in
    flight. Decoding runs ahead of the model by `io_workers` images; encoded images wait for a
    free thread, at most 2 x `io_workers` of them in memory.

    `inputs` is the whole folder's list (PNGs of other names are deleted as leftovers of an
    earlier input list by the single or first process); `share` picks this process's images.
    """
    from tqdm import tqdm

    from ntire.files import remove_stale_temp_files
    from ntire.images import read_image, write_png

    out_dir, state_path = Path(out_dir), Path(state_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    mine = share.mine(inputs)
    # A killed run leaves its half-written PNGs under temporary names: ours to clear (the other
    # processes' images are theirs; they may be writing them right now).
    remove_stale_temp_files(out_dir, [i.sr_name for i in mine])
    images = _load_images(state_path, setup, drop_others=True)
    own_path = state_path if share.world == 1 else part_path(state_path, share.rank)
    remove_stale_temp_files(own_path.parent, [own_path.name])
    wanted = {i.sr_name for i in inputs}
    record = {"setup": setup, "images": {i.sr_name: images[i.sr_name] for i in mine if i.sr_name in images}}
    own = record["images"]

    def save() -> None:
        atomic_write_text(own_path, json.dumps(record, indent=1, sort_keys=True))

    seconds: dict[str, float] = {}
    todo: list[LRInput] = []
    for item in mine:
        if item.sr_name in own and _finished(out_dir / item.sr_name, _lr_size(item.path), scale):
            seconds[item.sr_name] = float(own[item.sr_name]["seconds"])
        else:
            own.pop(item.sr_name, None)
            todo.append(item)
    skipped, done = len(seconds), 0
    bar = tqdm(total=len(mine), initial=skipped, desc=desc, unit="image", disable=not progress, leave=False)

    def finish(item: LRInput, elapsed: float, write: Future) -> None:
        nonlocal done
        write.result()  # a failed write (a full disk) raises here, and the image stays unrecorded
        own[item.sr_name] = {"seconds": elapsed, "process": share.rank}
        seconds[item.sr_name] = elapsed
        done += 1
        save()
        bar.update()

    with ThreadPoolExecutor(max_workers=max(1, io_workers), thread_name_prefix="ntire-png") as pool:
        reads = deque((item, pool.submit(read_image, item.path)) for item in todo[: max(1, io_workers)])
        ahead = len(reads)
        writes: deque[tuple[LRInput, float, Future]] = deque()
        try:
            while reads:
                item, read = reads.popleft()
                lr = read.result()
                if ahead < len(todo):
                    reads.append((todo[ahead], pool.submit(read_image, todo[ahead].path)))
                    ahead += 1
                start = time.perf_counter()
                sr = upscale(lr)
                elapsed = time.perf_counter() - start
                if sr.shape[:2] != (lr.shape[0] * scale, lr.shape[1] * scale):
                    raise NtireError(
                        f"{item.path}: model returned {sr.shape[1]}x{sr.shape[0]}, not x{scale} the LR size"
                    )
                writes.append((item, elapsed, pool.submit(write_png, out_dir / item.sr_name, sr, compress_level)))
                del lr, sr
                while writes and (writes[0][2].done() or len(writes) > 2 * max(1, io_workers)):
                    finish(*writes.popleft())
        except BaseException:
            # Whatever stopped the loop, every image already written is recorded before it propagates.
            for _, read in reads:
                read.cancel()
            with contextlib.suppress(Exception):  # the error that stopped the loop is the one to report
                _drain(writes, finish)
            raise
        _drain(writes, finish)
    bar.close()
    if share.rank == 0:
        # Leftovers from an earlier input list would make the folder an invalid submission.
        for stale in out_dir.glob("*.png"):
            if stale.name not in wanted:
                stale.unlink(missing_ok=True)
    save()
    return PredictRecord(seconds=seconds, done=done, skipped=skipped)


def _drain(writes: deque, finish: Callable[..., None]) -> None:
    """Finish (record) every pending write that succeeds; then raise the first failure, if any."""
    error: BaseException | None = None
    while writes:
        try:
            finish(*writes.popleft())
        except Exception as e:
            error = error or e
    if error is not None:
        raise error


def collect(inputs: list[LRInput], state_path: str | os.PathLike, setup: dict[str, Any]) -> PredictRecord:
    """The whole folder's record once every process has finished its share: the images of the
    state file and its parts made with `setup`, merged into the state file (written first, then
    the parts removed, so a kill in between loses nothing). Call from one process only."""
    state_path = Path(state_path)
    wanted = {i.sr_name for i in inputs}
    images = {k: v for k, v in _load_images(state_path, setup, drop_others=False).items() if k in wanted}
    atomic_write_text(state_path, json.dumps({"setup": setup, "images": images}, indent=1, sort_keys=True))
    for part in _state_files(state_path)[1:]:
        part.unlink(missing_ok=True)
    missing = sorted(wanted - set(images))
    if missing:
        names = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise NtireError(
            f"{state_path}: {len(missing)} image(s) not made ({names}); a process stopped early: run the command "
            "again to make them"
        )
    return PredictRecord(seconds={k: float(v["seconds"]) for k, v in images.items()}, done=0, skipped=len(images))


__all__ = [
    "DEFAULT_IO_WORKERS",
    "LRInput",
    "PNG_COMPRESS_LEVEL",
    "PredictRecord",
    "Share",
    "checkpoint_fingerprint",
    "collect",
    "lr_inputs",
    "part_path",
    "png_header",
    "predict",
    "sr_name",
]
