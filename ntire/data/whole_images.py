"""Whole images for validation and the benchmark sets, read from the dataset folders (not from
shards): scoring needs every image entire, in a fixed order."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ntire.errors import DataError, ImageError


def validation_images(
    root: str | os.PathLike,
    *,
    track: str,
    scales: Iterable[int],
    split: str = "valid",
    indices: range | None = None,
) -> list[tuple[str, int, np.ndarray, np.ndarray | None]]:
    """Whole DIV2K images for scoring: (name, scale, LR, HR cropped to a multiple of scale).

    Ordered by scale, then name. HR is None for the test split. Raises DataError naming the file
    for a missing, unreadable or mis-sized image.
    """
    from ntire.data.layout import div2k_pairs

    scales = tuple(scales)
    pairs = div2k_pairs(root, split=split, track=track, scales=scales, indices=indices)
    return _whole_images(pairs, scales)


def benchmark_images(
    root: str | os.PathLike, set_name: str, scales: Iterable[int]
) -> list[tuple[str, int, np.ndarray, np.ndarray]]:
    """Whole images of a benchmark set (`benchmark/<Set>`), as validation_images."""
    from ntire.data.layout import benchmark_pairs

    scales = tuple(scales)
    return _whole_images(benchmark_pairs(root, set_name, scales), scales)


def _whole_images(pairs, scales) -> list[tuple[str, int, np.ndarray, np.ndarray | None]]:
    from ntire.data.degrade import crop_to_multiple
    from ntire.images import read_image

    def read(path: Path) -> np.ndarray:
        try:
            return read_image(path)
        except ImageError as e:
            raise DataError(str(e)) from None

    hrs = {p.name: None if p.hr is None else read(p.hr) for p in pairs}
    out = []
    for s in scales:
        for pair in pairs:
            lr = read(pair.lr[s])
            hr = hrs[pair.name]
            if hr is not None:
                hr = crop_to_multiple(hr, s)
                if lr.shape[:2] != (hr.shape[0] // s, hr.shape[1] // s):
                    raise DataError(
                        f"{pair.lr[s]}: LR size {lr.shape[1]}x{lr.shape[0]} is not HR size "
                        f"{hr.shape[1]}x{hr.shape[0]} // {s}"
                    )
            out.append((pair.name, s, lr, hr))
    return out
