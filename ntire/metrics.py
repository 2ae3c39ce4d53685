"""PSNR and SSIM as the super-resolution literature scores them, under two protocols.

`benchmark` (Set5, Set14, B100, Urban100): the Y channel of MATLAB's `rgb2ycbcr` (ITU-R BT.601),
`scale` pixels ignored at each border. `div2k` (DIV2K validation, NTIRE 2017): RGB, `scale + 6`
pixels ignored at each border. Both take 8-bit SR output, as the challenge scored PNG files.

Conventions, each chosen to match the MATLAB evaluation scripts the papers' numbers come from:

- Y is computed from the image converted to double first (`rgb2ycbcr(im2double(im))`), so it is
  NOT rounded to an integer. MATLAB's `rgb2ycbcr` on a uint8 image would return rounded uint8 Y;
  the SR evaluation scripts (RCAN/EDSR-era `Evaluate_PSNR_SSIM.m`, and the Python ports in
  EDSR-PyTorch and BasicSR) all convert to double first, and we follow them.
- PSNR: 10 log10(255^2 / MSE), the MSE taken over every shaved pixel (and every channel under
  `div2k`, one MSE over all three, not a mean of three PSNRs). Identical images give MSE 0 and
  PSNR `inf`, as MATLAB's division does; nothing is capped.
- SSIM: Wang et al.'s `ssim_index`: an 11x11 Gaussian window (sigma 1.5, normalised to sum 1),
  K1 = 0.01, K2 = 0.03, L = 255, local statistics by 'valid' filtering (no padding, so the map is
  10 pixels smaller than the shaved image in each dimension), population (weighted, not sample)
  variances, and the mean of the SSIM map. Under `div2k` it is computed on each RGB channel and
  the three results averaged (as in the common `Cal_PSNRSSIM.m`).
- A folder's mean is the arithmetic mean of the per-image values (not the PSNR of a pooled MSE).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from ntire.errors import DataError
from ntire.images import list_images, read_image

PROTOCOLS = ("benchmark", "div2k")

# MATLAB rgb2ycbcr's luma row (BT.601, "studio swing" 16-235) for RGB in [0, 1], output on 0-255.
_Y_WEIGHTS = np.array([65.481, 128.553, 24.966])
_Y_OFFSET = 16.0

_SSIM_SIZE = 11
_SSIM_SIGMA = 1.5
_SSIM_C1 = (0.01 * 255) ** 2
_SSIM_C2 = (0.03 * 255) ** 2


def _gaussian_1d() -> np.ndarray:
    # fspecial('gaussian', 11, 1.5) is separable: the outer product of this normalised 1-D kernel
    # with itself (its eps-thresholding removes nothing at this size and sigma).
    x = np.arange(_SSIM_SIZE) - (_SSIM_SIZE - 1) / 2
    g = np.exp(-(x**2) / (2 * _SSIM_SIGMA**2))
    return g / g.sum()


_GAUSS = _gaussian_1d()


@dataclass
class Score:
    """PSNR and SSIM of one SR image against its HR image."""

    psnr: float
    """Peak signal-to-noise ratio in dB (inf for identical images)."""
    ssim: float
    """Mean structural similarity, at most 1."""


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """Y of MATLAB's `rgb2ycbcr` for an (H, W, 3) RGB image on the 0-255 scale, as float64.

    Y = 16 + (65.481 r + 128.553 g + 24.966 b) / 255 for r, g, b in 0-255 (i.e. 16 + 65.481 R
    + ... for R in [0, 1]): white -> 235, black -> 16. Not rounded (see the module docstring).
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {image.shape}")
    return _Y_OFFSET + image.astype(np.float64) @ (_Y_WEIGHTS / 255.0)


def shave_for(scale: int, protocol: str) -> int:
    """Pixels ignored at each border: `scale` for `benchmark`, `scale + 6` for `div2k`."""
    _check_protocol(protocol)
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    return int(scale) + (6 if protocol == "div2k" else 0)


def psnr(sr: np.ndarray, hr: np.ndarray, *, scale: int, protocol: str) -> float:
    """PSNR in dB of 8-bit SR against HR under `protocol` (Y or RGB, border shaved).

    Both are (H, W, 3) uint8 arrays of the same shape. Returns inf if the shaved images are equal.
    """
    return _psnr(*_prepare(sr, hr, scale, protocol, min_size=1))


def ssim(sr: np.ndarray, hr: np.ndarray, *, scale: int, protocol: str) -> float:
    """SSIM of 8-bit SR against HR under `protocol`, as MATLAB's `ssim_index` computes it.

    Both are (H, W, 3) uint8 arrays of the same shape; the shaved image must be at least 11x11.
    Under `div2k` the result is the mean of the three channels' SSIM.
    """
    return _ssim(*_prepare(sr, hr, scale, protocol, min_size=_SSIM_SIZE))


