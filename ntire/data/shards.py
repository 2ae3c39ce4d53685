"""Write a dataset split as WebDataset tar shards: one sample per (sub-)image holding the HR image,
its LR image for every scale and JSON metadata.

A sample's members are `<key>.hr.npy`, `<key>.lr2.npy`, ..., `<key>.json` (or `.png` instead of
`.npy`). The default encoding is raw uint8 .npy: about twice the bytes of PNG but decoded >10x
faster, which is what lets a few cores feed a GPU (measured in benchmarks/loader.py).

Optionally large images are cut into overlapping sub-images first (480 px, step 240, as the SR
toolboxes do for DIV2K), so one read feeds many patches. HR offsets and sizes are multiples of
every scale (their lcm), so each LR crop is exactly the HR crop // scale and stays pixel-aligned.
Images are written in windows of `mix` source images whose sub-images are shuffled together
(seeded), so consecutive samples of a shard come from different photos.

Output is deterministic (byte-identical for the same input: fixed tar mtime, owner and order) and
each shard is written to a temporary file and renamed when complete. `manifest.json` records the
finished shards (sample counts, sizes, sha256) after each one, so an interrupted run resumes at
the first unfinished shard without touching the finished ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ntire.data.layout import ImagePair, image_size
from ntire.data.shard_manifest import MANIFEST_NAME, ShardInfo, ShardManifest, read_manifest, save_manifest
from ntire.errors import DataError, ImageError, WriteError
from ntire.files import atomic_path, atomic_write_text, remove_stale_temp_files, sha256_file
from ntire.images import encode_png, read_image
from ntire.locks import hold_folder

ENCODINGS = ("npy", "png")
VERIFIED_NAME = ".verified.json"
"""Beside the manifest: the size and time at which each shard last matched its sha256, so a reused
cache is hashed again only where a file changed (kept apart so manifest.json stays reproducible)."""
SHARD_PATTERN = "shard-{:06d}.tar"
DEFAULT_SHARD_MAX_BYTES = 256 * 2**20
"""256 MiB: DIV2K x2-x4 sub-images make ~100 shards, enough to give every worker of a multi-node
run its own, small enough to stream from object storage without long stalls."""

_TAR_MTIME = 946684800  # 2000-01-01: a fixed member time makes shards byte-reproducible


@dataclass(frozen=True)
class _Planned:
    key: str
    pair: int  # index into pairs
    top: int  # HR crop origin
    left: int
    height: int  # HR crop size
    width: int


def _positions(length: int, size: int, step: int, align: int) -> list[tuple[int, int]]:
    """(start, size) windows along one axis: every `step`, plus one flush with the far edge."""
    if length <= size:
        return [(0, (length // align) * align)]
    starts = list(range(0, length - size + 1, step))
    last = ((length - size) // align) * align
    if last > starts[-1]:
        starts.append(last)
    return [(s, size) for s in starts]


def _plan(
    pairs: list[ImagePair],
    scales: tuple[int, ...],
    subimage: int | None,
    step: int | None,
    mix: int,
) -> list[_Planned]:
    """Every sample to write, in output order, from image headers alone (no decoding)."""
    align = math.lcm(*scales)
    sizes = []
    for pair in pairs:
        if pair.hr is None:
            raise DataError(f"{pair.name}: no HR image (test split?); shards need HR images")
        missing = [s for s in scales if s not in pair.lr]
        if missing:
            raise DataError(f"{pair.name}: no LR image for scale(s) {missing}")
        sizes.append(image_size(pair.hr))
    plan: list[_Planned] = []
    for w0 in range(0, len(pairs), mix):
        window: list[_Planned] = []
        for i in range(w0, min(w0 + mix, len(pairs))):
            h, w = sizes[i]
            name = pairs[i].name
            if h < align or w < align:
                raise DataError(
                    f"{pairs[i].hr}: image {w}x{h} smaller than the scales' lcm {align}"
                )
            if subimage is None:
                window.append(_Planned(name, i, 0, 0, h, w))
                continue
            for top, hh in _positions(h, subimage, step or subimage, align):
                for left, ww in _positions(w, subimage, step or subimage, align):
                    window.append(_Planned(f"{name}_{top:04d}_{left:04d}", i, top, left, hh, ww))
        order = np.random.default_rng([0x5AD, w0]).permutation(len(window))
        plan.extend(window[j] for j in order)
    keys = [p.key for p in plan]
    if len(set(keys)) != len(keys):
        raise DataError("duplicate image names among the pairs; sample keys must be unique")
    return plan


def _fingerprint(options: dict[str, Any], pairs: list[ImagePair], plan: list[_Planned]) -> str:
    payload = {
        "options": options,
        "pairs": [[p.name, sorted(p.lr)] for p in pairs],
        "plan": [dataclasses.astuple(p) for p in plan],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def source_files(pairs: list[ImagePair]) -> list[Path]:
    """Every file the shards of `pairs` are made from (HR, then LR by scale)."""
    return [p for pair in pairs for p in [pair.hr, *(pair.lr[s] for s in sorted(pair.lr))] if p is not None]


def source_fingerprint(pairs: list[ImagePair]) -> str:
    """SHA-256 over the source files' paths, sizes and modification times: cheap (no reading),
    and changed by an added, removed, replaced or re-saved file."""
    rows = []
    for path in source_files(pairs):
        st = path.stat()
        rows.append([str(path.resolve()), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def _encode(image: np.ndarray, encoding: str) -> bytes:
    image = np.ascontiguousarray(image)
    if encoding == "npy":
        buf = io.BytesIO()
        np.save(buf, image, allow_pickle=False)
        return buf.getvalue()
    # Level 1: PNG is only for smaller shards; decode speed, not size, matters for a loader.
    return encode_png(image, compress_level=1)


def encode_sample(
    key: str,
    hr: np.ndarray,
    lrs: dict[int, np.ndarray],
    meta: dict[str, Any],
    encoding: str = "npy",
) -> dict[str, Any]:
    """A WebDataset sample dict (bytes per member) for one HR crop and its LR crops."""
    sample: dict[str, Any] = {"__key__": key, f"hr.{encoding}": _encode(hr, encoding)}
    for s, lr in sorted(lrs.items()):
        sample[f"lr{s}.{encoding}"] = _encode(lr, encoding)
    sample["json"] = json.dumps(meta, sort_keys=True).encode()
    return sample


def _cut(
    item: _Planned, pair: ImagePair, images: dict[str, np.ndarray], track: str, scales, encoding
) -> dict[str, Any]:
    hr_full = images["hr"]
    hr = hr_full[item.top : item.top + item.height, item.left : item.left + item.width]
    lrs = {}
    for s in scales:
        lr_full = images[s]
        want = (hr_full.shape[0] // s, hr_full.shape[1] // s)
        if lr_full.shape[:2] != want:
            raise DataError(
                f"{pair.lr[s]}: LR size {lr_full.shape[1]}x{lr_full.shape[0]} is not HR size "
                f"{hr_full.shape[1]}x{hr_full.shape[0]} // {s}"
            )
        lrs[s] = lr_full[
            item.top // s : (item.top + item.height) // s,
            item.left // s : (item.left + item.width) // s,
        ]
    meta = {
        "name": pair.name,
        "track": track,
        "scales": list(scales),
        "crop": [item.top, item.left],
        "hr_size": [hr.shape[0], hr.shape[1]],
        "lr_sizes": {str(s): [lrs[s].shape[0], lrs[s].shape[1]] for s in scales},
        "source_size": [hr_full.shape[0], hr_full.shape[1]],
    }
    return encode_sample(item.key, hr, lrs, meta, encoding)


def _read_images(pair: ImagePair, scales) -> dict:
    try:
        images: dict = {"hr": read_image(pair.hr)}
        for s in scales:
            images[s] = read_image(pair.lr[s])
    except ImageError as e:
        raise DataError(str(e)) from None
    return images


class _ShardSink:
    """Writes samples into numbered shards, each atomically; calls `on_done(info)` per shard."""

    def __init__(self, out_dir: Path, first_index: int, max_bytes: int, on_done):
        from webdataset import TarWriter

        self._TarWriter = TarWriter
        self.out_dir = out_dir
        self.index = first_index
        self.max_bytes = max_bytes
        self.on_done = on_done
        self._ctx = None
        self._file = None
        self._writer = None
        self._size = 0
        self._keys: list[str] = []

    def write(self, sample: dict[str, Any]) -> None:
        size = sum(len(v) + 512 for k, v in sample.items() if not k.startswith("__"))
        if self._writer is not None and self._size + size > self.max_bytes:
            self.finish()
        if self._writer is None:
            self._open()
        self._writer.write(sample)
        self._size += size
        self._keys.append(sample["__key__"])

    def _open(self) -> None:
        self._ctx = atomic_path(self.out_dir / SHARD_PATTERN.format(self.index))
        tmp = self._ctx.__enter__()
        self._file = open(tmp, "wb")
        self._writer = self._TarWriter(
            self._file, encoder=False, mtime=_TAR_MTIME, user="ntire", group="ntire", mode=0o644
        )
        self._size = 0
        self._keys = []

    def finish(self) -> None:
        """Close the open shard, rename it into place and report it."""
        if self._writer is None:
            return
        self._writer.close()
        self._file.close()
        tmp = Path(self._file.name)
        sha256 = sha256_file(tmp)
        size = tmp.stat().st_size
        ctx, self._ctx, self._writer = self._ctx, None, None
        ctx.__exit__(None, None, None)
        name = SHARD_PATTERN.format(self.index)
        keys = self._keys
        self.on_done(ShardInfo(name, len(keys), size, sha256, keys[0], keys[-1]))
        self.index += 1

    def abort(self) -> None:
        """Drop the open shard's temporary file."""
        if self._writer is None:
            return
        try:
            self._writer.close()  # lets tarfile finish cleanly; the temporary file is dropped
            self._file.close()
        finally:
            ctx, self._ctx, self._writer = self._ctx, None, None
            ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)


