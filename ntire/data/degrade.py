"""Degradation: HR -> LR for the two NTIRE 2017 tracks.

Bicubic track
    DIV2K's LR images are MATLAB's ``imresize(hr, 1/scale)`` at its defaults, applied to HR
    cropped to a multiple of the scale. `imresize` below follows MATLAB's algorithm step by step:

    * kernel: Keys' cubic convolution with a = -0.5 and width 4 (`cubic_kernel`);
    * when shrinking (scale < 1) it antialiases: the kernel becomes ``scale * k(scale * x)``
      with width ``4 / scale`` (8 taps at x1/2, 12 at x1/3, 16 at x1/4);
    * output pixel x (1-based) samples the input at ``u = x / scale + 0.5 * (1 - 1 / scale)``,
      so pixel centres line up: 0-based output i sits at input ``(i + 0.5) / scale - 0.5``;
    * taps ``floor(u - width / 2) + 0 .. ceil(width) + 1``, weights normalised per output pixel;
    * taps beyond the border are mirrored with the edge pixel repeated (MATLAB's
      ``aux = [1:n, n:-1:1]``, numpy's "symmetric" padding: -1 -> 0, -2 -> 1). This is what
      MathWorks' current resize code does and what the 2017-era ports that reproduced DIV2K-style
      data do. Releases up to at least 2013 clamped instead (replicate the edge pixel; the
      printed MATLAB outputs quoted in the tests show it); ``padding="replicate"`` reproduces
      those. The two differ only within 2 * scale pixels (shrinking) or 2 pixels (enlarging)
      of the border;
    * given only a scale, the output size is ``ceil(scale * input size)``;
    * the dimension with the smaller scale factor is resized first (MATLAB's
      ``[~, order] = sort(scale)``, a stable sort), so for equal factors rows (height) go first,
      then columns;
    * MATLAB keeps the intermediate result in the input's class: for uint8 input the first pass is
      rounded (half away from zero) and saturated to 0-255 before the second pass. `imresize`
      does the same for integer input and leaves the final pass unrounded (float64);
      `round_to_uint8` of it is MATLAB's uint8 result.

Unknown track
    The operators behind DIV2K's ``LR_unknown`` images were never published. Train and validate
    on the real track with DIV2K's own ``LR_unknown`` pairs. For users who only have HR images,
    `unknown_downscale` is a documented, deterministic stand-in, NOT the NTIRE operator: HR (cropped
    to a multiple of the scale) is blurred with a fixed anisotropic Gaussian and sampled at the
    centre of every scale x scale block (the same pixel-centre alignment as the bicubic track, so
    the stand-in adds blur but no shift). The Gaussian's constants are `UNKNOWN_BLUR`:

    =====  ==================  ==================  =====================
    scale  sigma, major axis   sigma, minor axis   major-axis angle
    =====  ==================  ==================  =====================
    x2     1.2 HR pixels       0.8 HR pixels       30 degrees
    x3     1.8 HR pixels       1.2 HR pixels       30 degrees
    x4     2.4 HR pixels       1.6 HR pixels       30 degrees
    =====  ==================  ==================  =====================

    The angle is measured from the width (x) axis towards the height (y, downwards) axis. The
    kernel spans the scale x scale block plus ``ceil(3 * sigma_major)`` pixels on each side, is
    normalised to sum to 1, and the image is mirrored ("symmetric") beyond its borders.
"""

from __future__ import annotations

import math

import numpy as np

from ntire.data.challenge import TRACKS
from ntire.errors import ConfigError, ImageError

CUBIC_A = -0.5
"""The cubic convolution coefficient MATLAB's imresize uses."""

KERNEL_WIDTH = 4.0
"""Support of the unscaled cubic kernel, in input pixels."""

PADDINGS = ("symmetric", "replicate")