def score(sr: np.ndarray, hr: np.ndarray, *, scale: int, protocol: str) -> Score:
    """PSNR and SSIM of SR against HR under `protocol` (the images are prepared once)."""
    a, b = _prepare(sr, hr, scale, protocol, min_size=_SSIM_SIZE)
    return Score(psnr=_psnr(a, b), ssim=_ssim(a, b))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0**2 / mse)


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    # Each channel's map has the same size, so the mean over all is the mean of channel means.
    return float(_ssim_map(a, b).mean())


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")


def _prepare(
    sr: np.ndarray, hr: np.ndarray, scale: int, protocol: str, min_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes, shave the border and convert to float64 Y (H, W) or RGB (H, W, 3)."""
    shave = shave_for(scale, protocol)
    for name, image in (("sr", sr), ("hr", hr)):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"{name}: expected an (H, W, 3) uint8 array (SR output is rounded to 8 bits "
                f"before scoring), got {image.dtype} {image.shape}"
            )
    if sr.shape != hr.shape:
        raise ValueError(f"sr shape {sr.shape} differs from hr shape {hr.shape}")
    h, w = hr.shape[:2]
    if h - 2 * shave < min_size or w - 2 * shave < min_size:
        raise ValueError(
            f"image {h}x{w} is too small to score: {shave} border pixels are ignored on each "
            f"side under protocol {protocol!r} at scale {scale}, leaving less than "
            f"{min_size}x{min_size}"
        )
    sr = sr[shave : h - shave, shave : w - shave]
    hr = hr[shave : h - shave, shave : w - shave]
    if protocol == "benchmark":
        return rgb_to_y(sr), rgb_to_y(hr)
    return sr.astype(np.float64), hr.astype(np.float64)


def _valid_filter(x: np.ndarray) -> np.ndarray:
    """MATLAB filter2(gaussian, x, 'valid') over the last two axes (H, W)."""
    r = _SSIM_SIZE // 2
    # Filter the full array (the border mode only affects the r-pixel rim), then keep the part
    # whose window lies entirely inside the image: exactly the 'valid' output.
    y = ndimage.correlate1d(x, _GAUSS, axis=-2, mode="constant")[..., r:-r, :]
    return ndimage.correlate1d(y, _GAUSS, axis=-1, mode="constant")[..., r:-r]


def _ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Wang et al.'s SSIM map of two float64 images (H, W) or (H, W, C), 'valid' size."""
    if a.ndim == 3:
        # One channel at a time keeps the temporaries small; channels are independent.
        return np.stack([_ssim_map(a[..., c], b[..., c]) for c in range(a.shape[2])], axis=-1)
    # Contiguous rows filter about twice as fast as strided ones.
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    mu_a = _valid_filter(a)
    mu_b = _valid_filter(b)
    # The formula needs var_a + var_b only, and filtering is linear: one filter instead of two.
    second = a * a
    second += b * b
    sq_sum = _valid_filter(second)  # E[a^2] + E[b^2]
    second = a * b
    num2 = _valid_filter(second)  # E[ab]
    # In-place arithmetic: these maps are large, and fresh temporaries cost more than the math.
    num1 = mu_a * mu_b
    num2 -= num1  # covariance
    num2 *= 2
    num2 += _SSIM_C2
    num1 *= 2
    num1 += _SSIM_C1
    num1 *= num2  # (2 mu_a mu_b + C1)(2 cov + C2)
    mu_a *= mu_a
    mu_b *= mu_b
    mu_a += mu_b  # mu_a^2 + mu_b^2
    sq_sum -= mu_a  # var_a + var_b
    sq_sum += _SSIM_C2
    mu_a += _SSIM_C1
    mu_a *= sq_sum  # (mu_a^2 + mu_b^2 + C1)(var_a + var_b + C2)
    num1 /= mu_a
    return num1


# ---------------------------------------------------------------------------------------------
# Folders


def _sr_stems(hr_stem: str, scale: int) -> tuple[str, ...]:
    # The three ways SR files are named in practice: like the HR file, like the LR input
    # (DIV2K's `0801x2`), and EDSR-PyTorch's saved results (`0801_x2_SR`).
    return (hr_stem, f"{hr_stem}x{scale}", f"{hr_stem}_x{scale}_SR")


def match_sr_to_hr(
    sr_dir: str | os.PathLike, hr_dir: str | os.PathLike, scale: int, *, ignore_unmatched: bool = False
) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """Pair every HR image in `hr_dir` with its SR image in `sr_dir`: ((sr_path, hr_path) pairs,
    SR files that match no HR file).

    An SR file matches HR `0801.png` if its stem is `0801`, `0801x{scale}` or `0801_x{scale}_SR`
    (any image suffix). Raises DataError if a folder is missing or `hr_dir` holds no images, if an
    HR image has no SR file (naming the file it looked for), if a match is ambiguous (naming the
    candidates), or if an SR file has no HR partner, unless `ignore_unmatched` (a score over fewer
    images than were made would otherwise pass unnoticed).
    """
    sr_dir, hr_dir = Path(sr_dir), Path(hr_dir)
    for name, folder in (("SR", sr_dir), ("HR", hr_dir)):
        if not folder.is_dir():
            raise DataError(f"{folder}: {name} folder not found")
    hr_files = list_images(hr_dir)
    if not hr_files:
        raise DataError(f"{hr_dir}: no images in the HR folder")
    by_stem: dict[str, list[Path]] = {}
    for p in list_images(sr_dir):
        by_stem.setdefault(p.stem, []).append(p)

    pairs: list[tuple[Path, Path]] = []
    claimed: dict[Path, Path] = {}
    for hr_path in hr_files:
        candidates = [p for stem in _sr_stems(hr_path.stem, scale) for p in by_stem.get(stem, [])]
        if not candidates:
            forms = ", ".join(f"{s}.png" for s in _sr_stems(hr_path.stem, scale))
            raise DataError(
                f"{hr_path}: no SR image for it in {sr_dir} (looked for {forms}, any image suffix)"
            )
        if len(candidates) > 1:
            names = ", ".join(p.name for p in candidates)
            raise DataError(
                f"{hr_path}: ambiguous, several SR images match it in {sr_dir}: {names}"
            )
        sr_path = candidates[0]
        if sr_path in claimed:
            raise DataError(
                f"{sr_path}: ambiguous, it matches both HR images {claimed[sr_path].name} "
                f"and {hr_path.name}"
            )
        claimed[sr_path] = hr_path
        pairs.append((sr_path, hr_path))
    unmatched = sorted(p for paths in by_stem.values() for p in paths if p not in claimed)
    if unmatched and not ignore_unmatched:
        names = ", ".join(p.name for p in unmatched[:5]) + (", ..." if len(unmatched) > 5 else "")
        raise DataError(
            f"{sr_dir}: {len(unmatched)} SR image(s) without an HR partner in {hr_dir}: {names} "
            "(--ignore-unmatched scores the matched ones and counts the rest)"
        )
    return pairs, unmatched


def evaluate_folders(
    sr_dir: str | os.PathLike,
    hr_dir: str | os.PathLike,
    *,
    scale: int,
    protocol: str,
    progress: bool = False,
    ignore_unmatched: bool = False,
) -> dict:
    """Score every HR image in `hr_dir` against its SR image in `sr_dir` (see match_sr_to_hr).

    Returns `{"per_image": {hr_stem: {"psnr": f, "ssim": f}}, "mean": {"psnr": f, "ssim": f},
    "unmatched_sr": [file names]}`, per_image in HR file-name order, means the arithmetic mean
    over images; `unmatched_sr` is empty unless `ignore_unmatched` let SR files without an HR
    partner through.

    Sizes: the SR image must equal the HR size, or be smaller by less than `scale` in each
    dimension - SR is `scale` times the LR size, and LR was made from HR cropped to a multiple of
    the scale (DIV2K HR sizes are not always multiples), so HR is then cropped to the SR size
    keeping the top-left corner, as MATLAB's `modcrop` does. Any other size is a DataError
    naming the SR file and both sizes. `progress` shows a progress bar on stderr.
    """
    shave_for(scale, protocol)  # bad options fail before any file is read
    pairs, unmatched = match_sr_to_hr(sr_dir, hr_dir, scale, ignore_unmatched=ignore_unmatched)
    per_image: dict[str, dict[str, float]] = {}
    for sr_path, hr_path in tqdm(
        pairs, desc="evaluate", unit="image", leave=False, disable=not progress
    ):
        sr, hr = read_image(sr_path), read_image(hr_path)
        s = score_sr(sr, hr, scale=scale, protocol=protocol, name=str(sr_path), hr_name=f"HR {hr_path.name}")
        per_image[hr_path.stem] = {"psnr": s.psnr, "ssim": s.ssim}
    n = len(per_image)
    mean = {
        "psnr": sum(v["psnr"] for v in per_image.values()) / n,
        "ssim": sum(v["ssim"] for v in per_image.values()) / n,
    }
    return {"per_image": per_image, "mean": mean, "unmatched_sr": [p.name for p in unmatched]}


def score_sr(sr: np.ndarray, hr: np.ndarray, *, scale: int, protocol: str, name: str = "SR image",
             hr_name: str = "HR") -> Score:
    """Score `sr` against `hr`, first cropping HR to the SR size as MATLAB's `modcrop` does.

    SR is `scale` times the LR size, and LR was made from HR cropped to a multiple of the scale,
    so SR may be smaller than HR by less than `scale` pixels in each dimension; any other size is
    a DataError naming `name`, `hr_name` and both sizes.
    """
    (h, w), (hh, hw) = sr.shape[:2], hr.shape[:2]
    if not (0 <= hh - h < scale and 0 <= hw - w < scale):
        raise DataError(
            f"{name}: SR image is {w}x{h} (WxH) but {hr_name} is {hw}x{hh}; at scale "
            f"{scale} it must equal the HR size, or be smaller by less than {scale} pixels in each "
            "dimension (HR not cropped to a multiple of the scale)"
        )
    try:
        return score(sr, hr[:h, :w], scale=scale, protocol=protocol)
    except ValueError as e:
        raise DataError(f"{name}: {e}") from None