def write_shards(
    pairs: Iterable[ImagePair],
    out_dir: str | os.PathLike,
    *,
    track: str,
    scales: tuple[int, ...],
    shard_max_bytes: int = DEFAULT_SHARD_MAX_BYTES,
    subimage: int | None = None,
    step: int | None = None,
    encoding: str = "npy",
    mix: int = 16,
    resume: bool = True,
    replace_stale: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = print,
    lock_wait: bool = False,
) -> ShardManifest:
    """Write `pairs` as WebDataset shards `out_dir/shard-NNNNNN.tar` plus `out_dir/manifest.json`.

    Args:
        pairs: source images, each with an HR file and LR files for all `scales`.
        out_dir: shard folder (created).
        track: degradation track of the LR images, recorded in metadata.
        scales: LR scales stored in each sample.
        shard_max_bytes: a new shard starts before a sample that would take the current one over
            this size (a single larger sample gets a shard of its own).
        subimage: cut HR images into sub-images of this size (a multiple of lcm(scales)), or
            None to store whole images.
        step: distance between sub-image origins (a multiple of lcm(scales)); default `subimage`.
        encoding: "npy" (raw uint8, fast to decode; default) or "png" (about half the bytes).
        mix: shuffle the samples of this many consecutive images together (seeded).
        resume: keep finished shards recorded in an existing manifest for the same input and
            options (checked: a shard whose size or time changed must match its sha256, and is
            rewritten otherwise); with False, start over.
        replace_stale: a folder holding shards of other source files or options (a cache whose
            data changed) is rebuilt, saying why, rather than refused.
        progress: show a tqdm progress bar.
        say: where the reasons for rebuilding go.
        lock_wait: when another process is writing into `out_dir` (it holds the folder's lock,
            ntire.locks), wait for it rather than refuse (a shard cache shared by runs).

    Returns the final ShardManifest. Raises DataError for bad input or, unless `replace_stale`, a
    folder holding shards of other input (with resume=True).
    """
    pairs = list(pairs)
    scales = tuple(int(s) for s in scales)
    out_dir = Path(out_dir)
    if not pairs:
        raise DataError("no image pairs to write")
    if encoding not in ENCODINGS:
        raise DataError(f"unknown encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
    if not scales or any(s < 1 for s in scales):
        raise DataError(f"scales must be positive integers, got {scales}")
    align = math.lcm(*scales)
    if step is not None and subimage is None:
        raise DataError("step needs subimage")
    for opt, value in (("subimage", subimage), ("step", step)):
        if value is not None and (value <= 0 or value % align):
            raise DataError(
                f"{opt} {value} must be a positive multiple of {align} (lcm of scales {scales}) "
                "so that LR crops stay pixel-aligned"
            )
    if mix < 1:
        raise DataError(f"mix must be at least 1, got {mix}")

    # One writer per folder (a second is refused naming the first, or with `lock_wait` waits for
    # it): two writers would delete each other's shards as debris.
    with hold_folder(out_dir, "ntire shard writing", wait=lock_wait, say=say):
        return _write(pairs, out_dir, track=track, scales=scales, shard_max_bytes=shard_max_bytes,
                      subimage=subimage, step=step, encoding=encoding, mix=mix, resume=resume,
                      replace_stale=replace_stale, progress=progress, say=say)


def _write(pairs: list[ImagePair], out_dir: Path, *, track: str, scales: tuple[int, ...], shard_max_bytes: int,
           subimage: int | None, step: int | None, encoding: str, mix: int, resume: bool, replace_stale: bool,
           progress: bool, say: Callable[[str], None]) -> ShardManifest:
    from tqdm import tqdm

    plan = _plan(pairs, scales, subimage, step, mix)
    options = dict(track=track, scales=list(scales), encoding=encoding, subimage=subimage,
                   step=step, shard_max_bytes=int(shard_max_bytes), mix=mix)
    fingerprint = _fingerprint(options, pairs, plan)
    manifest = ShardManifest(track=track, scales=scales, encoding=encoding, subimage=subimage,
                             step=step, shard_max_bytes=int(shard_max_bytes), mix=mix,
                             plan_sha256=fingerprint, total_samples=len(plan),
                             source_sha256=source_fingerprint(pairs), source_files=len(source_files(pairs)))

    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".shard-*.tmp"):  # left by a killed run; never a finished shard
        stale.unlink()
    remove_stale_temp_files(out_dir, [MANIFEST_NAME, VERIFIED_NAME])  # killed mid-way through an atomic write
    manifest_path = out_dir / MANIFEST_NAME
    old: ShardManifest | None = None
    if manifest_path.exists():
        try:
            old = read_manifest(manifest_path)
        except DataError as e:
            if not replace_stale:
                raise
            say(f"{e}; rebuilding the shard cache")
            old = None
        stale = old is not None and _stale_reason(old, manifest)
        if resume and stale and not replace_stale:
            raise DataError(
                f"{out_dir}: holds shards of other input or options ({stale}); choose another folder "
                "or start over (resume=False / --overwrite)"
            )
        if stale:
            say(f"{out_dir}: {stale}; rebuilding the shard cache")
        if resume and old is not None and not stale:
            manifest.shards = _still_valid(out_dir, old.shards, say)
        elif old is not None:
            for s in old.shards:
                (out_dir / s.name).unlink(missing_ok=True)
    done = sum(s.samples for s in manifest.shards)
    if done == len(plan):
        manifest.complete = True
        if old is None or old.to_dict() != manifest.to_dict():  # a reused cache is left untouched
            save_manifest(manifest_path, manifest)
        return manifest
    finished = {s.name for s in manifest.shards}
    for leftover in out_dir.glob("shard-*.tar"):  # unrecorded or invalid: rewritten below
        if leftover.name not in finished:
            leftover.unlink()

    def on_done(info: ShardInfo) -> None:
        manifest.shards.append(info)
        save_manifest(manifest_path, manifest)

    sink = _ShardSink(out_dir, len(manifest.shards), int(shard_max_bytes), on_done)
    bar = tqdm(total=len(plan), initial=done, unit="sample", desc=f"shards {out_dir.name}",
               disable=not progress)
    cache: dict[int, dict] = {}
    try:
        for position, item in enumerate(plan):
            if position < done:
                continue
            if item.pair not in cache:
                # Images of a mixing window are read once and kept until the window is written.
                if len(cache) >= mix:
                    cache.clear()
                cache[item.pair] = _read_images(pairs[item.pair], scales)
            sink.write(_cut(item, pairs[item.pair], cache[item.pair], track, scales, encoding))
            bar.update(1)
        sink.finish()
    except BaseException:
        sink.abort()
        raise
    finally:
        bar.close()
    manifest.complete = True
    save_manifest(manifest_path, manifest)
    return manifest


