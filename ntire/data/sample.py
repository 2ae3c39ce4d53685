"""A small, deterministic dataset in exactly the DIV2K and benchmark layouts, built offline from the
photographs that ship inside scikit-image. It is the default data of the demo and of the tests.

    out/DIV2K/DIV2K_train_HR/0001.png ... 0008.png
    out/DIV2K/DIV2K_train_LR_{bicubic,unknown}/X{2,3,4}/0001x2.png ...
    out/DIV2K/DIV2K_valid_HR/0801.png, 0802.png   (+ LR as above; photos not used for training)
    out/DIV2K/DIV2K_test_LR_{bicubic,unknown}/X{2,3,4}/0901x2.png, 0902x2.png   (no HR, as DIV2K)
    out/benchmark/Sample5/HR/<name>.png, LR_bicubic/X{2,3,4}/<name>x{s}.png
    out/README.txt   where the photos come from

LR images come from ntire.data.degrade (MATLAB-exact bicubic; the unknown-track stand-in), made
from HR cropped to a multiple of the scale, as DIV2K's were.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ntire.data.challenge import SCALES
from ntire.files import atomic_write_text
from ntire.images import write_png

SAMPLE_SCALES = SCALES
BENCHMARK_SET = "Sample5"
_MARKER = ".ntire-sample-complete"
_VERSION = "1"  # bump when the content changes, so an old build is rebuilt rather than reused


@dataclass(frozen=True)
class _Photo:
    name: str
    loader: str  # function name in skimage.data
    source: str
    crop: tuple[int, int] | None = None  # central crop (height, width), to keep the set small
    index: int = 0  # which image when the loader returns several


# Train, valid, test and benchmark photos are disjoint except that the benchmark set reuses the
# two valid photos (both are evaluation-only); no evaluation photo is ever trained on.
_TRAIN = (
    _Photo("0001", "coffee", "a cup of coffee (Rachel Michetti, CC0)"),
    _Photo("0002", "rocket", "DSCOVR launch on Falcon 9 (SpaceX, public domain)"),
    _Photo("0003", "stereo_motorcycle", "motorcycle, left view (Middlebury stereo 2014)", index=0),
    _Photo("0004", "stereo_motorcycle", "motorcycle, right view (Middlebury stereo 2014)", index=1),
    _Photo("0005", "hubble_deep_field", "Hubble eXtreme Deep Field (NASA, public domain)",
           (512, 640)),
    _Photo("0006", "immunohistochemistry",
           "IHC-stained colonic glands (CMMI, no known copyright restrictions)"),
    _Photo("0007", "retina", "human retina fundus photograph (M. Haggstrom, CC0)", (640, 640)),
    _Photo("0008", "brick", "brick wall texture, greyscale (CC0Textures, CC0)"),
)
_VALID = (
    _Photo("0801", "astronaut", "astronaut Eileen Collins (NASA, public domain)"),
    _Photo("0802", "chelsea", "Chelsea the cat (Stefan van der Walt, CC0)"),
)
_TEST = (
    _Photo("0901", "grass", "grass, greyscale (CC0)"),
    _Photo("0902", "gravel", "gravel texture, greyscale (CC0Textures, CC0)"),
)
_BENCHMARK = (
    _Photo("astronaut", "astronaut", "astronaut Eileen Collins (NASA, public domain)"),
    _Photo("camera", "camera", "camera photographer, greyscale (Lav Varshney, CC0)"),
    _Photo("chelsea", "chelsea", "Chelsea the cat (Stefan van der Walt, CC0)"),
    _Photo("coins", "coins",
           "Greek coins from Pompeii, greyscale (Brooklyn Museum, no known restrictions)"),
    _Photo("moon", "moon", "surface of the moon, greyscale"),
)


def _load(photo: _Photo) -> np.ndarray:
    from skimage import data

    image = getattr(data, photo.loader)()
    if isinstance(image, tuple):
        image = image[photo.index]
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    image = np.ascontiguousarray(image[..., :3], dtype=np.uint8)
    if photo.crop is not None:
        h, w = photo.crop
        top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
        image = np.ascontiguousarray(image[top : top + h, left : left + w])
    return image


def _write(path: Path, image: np.ndarray) -> None:
    # Fast compression: the set is rebuilt by tests, and PNG level 6 triples its build time for
    # files only ~15% smaller.
    write_png(path, image, compress_level=1)


def is_complete(out: str | os.PathLike) -> bool:
    """True if `out` holds a finished sample dataset of the current version."""
    marker = Path(out) / _MARKER
    return marker.is_file() and marker.read_text().strip() == _VERSION


def build_sample_dataset(out: str | os.PathLike, *, force: bool = False) -> Path:
    """Build the sample dataset under `out` and return `out`.

    Deterministic: two builds are byte-identical. Idempotent: a finished build (marked by a
    completion file written last) is left alone unless `force`. Every file is written atomically,
    so an interrupted build leaves only whole files and is simply redone next time.
    """
    from ntire.data.degrade import bicubic_downscale, unknown_downscale

    out = Path(out)
    if is_complete(out) and not force:
        return out
    marker = out / _MARKER
    if marker.exists():
        marker.unlink()
    div2k = out / "DIV2K"
    tracks: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
        "bicubic": bicubic_downscale,
        "unknown": unknown_downscale,
    }
    made: dict[tuple, np.ndarray] = {}  # the valid photos reappear in the benchmark set

    def lr_of(photo: _Photo, hr: np.ndarray, track: str, s: int) -> np.ndarray:
        key = (photo.loader, photo.index, photo.crop, track, s)
        if key not in made:
            made[key] = tracks[track](hr, s)
        return made[key]

    for split, photos in (("train", _TRAIN), ("valid", _VALID), ("test", _TEST)):
        for photo in photos:
            hr = _load(photo)
            if split != "test":
                _write(div2k / f"DIV2K_{split}_HR" / f"{photo.name}.png", hr)
            for track in tracks:
                for s in SAMPLE_SCALES:
                    lr_dir = div2k / f"DIV2K_{split}_LR_{track}" / f"X{s}"
                    _write(lr_dir / f"{photo.name}x{s}.png", lr_of(photo, hr, track, s))
    bench = out / "benchmark" / BENCHMARK_SET
    for photo in _BENCHMARK:
        hr = _load(photo)
        _write(bench / "HR" / f"{photo.name}.png", hr)
        for s in SAMPLE_SCALES:
            lr = lr_of(photo, hr, "bicubic", s)
            _write(bench / "LR_bicubic" / f"X{s}" / f"{photo.name}x{s}.png", lr)
    atomic_write_text(out / "README.txt", _readme())
    atomic_write_text(marker, _VERSION + "\n")
    return out


def remove_sample_dataset(out: str | os.PathLike) -> None:
    """Delete a sample dataset built by build_sample_dataset (only the folders it creates)."""
    out = Path(out)
    for name in ("DIV2K", "benchmark", "README.txt", _MARKER):
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _readme() -> str:
    def rows(photos: tuple[_Photo, ...]) -> str:
        lines = []
        for p in photos:
            pick = f"[{p.index}]" if p.loader == "stereo_motorcycle" else ""
            how = f"skimage.data.{p.loader}(){pick}"
            crop = f", central {p.crop[1]}x{p.crop[0]} crop" if p.crop else ""
            lines.append(f"  {p.name:<10} {how}{crop}: {p.source}")
        return "\n".join(lines)

    return f"""ntire sample dataset (version {_VERSION})

A small stand-in for DIV2K, in exactly its folder layout, built offline by `ntire data sample`
from photographs bundled with scikit-image. Greyscale photos are replicated to three channels.
The authoritative source and licence of each photo is in the docstring of the scikit-image
function named below (e.g. `help(skimage.data.astronaut)`).

LR images: DIV2K_*_LR_bicubic is MATLAB-style bicubic downscaling (antialiased, a = -0.5) of the
HR image cropped to a multiple of the scale, as DIV2K's track 1. DIV2K_*_LR_unknown is ntire's
documented stand-in for DIV2K's undisclosed track-2 degradation (see ntire/data/degrade.py), not
the real track 2.

DIV2K/DIV2K_train_HR (training photos):
{rows(_TRAIN)}

DIV2K/DIV2K_valid_HR (held out, never trained on):
{rows(_VALID)}

DIV2K/DIV2K_test_LR_* (LR only, as DIV2K's test split):
{rows(_TEST)}

benchmark/{BENCHMARK_SET} (benchmark layout; bicubic LR only):
{rows(_BENCHMARK)}
"""