UNKNOWN_BLUR: dict[int, tuple[float, float, float]] = {
    2: (1.2, 0.8, 30.0),
    3: (1.8, 1.2, 30.0),
    4: (2.4, 1.6, 30.0),
}
"""Stand-in unknown-track blur per scale: (sigma major, sigma minor, angle in degrees)."""


def cubic_kernel(x: np.ndarray | float) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's 'bicubic'), zero beyond |x| = 2."""
    a = CUBIC_A
    ax = np.abs(np.asarray(x, dtype=np.float64))
    ax2 = ax * ax
    ax3 = ax2 * ax
    inner = (a + 2) * ax3 - (a + 3) * ax2 + 1
    outer = a * ax3 - 5 * a * ax2 + 8 * a * ax - 4 * a
    return np.where(ax <= 1, inner, np.where(ax <= 2, outer, 0.0))


def resize_weights(
    in_length: int, out_length: int, scale: float, padding: str = "symmetric"
) -> tuple[np.ndarray, np.ndarray]:
    """Weights and 0-based input indices of every output pixel along one dimension.

    Returns ``(weights, indices)``, both of shape (out_length, taps): output pixel k is
    ``sum_p weights[k, p] * input[indices[k, p]]``. Taps whose weight is zero for every output
    pixel are dropped, as MATLAB drops them.
    """
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    if in_length < 1 or out_length < 1:
        raise ValueError(f"lengths must be positive, got {in_length} -> {out_length}")
    if scale < 1:
        width = KERNEL_WIDTH / scale

        def kernel(t):
            return scale * cubic_kernel(scale * t)

    else:
        width = KERNEL_WIDTH
        kernel = cubic_kernel
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = int(math.ceil(width)) + 2
    one_based = left[:, None] + np.arange(taps, dtype=np.float64)
    weights = kernel(u[:, None] - one_based)
    weights = weights / weights.sum(axis=1, keepdims=True)
    indices = one_based.astype(np.int64) - 1
    if padding == "symmetric":
        period = 2 * in_length
        folded = np.mod(indices, period)
        indices = np.where(folded < in_length, folded, period - 1 - folded)
    else:
        indices = np.clip(indices, 0, in_length - 1)
    keep = np.any(weights != 0, axis=0)
    return weights[:, keep], indices[:, keep]


def _tap_matrix(weights: np.ndarray, indices: np.ndarray, n_in: int, inner: int = 1):
    """Sparse (out * inner, n_in * inner) matrix applying the taps to `inner` interleaved signals.

    Entries are stored in tap order and duplicates (mirrored taps hitting the same pixel) are not
    merged, so a product accumulates w0 * x0 + w1 * x1 + ... from zero, in the same order as
    MATLAB's imresizemex.
    """
    import scipy.sparse

    n_out, taps = weights.shape
    data = np.repeat(weights[:, None, :], inner, axis=1).reshape(-1)
    columns = (indices[:, None, :] * inner + np.arange(inner)[None, :, None]).reshape(-1)
    indptr = np.arange(0, n_out * inner * taps + 1, taps)
    return scipy.sparse.csr_matrix((data, columns, indptr), shape=(n_out * inner, n_in * inner))