def _stale_reason(old: ShardManifest, new: ShardManifest) -> str | None:
    """Why shards recorded in `old` are not those `new` plans, in words; None if they are."""
    if old.source_sha256 != new.source_sha256:
        if old.source_files != new.source_files:
            return f"built from {old.source_files} source files, the source now has {new.source_files}"
        return "the source files changed since the shards were built (sizes or modification times)"
    if old.plan_sha256 != new.plan_sha256:
        return "built with other options or crops"
    return None


def _still_valid(out_dir: Path, shards: list[ShardInfo], say: Callable[[str], None]) -> list[ShardInfo]:
    """The leading recorded shards whose files are intact: present with the recorded size, and
    with the recorded sha256 unless this folder's VERIFIED_NAME says the file was hashed at its
    current size and time (hashing every shard of a big dataset at every start would cost
    minutes; `ntire data check` hashes them all)."""
    verified_path = out_dir / VERIFIED_NAME
    try:
        verified = json.loads(verified_path.read_text())
    except (OSError, ValueError):
        verified = {}
    kept, seen = [], {}
    for s in shards:
        path = out_dir / s.name
        if not path.is_file():
            say(f"{path}: missing; rewriting it and the shards after it")
            break
        st = path.stat()
        if st.st_size != s.bytes:
            say(f"{path}: {st.st_size} bytes, {s.bytes} recorded (truncated?); rewriting it and the shards after it")
            break
        stamp = [st.st_size, st.st_mtime_ns, s.sha256]
        if verified.get(s.name) != stamp and sha256_file(path) != s.sha256:
            say(f"{path}: sha256 differs from the manifest; rewriting it and the shards after it")
            break
        seen[s.name] = stamp
        kept.append(s)
    if seen != verified:
        try:
            atomic_write_text(verified_path, json.dumps(seen) + "\n")
        except WriteError:
            pass  # a read-only shard folder: the record only saves hashing again next time
    return kept


def verify_shards(shard_dir: str | os.PathLike) -> ShardManifest:
    """Check every shard of a folder against its manifest (presence, size, sha256)."""
    shard_dir = Path(shard_dir)
    manifest = read_manifest(shard_dir)
    if not manifest.complete:
        raise DataError(f"{shard_dir}: shard writing did not finish; run `ntire data shard` again")
    for s in manifest.shards:
        path = shard_dir / s.name
        if not path.is_file():
            raise DataError(f"{path}: shard missing")
        if sha256_file(path) != s.sha256:
            raise DataError(f"{path}: sha256 differs from the manifest; the shard is corrupt")
    return manifest


