"""One training sample out of a shard: its HR and LR members checked from their headers (sizes,
scales, patch fit) when it is read, and decoded only when a patch is cut from it. Raw uint8 .npy
members decode without a copy (a view on the member's bytes); PNG through ntire.images.

Errors name the shard and the sample's key (DataError), so `skip_bad_samples` can count them and
a failing run says which file to fix.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ntire.errors import DataError, ImageError

_NPY_UINT8_HEADER = re.compile(
    rb"\{'descr': '\|u1', 'fortran_order': False, 'shape': \((\d+), (\d+), (\d+)\), \}"
)


def _npy_header(data: bytes) -> tuple[tuple[int, ...], np.dtype, int]:
    # Fast path for what np.save writes for (H, W, C) uint8; numpy's parser (ast-based) otherwise.
    if data[:8] == b"\x93NUMPY\x01\x00":
        length = int.from_bytes(data[8:10], "little")
        m = _NPY_UINT8_HEADER.match(data, 10, 10 + length)
        if m:
            return tuple(int(g) for g in m.groups()), np.dtype(np.uint8), 10 + length
    f = io.BytesIO(data)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    if fortran:
        raise ValueError("Fortran-ordered array")
    return shape, dtype, f.tell()


def _image_shape(data: bytes, ext: str) -> tuple[int, ...]:
    if ext == "npy":
        return _npy_header(data)[0]
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return (im.size[1], im.size[0], 3)


def _decode(data: bytes, ext: str) -> np.ndarray:
    if ext == "npy":
        shape, dtype, offset = _npy_header(data)
        if dtype != np.uint8 or len(shape) != 3 or shape[2] != 3:
            raise ValueError(f"expected (H, W, 3) uint8, got {dtype} {shape}")
        # A read-only view on the member's bytes: patches are copied out, the image never is.
        return np.frombuffer(data, np.uint8, count=math.prod(shape), offset=offset).reshape(shape)
    from ntire.images import decode_image

    return decode_image(data)


class DecodedSample:
    """One sample's HR and LR images, checked on creation from headers and decoded on demand."""

    def __init__(self, raw: dict[str, Any], scales: Sequence[int], patch_size: int):
        self.key = raw["__key__"]
        self.url = raw["__url__"]
        self._cache: dict[str, np.ndarray] = {}
        self._members: dict[str, tuple[str, bytes]] = {}
        for name in ["hr"] + [f"lr{s}" for s in scales]:
            found = [(e, raw[f"{name}.{e}"]) for e in ("npy", "png") if f"{name}.{e}" in raw]
            if not found:
                what = "HR image" if name == "hr" else f"LR image for scale x{name[2:]}"
                raise self.error(f"no {what} (member {name}.npy or {name}.png)")
            self._members[name] = found[0]
        shapes = {}
        for name, (ext, data) in self._members.items():
            try:
                shapes[name] = _image_shape(data, ext)
            except Exception as e:
                raise self.error(f"corrupt member {name}.{ext} ({e})") from None
        hr_h, hr_w = shapes["hr"][:2]
        for s in scales:
            lr_h, lr_w = shapes[f"lr{s}"][:2]
            if (lr_h, lr_w) != (hr_h // s, hr_w // s):
                raise self.error(
                    f"size mismatch: LR x{s} is {lr_w}x{lr_h}, HR {hr_w}x{hr_h} // {s} is "
                    f"{hr_w // s}x{hr_h // s}"
                )
            if lr_h < patch_size or lr_w < patch_size:
                raise self.error(
                    f"LR x{s} of {lr_w}x{lr_h} is smaller than the {patch_size} px patch"
                )

    def error(self, what: str) -> DataError:
        return DataError(f"{self.url}: sample {self.key}: {what}")

    def image(self, name: str) -> np.ndarray:
        """The decoded image "hr" or "lr{s}" (raises DataError naming shard and key)."""
        if name not in self._cache:
            ext, data = self._members[name]
            try:
                self._cache[name] = _decode(data, ext)
            except (ValueError, OSError, ImageError) as e:
                raise self.error(f"corrupt member {name}.{ext} ({e})") from None
        return self._cache[name]


__all__ = ["DecodedSample"]