def _resize_axis(x: np.ndarray, axis: int, weights: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Resize float64 `x` (H, W, ...) along axis 0 or 1 with the given taps."""
    n_in, n_out = x.shape[axis], weights.shape[0]
    if axis == 0:
        flat = x.reshape(n_in, -1)
        return (_tap_matrix(weights, indices, n_in) @ flat).reshape((n_out,) + x.shape[1:])
    rest = x.shape[2:]
    inner = int(np.prod(rest, dtype=np.int64))
    flat = x.reshape(x.shape[0], n_in * inner)
    out = (_tap_matrix(weights, indices, n_in, inner) @ flat.T).T
    return np.ascontiguousarray(out).reshape((x.shape[0], n_out) + rest)


def round_to_uint8(x: np.ndarray) -> np.ndarray:
    """Round half away from zero and saturate to 0-255, as MATLAB's ``uint8(x)`` does."""
    return np.floor(np.clip(x, 0, 255) + 0.5).astype(np.uint8)


def _round_to_class(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    x = np.clip(x, info.min, info.max)
    return np.trunc(x + np.copysign(0.5, x))


def imresize(
    image: np.ndarray,
    scale: float | None = None,
    output_shape: tuple[int, int] | None = None,
    *,
    padding: str = "symmetric",
) -> np.ndarray:
    """MATLAB's ``imresize`` with its defaults (bicubic, a = -0.5, antialiasing when shrinking).

    Args:
        image: (H, W) or (H, W, C) array, integer (e.g. uint8) or float. Only H and W are resized.
        scale: factor applied to both H and W. Alone, it gives an output of
            ``ceil(scale * H) x ceil(scale * W)``.
        output_shape: (rows, cols) of the output. Alone, the factors are rows / H and cols / W.
            With `scale` as well (MATLAB's 'Scale' plus 'OutputSize'), `scale` sets the kernel and
            sample positions and `output_shape` the size.
        padding: "symmetric" (current MATLAB, the default) or "replicate" (MATLAB up to ~2013).

    Returns:
        float64 array, unrounded. For integer input the intermediate pass is rounded and saturated
        to the input's type, as in MATLAB (see the module docstring), so
        ``round_to_uint8(imresize(uint8_image, ...))`` is MATLAB's uint8 result.
    """
    arr = np.asarray(image)
    if arr.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {arr.shape}")
    integer = np.issubdtype(arr.dtype, np.integer)
    if not (integer or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"expected an integer or float image, got {arr.dtype}")
    in_shape = arr.shape[:2]
    if min(in_shape) < 1:
        raise ValueError(f"cannot resize an empty image of shape {arr.shape}")
    if scale is None and output_shape is None:
        raise ValueError("give a scale, an output_shape or both")
    if scale is not None:
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        scales = (float(scale), float(scale))
    if output_shape is None:
        out_shape = tuple(int(math.ceil(s * n)) for s, n in zip(scales, in_shape))
    else:
        out_shape = tuple(int(n) for n in output_shape)
        if len(out_shape) != 2 or min(out_shape) < 1:
            raise ValueError(f"output_shape must be two positive sizes, got {output_shape}")
        if scale is None:
            scales = (out_shape[0] / in_shape[0], out_shape[1] / in_shape[1])
    order = [0, 1] if scales[0] <= scales[1] else [1, 0]

    x = arr.astype(np.float64)
    for step, axis in enumerate(order):
        weights, indices = resize_weights(in_shape[axis], out_shape[axis], scales[axis], padding)
        x = _resize_axis(x, axis, weights, indices)
        if step == 0 and integer:
            x = _round_to_class(x, arr.dtype)
    return x


def _check_scale(scale: int) -> int:
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ConfigError(f"scale must be a positive integer, got {scale!r}")
    return int(scale)


def _check_uint8(image: np.ndarray, what: str) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ImageError(
            f"{what} must be an (H, W, 3) uint8 image, got {image.dtype} of shape {image.shape}"
        )
    return image


def crop_to_multiple(image: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom rows and right columns so H and W are multiples of `scale` (a view)."""
    scale = _check_scale(scale)
    h, w = image.shape[:2]
    return image[: h - h % scale, : w - w % scale]


def _cropped_hr(hr: np.ndarray, scale: int) -> np.ndarray:
    hr = _check_uint8(hr, "HR image")
    scale = _check_scale(scale)
    h, w = hr.shape[:2]
    if h < scale or w < scale:
        raise ImageError(f"HR image of {h}x{w} pixels is smaller than the scale x{scale}")
    return crop_to_multiple(hr, scale)


def bicubic_downscale(hr: np.ndarray, scale: int) -> np.ndarray:
    """The bicubic track's LR image: MATLAB ``imresize(crop(hr), 1/scale)`` as uint8.

    Output shape is exactly (H // scale, W // scale) (plus the channel axis).
    """
    hr = _cropped_hr(hr, scale)
    h, w = hr.shape[:2]
    lr = imresize(hr, scale=1 / scale, output_shape=(h // scale, w // scale))
    return round_to_uint8(lr)


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB ``imresize(lr, scale)`` as uint8: the bicubic baseline SR image."""
    lr = _check_uint8(lr, "LR image")
    scale = _check_scale(scale)
    h, w = lr.shape[:2]
    return round_to_uint8(imresize(lr, scale=scale, output_shape=(h * scale, w * scale)))


def unknown_kernel(scale: int) -> np.ndarray:
    """The stand-in unknown-track blur for `scale`: a 2-D kernel summing to 1 (see module doc).

    Its size is ``scale + 2 * ceil(3 * sigma_major)`` and its centre is the centre of the
    scale x scale block of HR pixels an LR pixel covers (between pixels for even scales).
    """
    scale = _check_scale(scale)
    if scale not in UNKNOWN_BLUR:
        raise ConfigError(
            f"scale x{scale} has no unknown-track stand-in kernel; choose one of "
            + ", ".join(f"x{s}" for s in sorted(UNKNOWN_BLUR))
        )
    sigma_major, sigma_minor, angle = UNKNOWN_BLUR[scale]
    radius = int(math.ceil(3 * sigma_major))
    size = scale + 2 * radius
    t = np.arange(size, dtype=np.float64) - (size - 1) / 2
    ty, tx = np.meshgrid(t, t, indexing="ij")
    theta = math.radians(angle)
    along = tx * math.cos(theta) + ty * math.sin(theta)
    across = -tx * math.sin(theta) + ty * math.cos(theta)
    kernel = np.exp(-0.5 * ((along / sigma_major) ** 2 + (across / sigma_minor) ** 2))
    return kernel / kernel.sum()


def unknown_downscale(hr: np.ndarray, scale: int) -> np.ndarray:
    """The stand-in unknown-track LR image (NOT the unpublished NTIRE operator; see module doc).

    Blur with `unknown_kernel(scale)` evaluated only at the LR sample positions; output shape is
    exactly (H // scale, W // scale) (plus the channel axis), uint8.
    """
    hr = _cropped_hr(hr, scale)
    kernel = unknown_kernel(scale)
    size = kernel.shape[0]
    margin = (size - scale) // 2
    h, w = hr.shape[0] // scale, hr.shape[1] // scale
    pad = [(margin, margin), (margin, margin)] + [(0, 0)] * (hr.ndim - 2)
    padded = np.pad(hr.astype(np.float64), pad, mode="symmetric")
    inner = int(np.prod(hr.shape[2:], dtype=np.int64))
    width = padded.shape[1]
    # LR pixel (i, j) reads padded rows scale * i + ky and columns scale * j + kx. For each kernel
    # row ky, the column taps of all LR pixels form one sparse matrix (the kernel is not
    # separable, so the rows are summed one by one).
    columns = scale * np.arange(w)[:, None] + np.arange(size)[None, :]
    out = np.zeros((h, w * inner), dtype=np.float64)
    for ky in range(size):
        taps = np.broadcast_to(kernel[ky], (w, size))
        rows = padded[ky : ky + scale * h : scale].reshape(h, width * inner)
        out += (_tap_matrix(taps, columns, width, inner) @ rows.T).T
    out = out.reshape((h, w) + hr.shape[2:])
    return round_to_uint8(out)


def degrade(hr: np.ndarray, scale: int, track: str) -> np.ndarray:
    """LR image of `hr` for `track` ("bicubic" or "unknown") at `scale`, uint8."""
    if track == "bicubic":
        return bicubic_downscale(hr, scale)
    if track == "unknown":
        return unknown_downscale(hr, scale)
    raise ConfigError(f"unknown track {track!r} (option track): choose one of {', '.join(TRACKS)}")
