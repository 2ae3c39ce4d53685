"""Reading and writing 8-bit RGB images, and moving them to and from tensors.

Everything in ntire works on 8-bit RGB in the 0-255 range (the paper's rgb_range 255). Inputs of
other kinds are converted where that loses nothing a score depends on (greyscale, palette, opaque
alpha) and refused with a message naming the file otherwise (transparency; more than 8 bits
per channel, grey or colour alike, since any conversion would be a guess at a tone mapping).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ntire.errors import ImageError
from ntire.files import atomic_write_bytes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

_SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


MAX_PIXELS_ENV = "NTIRE_MAX_PIXELS"
"""Environment variable: the most pixels (width x height) an image may have to be decoded, e.g.
`NTIRE_MAX_PIXELS=500M`; default DEFAULT_MAX_PIXELS."""

DEFAULT_MAX_PIXELS = 2**28
"""268 MP (16384 x 16384): far above any DIV2K or benchmark image (at most 2K x 2K, x4 SR outputs
included), and 0.8 GB as 8-bit RGB; a header claiming more is refused before any decoding."""


def max_pixels() -> int:
    """The pixel limit in force: $NTIRE_MAX_PIXELS (digits, optionally with a k, M or G suffix),
    else DEFAULT_MAX_PIXELS. ConfigError naming the variable if it is not a positive count."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    factor = {"k": 10**3, "m": 10**6, "g": 10**9}.get(text[-1].lower(), 1)
    digits = text[:-1] if factor != 1 else text
    try:
        value = int(float(digits) * factor)
    except ValueError:
        value = 0
    if value <= 0:
        from ntire.errors import ConfigError

        raise ConfigError(f"{MAX_PIXELS_ENV}={text!r}: not a pixel count (e.g. 300000000 or 300M)")
    return value


