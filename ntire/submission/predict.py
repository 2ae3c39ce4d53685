"""Running a model over a split's LR images, one SR PNG each, resumably.

`predict` writes each SR image atomically, named as the challenge expects (`sr_name`), and records
it in a state file with its runtime and the setup that made it (checkpoint fingerprint,
self-ensemble, scale, CPU/GPU). A later call with the same setup skips every finished image, so an
interrupted run resumes where it stopped; any other setup redoes everything. The runtimes are what
the readme reports.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ntire.errors import NtireError
from ntire.files import atomic_write_text

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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


def _load_state(path: Path) -> dict[str, Any]:
    # A missing or damaged state file only costs a redo, never a failed build.
    try:
        state = json.loads(path.read_text())
        return state if isinstance(state, dict) and isinstance(state.get("images"), dict) else {"images": {}}
    except (OSError, ValueError):
        return {"images": {}}


def _finished(out: Path, lr_size: tuple[int, int], scale: int) -> bool:
    """True if `out` is an 8-bit RGB PNG of scale x the LR size (a whole, valid earlier result)."""
    try:
        with open(out, "rb") as f:
            header = png_header(f.read(33))
    except OSError:
        return False
    return header is not None and header == (lr_size[0] * scale, lr_size[1] * scale, 8, 2)


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
) -> PredictRecord:
    """Run `upscale` (uint8 LR array -> uint8 SR array) on every input, writing `out_dir/<name>.png`.

    Resumable: an image is skipped if its PNG exists, has the right size and mode, and
    `state_path` records it as made with the same `setup` (checkpoint fingerprint, ensemble,
    scale, device kind); anything else is redone. Each PNG is written atomically and the state
    after it, so an interruption loses at most the image in progress.
    """
    from PIL import Image
    from tqdm import tqdm

    from ntire.files import remove_stale_temp_files
    from ntire.images import read_image, write_png

    out_dir, state_path = Path(out_dir), Path(state_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    # A killed run leaves its half-written PNG under a temporary name: ours to clear.
    remove_stale_temp_files(out_dir, [i.sr_name for i in inputs])
    state = _load_state(state_path)
    if state.get("setup") != setup:
        state = {"setup": setup, "images": {}}
    images: dict[str, Any] = state["images"]
    wanted = {i.sr_name for i in inputs}
    for name in list(images):
        if name not in wanted:
            del images[name]
    seconds: dict[str, float] = {}
    done = skipped = 0
    bar = tqdm(inputs, desc=desc, unit="image", disable=not progress, leave=False)
    for item in bar:
        out = out_dir / item.sr_name
        with Image.open(item.path) as im:
            lr_size = im.size
        if item.sr_name in images and _finished(out, lr_size, scale):
            seconds[item.sr_name] = float(images[item.sr_name]["seconds"])
            skipped += 1
            continue
        lr = read_image(item.path)
        start = time.perf_counter()
        sr = upscale(lr)
        elapsed = time.perf_counter() - start
        if sr.shape[:2] != (lr.shape[0] * scale, lr.shape[1] * scale):
            raise NtireError(f"{item.path}: model returned {sr.shape[1]}x{sr.shape[0]}, not x{scale} the LR size")
        write_png(out, sr)
        images[item.sr_name] = {"seconds": elapsed}
        seconds[item.sr_name] = elapsed
        done += 1
        atomic_write_text(state_path, json.dumps(state, indent=1, sort_keys=True))
    # Leftovers from an earlier input list would make the folder an invalid submission.
    for stale in out_dir.glob("*.png"):
        if stale.name not in wanted:
            stale.unlink()
    atomic_write_text(state_path, json.dumps(state, indent=1, sort_keys=True))
    return PredictRecord(seconds=seconds, done=done, skipped=skipped)


__all__ = [
    "LRInput",
    "PredictRecord",
    "checkpoint_fingerprint",
    "lr_inputs",
    "png_header",
    "predict",
    "sr_name",
]
