"""The DIV2K and benchmark folder layouts, as they are published, turned into lists of image pairs.

DIV2K:    DIV2K_{train,valid}_HR/0801.png, DIV2K_{split}_LR_{track}/X{s}/0801x{s}.png,
          DIV2K_test_LR_{track}/X{s}/0901x{s}.png (the test split has no public HR).
benchmark: benchmark/<Set>/HR/<stem>.png, benchmark/<Set>/LR_bicubic/X{s}/<stem>x{s}.png.

`root` may be the folder holding `DIV2K/` (or `benchmark/`) or that folder itself, so the sample
dataset's top folder and a real DIV2K download both work unchanged. Every problem (a missing
folder or file, an unreadable image, an LR image whose size is not the HR size // scale after
DIV2K's crop-to-multiple) raises DataError naming the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import UnidentifiedImageError

from ntire.errors import DataError, ImageError

SPLITS = ("train", "valid", "test")

DEFAULT_INDICES: dict[str, range] = {
    "train": range(1, 801),
    "valid": range(801, 901),
    "test": range(901, 1001),
}
"""DIV2K's published numbering: 0001-0800 train, 0801-0900 valid, 0901-1000 test."""


@dataclass
class ImagePair:
    """One source image: its HR file (None where no HR is published) and its LR file per scale."""

    name: str
    """Image name without scale suffix or extension, e.g. "0801" or "baby"."""

    hr: Path | None
    """The high-resolution file; None for the DIV2K test split."""

    lr: dict[int, Path] = field(default_factory=dict)
    """Low-resolution file for each scale."""


def _check_scales(scales: tuple[int, ...]) -> tuple[int, ...]:
    scales = tuple(int(s) for s in scales)
    if not scales or any(s < 1 for s in scales) or len(set(scales)) != len(scales):
        raise DataError(f"scales must be distinct positive integers, got {scales}")
    return scales


def _require_dir(path: Path) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: folder not found")
    return path


def div2k_dir(root: str | os.PathLike) -> Path:
    """The folder holding DIV2K_*: `root/DIV2K` if it exists, else `root`."""
    root = Path(root)
    return root / "DIV2K" if (root / "DIV2K").is_dir() else root


def benchmark_dir(root: str | os.PathLike) -> Path:
    """The folder holding the benchmark sets: `root/benchmark` if it exists, else `root`."""
    root = Path(root)
    return root / "benchmark" if (root / "benchmark").is_dir() else root


def div2k_pairs(
    root: str | os.PathLike,
    *,
    split: str,
    track: str,
    scales: tuple[int, ...],
    indices: range | None = None,
    check: bool = True,
) -> list[ImagePair]:
    """The DIV2K images of `split` whose index lies in `indices` and which are present on disk.

    Args:
        root: DIV2K folder (holding DIV2K_train_HR, ...) or its parent.
        split: "train", "valid" or "test" (test: LR only, `hr` is None).
        track: LR degradation folder suffix, "bicubic" or "unknown".
        scales: LR scales wanted; every image must have all of them.
        indices: image numbers to take (default: the split's published range); numbers with no
            file are skipped, so a partial copy such as the sample dataset works.
        check: read each image's header and verify LR size == HR size // scale.

    Raises DataError naming the folder or file at fault, or if no image is found.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    scales = _check_scales(scales)
    base = div2k_dir(root)
    indices = DEFAULT_INDICES[split] if indices is None else indices
    lr_dirs = {s: _require_dir(base / f"DIV2K_{split}_LR_{track}" / f"X{s}") for s in scales}
    if split == "test":
        hr_dir = None
        listing = lr_dirs[scales[0]]
        present = {p.name[: -len(f"x{scales[0]}.png")] for p in listing.glob(f"*x{scales[0]}.png")}
    else:
        hr_dir = _require_dir(base / f"DIV2K_{split}_HR")
        listing = hr_dir
        present = {p.stem for p in hr_dir.glob("*.png")}
    names = [f"{i:04d}" for i in indices if f"{i:04d}" in present]
    if not names:
        raise DataError(
            f"{listing}: no images numbered {indices.start:04d}-{indices.stop - 1:04d}"
        )
    pairs = []
    for name in names:
        lr = {s: lr_dirs[s] / f"{name}x{s}.png" for s in scales}
        pair = ImagePair(name=name, hr=None if hr_dir is None else hr_dir / f"{name}.png", lr=lr)
        for path in lr.values():
            if not path.is_file():
                raise DataError(f"{path}: LR image missing (HR or other scales exist for {name})")
        if check:
            for s in scales:
                check_pair(pair, s)
        pairs.append(pair)
    return pairs


def benchmark_pairs(
    root: str | os.PathLike, set_name: str, scales: tuple[int, ...], *, check: bool = True
) -> list[ImagePair]:
    """The images of a benchmark set in the usual SR layout (`<Set>/HR`, `<Set>/LR_bicubic/X{s}`).

    Raises DataError naming the folder or file at fault, or if the set holds no image.
    """
    scales = _check_scales(scales)
    set_dir = _require_dir(benchmark_dir(root) / set_name)
    hr_dir = _require_dir(set_dir / "HR")
    lr_dirs = {s: _require_dir(set_dir / "LR_bicubic" / f"X{s}") for s in scales}
    hrs = sorted(hr_dir.glob("*.png"))
    if not hrs:
        raise DataError(f"{hr_dir}: no PNG images")
    pairs = []
    for hr in hrs:
        lr = {s: lr_dirs[s] / f"{hr.stem}x{s}.png" for s in scales}
        for path in lr.values():
            if not path.is_file():
                raise DataError(f"{path}: LR image missing for {hr}")
        pair = ImagePair(name=hr.stem, hr=hr, lr=lr)
        if check:
            for s in scales:
                check_pair(pair, s)
        pairs.append(pair)
    return pairs


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file from its header, without decoding the pixels."""
    from ntire.images import open_image

    try:
        with open_image(path) as im:
            width, height = im.size
    except ImageError as e:
        raise DataError(str(e)) from None
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"{path}: unreadable image ({e})") from None
    return height, width


def check_pair(pair: ImagePair, scale: int) -> None:
    """Verify that the pair's LR image at `scale` is HR // scale in both dimensions.

    DIV2K's LR images were made from HR cropped to a multiple of the scale, so an HR of 1356 rows
    has LR x3 of 452 rows and x4 of 339. Only headers are read. Raises DataError naming the file.
    """
    if scale not in pair.lr:
        raise DataError(f"{pair.name}: no LR image for scale x{scale}")
    lr_h, lr_w = image_size(pair.lr[scale])
    if pair.hr is None:
        return
    hr_h, hr_w = image_size(pair.hr)
    want = (hr_h // scale, hr_w // scale)
    if (lr_h, lr_w) != want:
        raise DataError(
            f"{pair.lr[scale]}: LR size {lr_w}x{lr_h} is not HR size {hr_w}x{hr_h} // {scale} = "
            f"{want[1]}x{want[0]} (HR {pair.hr})"
        )