@contextlib.contextmanager
def open_image(source: str | os.PathLike | bytes, name: str | None = None) -> Iterator[Image.Image]:
    """Pillow's `Image.open` of a file or of encoded bytes, refused (ImageError naming `name` and
    the size) when the header claims more pixels than `max_pixels()`: checked before any pixel is
    decoded. This replaces Pillow's own check (a raw warning over 89 MP, a traceback over 179 MP)."""
    name = name or str(source if not isinstance(source, bytes) else "<bytes>")
    limit = max_pixels()
    pillow_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # ours is the limit; a process-wide setting, restored below
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            width, height = im.size
            if width * height > limit:
                raise ImageError(
                    f"{name}: {width}x{height} pixels ({width * height / 1e6:.0f} MP), over the limit of "
                    f"{limit / 1e6:.0f} MP; if the image is genuine, raise it with {MAX_PIXELS_ENV}"
                )
            yield im
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to an (H, W, 3) uint8 array; `name` labels errors."""
    try:
        with open_image(data, name) as im:
            deep = _sixteen_bit_rawmode(im)  # only visible before load(): Pillow then drops bits
            im.load()
            if deep:
                raise ImageError(_too_deep(name, f"{deep} (16 bits per channel)"))
            return _to_rgb_array(im, name)
    except UnidentifiedImageError:
        # Pillow's message names its BytesIO object, not the file.
        raise ImageError(f"{name}: cannot decode image (not an image format Pillow reads)") from None
    except (OSError, SyntaxError) as e:
        raise ImageError(f"{name}: cannot decode image ({e})") from None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an (H, W, 3) uint8 RGB array.

    Raises ImageError naming the file if it is missing, unreadable, 16-bit or transparent.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(f"{path}: cannot read ({e.strerror or e})") from None
    return decode_image(data, str(path))


def _sixteen_bit_rawmode(im: Image.Image) -> str | None:
    """The raw mode of a 16-bit colour image (e.g. `RGB;16B`), which Pillow opens as 8-bit `RGB`
    and silently truncates; None for anything else."""
    for tile in getattr(im, "tile", None) or ():
        args = tile[3] if len(tile) > 3 else None
        raw = args[0] if isinstance(args, tuple) and args else args
        if isinstance(raw, str) and ";16" in raw:
            return raw
    return None


def _too_deep(name: str, what: str) -> str:
    # One rule for grey and colour alike: refuse rather than guess a tone mapping.
    return (
        f"{name}: {what} image with more than 8 bits per channel; ntire trains and scores 8-bit RGB, "
        "convert it first (scale to 0-255 and save as 8-bit PNG, e.g. `convert IN.png -depth 8 OUT.png`)"
    )


def _to_rgb_array(im: Image.Image, name: str) -> np.ndarray:
    mode = im.mode
    if mode in _SIXTEEN_BIT_MODES or (mode.startswith("I;16")) or mode in ("RGB;16", "RGBA;16"):
        raise ImageError(_too_deep(name, mode))
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"))
        if (rgba[..., 3] != 255).any():
            raise ImageError(
                f"{name}: image has transparent pixels; flatten it onto a background first"
            )
        return np.ascontiguousarray(rgba[..., :3])
    if mode != "RGB":
        # Greyscale, palette, CMYK, YCbCr: converting to RGB is lossless for scoring purposes.
        im = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


def encode_png(image: np.ndarray, compress_level: int = 6) -> bytes:
    """Encode an (H, W, 3) uint8 array as PNG bytes."""
    _check_uint8_rgb(image)
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def write_png(path: str | os.PathLike, image: np.ndarray, compress_level: int = 6) -> None:
    """Write an (H, W, 3) uint8 array as a PNG file, atomically."""
    atomic_write_bytes(path, encode_png(image, compress_level))


def _check_uint8_rgb(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {image.dtype} {image.shape}")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"{folder}: not a folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def plan_outputs(src: Path, dst: Path, out_name: Callable[[Path], str]) -> list[tuple[Path, Path]]:
    """(input, output) pairs for a command that maps image files to PNGs: SRC a file (DST a
    `.png` path or an existing folder) or a folder of images (DST a folder); `out_name(input)`
    names each output. Refuses, naming the paths, any plan that would overwrite an input or write
    two inputs to one output."""
    src, dst = Path(src), Path(dst)
    if src.is_dir():
        if dst.exists() and not dst.is_dir():
            raise ImageError(f"{dst}: SRC {src} is a folder, so DST must be a folder")
        if dst.resolve() == src.resolve():
            raise ImageError(f"{dst}: DST is the input folder; writing there would overwrite inputs, pick another")
        files = list_images(src)
        if not files:
            raise ImageError(f"{src}: no images found in this folder")
        jobs = [(f, dst / out_name(f)) for f in files]
        by_output: dict[Path, Path] = {}
        for f, out in jobs:
            if out in by_output:
                raise ImageError(f"{by_output[out]} and {f} would both be written to {out}")
            by_output[out] = f
        return jobs
    if not src.is_file():
        raise ImageError(f"{src}: no such file or folder")
    out = dst / out_name(src) if dst.is_dir() else dst
    if out.suffix.lower() != ".png":
        raise ImageError(f"{dst}: output is written as PNG; name it *.png or give an existing folder")
    if out.resolve() == src.resolve():
        raise ImageError(f"{out}: would overwrite the input; pick another DST")
    return [(src, out)]


def image_to_tensor(image: np.ndarray):
    """(H, W, 3) uint8 array -> (1, 3, H, W) float32 tensor in [0, 255]."""
    import torch

    _check_uint8_rgb(image)
    # Decoded images can be read-only views; torch.from_numpy would warn on those.
    src = image if image.flags.writeable else image.copy()
    return torch.from_numpy(np.ascontiguousarray(src)).permute(2, 0, 1).unsqueeze(0).float()


def tensor_to_image(tensor) -> np.ndarray:
    """(1, 3, H, W) or (3, H, W) float tensor in [0, 255] -> (H, W, 3) uint8, rounded and clipped."""
    import torch

    t = tensor.detach()
    if t.ndim == 4:
        if t.shape[0] != 1:
            raise ValueError(f"expected a batch of one image, got shape {tuple(t.shape)}")
        t = t[0]
    # Rounded, narrowed and laid out as HWC where the tensor is (a GPU's copy is a quarter of the
    # float bytes, and the CPU is left no strided copy to make while the device waits).
    t = t.float().round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()
    return t.cpu().numpy()
