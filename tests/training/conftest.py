"""Fixtures of the training tests: a tiny DIV2K-layout dataset of real photo crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def tiny_div2k(root: Path, *, size: int = 96, n_train: int = 3) -> Path:
    """A DIV2K-layout dataset of small crops of real photos (LR x2, x3, x4 by MATLAB bicubic)."""
    from skimage import data

    from ntire.data.degrade import bicubic_downscale
    from ntire.images import write_png

    photos = [data.coffee(), data.chelsea(), data.rocket(), data.astronaut()]
    div2k = root / "DIV2K"
    for i, photo in enumerate(photos[: n_train + 1]):
        split, name = ("valid", "0801") if i == n_train else ("train", f"{i + 1:04d}")
        top, left = (photo.shape[0] - size) // 2, (photo.shape[1] - size) // 2
        hr = np.ascontiguousarray(photo[top : top + size, left : left + size, :3])
        write_png(div2k / f"DIV2K_{split}_HR" / f"{name}.png", hr)
        for s in (2, 3, 4):
            write_png(div2k / f"DIV2K_{split}_LR_bicubic" / f"X{s}" / f"{name}x{s}.png", bicubic_downscale(hr, s))
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Three training crops and one validation crop (96 px), LR at x2, x3 and x4."""
    return tiny_div2k(tmp_path_factory.mktemp("data") / "tiny")
