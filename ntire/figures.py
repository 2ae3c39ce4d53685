"""Comparison figures like the paper's: the HR image with a box drawn, then labelled crops.

Everything here is a pure function from arrays and labels to an (H, W, 3) uint8 RGB array,
drawn with Pillow's ImageDraw and its built-in scalable font (no font file needed). Training's
validation picture, `ntire compare` and `ntire benchmark`'s worst/best figures all come from
`comparison_figure`, so they choose boxes and score crops the same way:

- The box: unless one is given, the `size`-pixel square where the methods' outputs differ most
  from the bicubic baseline (the largest sum of |SR - bicubic| over the box, all channels, all
  methods), searched over every position inside the border the protocol ignores. It shows what
  the model changed, good or bad, rather than a region picked for flattering scores.
- A crop's PSNR/SSIM: `ntire.metrics.score` under the run's protocol (Y or RGB), applied to the
  box grown by the protocol's border (`scale`, or `scale + 6` for div2k) and clipped to the image,
  so that the pixels scored are exactly the box's pixels - less any part of the box inside the
  image's own ignored border. The same rule applied to the whole image gives its usual score,
  which each label also shows ("image ...").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ntire.errors import ConfigError
from ntire.metrics import Score, score, shave_for

BOX_COLOUR = (230, 20, 20)
"""The box drawn on the overview (the paper's red)."""

_TEXT = (20, 20, 20)
_MUTED = (95, 95, 95)
_BACKGROUND = (255, 255, 255)
_MIN_SCORED = 11
"""SSIM's window: the least side of a scored region."""


# --------------------------------------------------------------------------------------------
# Boxes


@dataclass(frozen=True)
class Box:
    """A rectangle in HR pixels: left `x`, top `y`, width `w`, height `h`."""

    x: int
    y: int
    w: int
    h: int

    @classmethod
    def parse(cls, text: str, option: str = "--box") -> Box:
        """`x,y,w,h` (integers, w and h positive); ConfigError naming `option` otherwise."""
        parts = [p.strip() for p in str(text).split(",")]
        try:
            x, y, w, h = (int(p) for p in parts)
        except ValueError:
            raise ConfigError(f"{option} {text}: expected x,y,w,h in HR pixels, e.g. 120,80,96,96") from None
        if x < 0 or y < 0 or w < 1 or h < 1:
            raise ConfigError(f"{option} {text}: x and y must be >= 0 and w, h >= 1")
        return cls(x, y, w, h)

    def crop(self, image: np.ndarray) -> np.ndarray:
        """The box's pixels of an (H, W, ...) array."""
        return image[self.y : self.y + self.h, self.x : self.x + self.w]

    def __str__(self) -> str:
        return f"{self.x},{self.y},{self.w},{self.h}"


def check_box(box: Box, shape: tuple[int, ...], *, scale: int, protocol: str, option: str = "--box") -> None:
    """ConfigError naming `option` unless `box` lies inside an image of `shape` and leaves at least
    11x11 scored pixels once the protocol's border is ignored."""
    h, w = shape[:2]
    if box.x + box.w > w or box.y + box.h > h:
        raise ConfigError(f"{option} {box}: outside the {w}x{h} (WxH) HR image")
    shave = shave_for(scale, protocol)
    top, bottom = max(box.y, shave), min(box.y + box.h, h - shave)
    left, right = max(box.x, shave), min(box.x + box.w, w - shave)
    if bottom - top < _MIN_SCORED or right - left < _MIN_SCORED:
        raise ConfigError(
            f"{option} {box}: leaves {max(right - left, 0)}x{max(bottom - top, 0)} scored pixels "
            f"(the {protocol} protocol ignores {shave} pixels at each image border at x{scale}); "
            f"a box needs at least {_MIN_SCORED}x{_MIN_SCORED}"
        )


def most_different_box(baseline: np.ndarray, others: Sequence[np.ndarray], size: int, *, margin: int = 0) -> Box:
    """The `size`-pixel square (smaller where the image is) where `others` differ most from
    `baseline` in sum of absolute differences, kept `margin` pixels from every border.

    Ties go to the top-most, then left-most position. `margin` shrinks to fit a small image.
    """
    h, w = baseline.shape[:2]
    margin = max(0, min(margin, (min(h, w) - 1) // 2))
    bh, bw = min(size, h - 2 * margin), min(size, w - 2 * margin)
    diff = np.zeros((h - 2 * margin, w - 2 * margin), dtype=np.float64)
    inner = (slice(margin, h - margin), slice(margin, w - margin))
    base = baseline[inner].astype(np.int16)
    for other in others:
        diff += np.abs(other[inner].astype(np.int16) - base).sum(axis=-1)
    # Sum over every bh x bw window at once, from the integral image.
    integral = np.zeros((diff.shape[0] + 1, diff.shape[1] + 1), dtype=np.float64)
    integral[1:, 1:] = diff.cumsum(0).cumsum(1)
    sums = integral[bh:, bw:] - integral[:-bh, bw:] - integral[bh:, :-bw] + integral[:-bh, :-bw]
    top, left = np.unravel_index(int(np.argmax(sums)), sums.shape)  # first maximum: top-most, left-most
    return Box(int(left) + margin, int(top) + margin, int(bw), int(bh))


def score_box(sr: np.ndarray, hr: np.ndarray, box: Box, *, scale: int, protocol: str) -> Score:
    """PSNR/SSIM of the box's pixels under `protocol` (see the module docstring): the box grown by
    the protocol's border and clipped to the image, scored with `ntire.metrics.score`."""
    h, w = hr.shape[:2]
    shave = shave_for(scale, protocol)
    window = Box(
        max(box.x - shave, 0),
        max(box.y - shave, 0),
        min(box.x + box.w + shave, w) - max(box.x - shave, 0),
        min(box.y + box.h + shave, h) - max(box.y - shave, 0),
    )
    return score(window.crop(sr), window.crop(hr), scale=scale, protocol=protocol)


# --------------------------------------------------------------------------------------------
# Labels


def model_label(name: str, *, scale: int | None = None, plus: bool = False) -> str:
    """`edsr-baseline` -> `EDSR-baseline` (the network's display name, then the rest of the
    ModelConfig.name), with `+` for self-ensemble and ` x2` for the scale."""
    # Imported here: the table of networks imports torch, which drawing a figure does not need.
    from ntire.models.networks import NETWORKS

    kind, _, rest = name.partition("-")
    base = NETWORKS[kind].display_name if kind in NETWORKS else kind.upper()
    base += f"-{rest}" if rest else ""
    return base + ("+" if plus else "") + (f" x{scale}" if scale is not None else "")


def score_text(s: Score) -> str:
    """`30.12 dB / 0.9012` (`inf dB` for identical pixels)."""
    psnr = "inf" if math.isinf(s.psnr) else f"{s.psnr:.2f}"
    return f"{psnr} dB / {s.ssim:.4f}"


def protocol_text(scale: int, protocol: str) -> str:
    """What the scores measure, e.g. `Y channel (BT.601), 2-px border ignored`."""
    space = "Y channel (BT.601)" if protocol == "benchmark" else "RGB"
    return f"{space}, {shave_for(scale, protocol)}-px border ignored ({protocol} protocol)"


# --------------------------------------------------------------------------------------------
# Drawing


@dataclass(frozen=True)
class Panel:
    """One crop with the lines printed under it (the first in the text colour, the rest muted)."""

    image: np.ndarray
    """(h, w, 3) uint8 crop, shown enlarged by an integer factor (nearest neighbour)."""
    lines: tuple[str, ...]


def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at `size` pixels (scalable with FreeType, else the fixed bitmap)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError):  # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


def _text_size(f, text: str) -> tuple[int, int]:
    left, top, right, bottom = f.getbbox(text)
    return right - left, bottom


def _zoomed(image: np.ndarray, tile: int) -> Image.Image:
    """Enlarge by the largest integer factor that keeps the longer side <= `tile` (pixels stay
    pixels); shrink with Lanczos when the crop is already larger than `tile`."""
    h, w = image.shape[:2]
    im = Image.fromarray(np.ascontiguousarray(image), "RGB")
    k = tile / max(h, w)
    if k >= 1:
        k = int(k)
        return im.resize((w * k, h * k), Image.Resampling.NEAREST) if k > 1 else im
    return im.resize((max(1, round(w * k)), max(1, round(h * k))), Image.Resampling.LANCZOS)


def draw_figure(
    overview: np.ndarray,
    box: Box,
    panels: Sequence[Panel],
    *,
    caption: Sequence[str] = (),
    title: str | None = None,
    footer: str | None = None,
    columns: int | None = None,
    tile: int = 192,
    font_size: int = 14,
    gap: int = 8,
) -> np.ndarray:
    """Overview (the whole HR image, resized to the height of the crop grid, `box` drawn on it,
    `caption` under it), then `panels` in a grid of `columns` (default: one row up to 4 panels,
    else two rows), each crop enlarged to about `tile` pixels with its lines centred under it.
    `title` goes above everything, `footer` below. Returns an (H, W, 3) uint8 RGB array."""
    if not panels:
        raise ValueError("a figure needs at least one panel")
    big, small = font(font_size), font(max(8, font_size - 2))
    line_h = _text_size(big, "Ag")[1] + 4
    pad = 6
    crops = [_zoomed(p.image, tile) for p in panels]
    n = len(panels)
    columns = columns or (n if n <= 4 else math.ceil(n / 2))
    rows = math.ceil(n / columns)
    label_h = max(len(p.lines) for p in panels) * line_h + pad
    text_w = max(_text_size(big if i == 0 else small, t)[0] for p in panels for i, t in enumerate(p.lines))
    cell_w = max(max(c.width for c in crops), text_w + 2 * pad)
    cell_h = max(c.height for c in crops) + label_h
    grid_w = columns * cell_w + (columns - 1) * gap
    grid_h = rows * cell_h + (rows - 1) * gap

    # The overview fills the grid's height less its caption's.
    hh, hw = overview.shape[:2]
    caption_h = len(caption) * line_h + pad
    view_h = max(16, grid_h - caption_h)
    factor = view_h / hh
    view_w = max(1, round(hw * factor))
    resample = Image.Resampling.LANCZOS if factor < 1 else Image.Resampling.NEAREST
    view = Image.fromarray(np.ascontiguousarray(overview), "RGB").resize((view_w, view_h), resample)
    view_cell_w = max(view_w, max((_text_size(small, t)[0] for t in caption), default=0) + 2 * pad)

    title_h = line_h + pad if title else 0
    footer_h = line_h + pad if footer else 0
    width = gap + view_cell_w + 2 * gap + grid_w + gap
    footer_w = _text_size(small, footer)[0] + 2 * gap if footer else 0
    title_w = _text_size(big, title)[0] + 2 * gap if title else 0
    width = max(width, footer_w, title_w)
    height = gap + title_h + max(grid_h, view_h + caption_h) + footer_h + gap
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    top = gap + title_h
    if title:
        draw.text((gap, gap), title, fill=_TEXT, font=big)

    # Overview with the box (the box's outline drawn just outside its pixels).
    vx = gap + (view_cell_w - view_w) // 2
    canvas.paste(view, (vx, top))
    thick = max(2, round(view_h / 160))
    x0, y0 = vx + box.x * factor, top + box.y * factor
    x1, y1 = vx + (box.x + box.w) * factor, top + (box.y + box.h) * factor
    draw.rectangle([x0 - thick, y0 - thick, x1 + thick - 1, y1 + thick - 1], outline=BOX_COLOUR, width=thick)
    for i, text in enumerate(caption):
        tw = _text_size(small, text)[0]
        draw.text((gap + (view_cell_w - tw) // 2, top + view_h + pad // 2 + i * line_h), text, fill=_MUTED, font=small)

    # The crops, each with its label.
    gx = gap + view_cell_w + 2 * gap
    for k, (panel, crop) in enumerate(zip(panels, crops, strict=True)):
        r, c = divmod(k, columns)
        cx, cy = gx + c * (cell_w + gap), top + r * (cell_h + gap)
        canvas.paste(crop, (cx + (cell_w - crop.width) // 2, cy))
        for i, text in enumerate(panel.lines):
            f = big if i == 0 else small
            tw = _text_size(f, text)[0]
            draw.text((cx + (cell_w - tw) // 2, cy + crop.height + pad // 2 + i * line_h), text,
                      fill=_TEXT if i == 0 else _MUTED, font=f)
    if footer:
        draw.text((gap, height - gap - line_h), footer, fill=_MUTED, font=small)
    return np.asarray(canvas, dtype=np.uint8).copy()


def comparison_panels(
    hr: np.ndarray,
    bicubic: np.ndarray,
    methods: Sequence[tuple[str, np.ndarray]],
    box: Box,
    *,
    scale: int,
    protocol: str,
    hr_first: bool = True,
) -> list[Panel]:
    """The crops of `comparison_figure`: HR (labelled `HR`, `(PSNR / SSIM)`), then `Bicubic` and
    each method, labelled `box <PSNR> dB / <SSIM>` and `image <PSNR> dB / <SSIM>`; HR last unless
    `hr_first`. ConfigError (`check_box`) if the box does not fit the image."""
    check_box(box, hr.shape, scale=scale, protocol=protocol)

    def scored(label: str, image: np.ndarray) -> Panel:
        crop_score = score_box(image, hr, box, scale=scale, protocol=protocol)
        whole = score(image, hr, scale=scale, protocol=protocol)
        return Panel(box.crop(image), (label, f"box {score_text(crop_score)}", f"image {score_text(whole)}"))

    reference = Panel(box.crop(hr), ("HR", "(PSNR / SSIM)"))
    panels = [scored("Bicubic", bicubic)] + [scored(label, image) for label, image in methods]
    return [reference, *panels] if hr_first else [*panels, reference]


def comparison_figure(
    hr: np.ndarray,
    bicubic: np.ndarray,
    methods: Sequence[tuple[str, np.ndarray]],
    *,
    scale: int,
    protocol: str,
    box: Box | None = None,
    box_size: int = 96,
    name: str | None = None,
    hr_first: bool = True,
    title: str | None = None,
    columns: int | None = None,
    tile: int = 192,
    font_size: int = 14,
) -> tuple[np.ndarray, Box]:
    """The paper-style figure of `hr` against its `bicubic` upscaling and each (label, SR image)
    of `methods` (all the HR size): overview with the box, then the HR crop (first, or last unless
    `hr_first`), the bicubic crop and each method's, labelled with the box's PSNR/SSIM and the
    whole image's. `box` defaults to `most_different_box` (see the module docstring).
    Returns (figure, box)."""
    shave = shave_for(scale, protocol)
    for label, image in [("bicubic", bicubic), *methods]:
        if image.shape != hr.shape:
            raise ValueError(f"{label}: shape {image.shape} differs from the HR shape {hr.shape}")
    chosen = box is None
    if box is None:
        box = most_different_box(bicubic, [image for _, image in methods], box_size, margin=shave)
    panels = comparison_panels(hr, bicubic, methods, box, scale=scale, protocol=protocol, hr_first=hr_first)
    h, w = hr.shape[:2]
    caption = ([f"{name} x{scale}"] if name else [f"x{scale}"]) + [f"{w}x{h}, box {box.x},{box.y} {box.w}x{box.h}"]
    footer = (f"Scores: {protocol_text(scale, protocol)}. Crops {_zoom_text(box, tile)}"
              + ("; box where the outputs differ most from bicubic." if chosen else "."))
    figure = draw_figure(hr, box, panels, caption=caption, title=title, footer=footer, columns=columns,
                         tile=tile, font_size=font_size)
    return figure, box


def _zoom_text(box: Box, tile: int) -> str:
    k = tile / max(box.w, box.h)
    if k >= 2:
        return f"enlarged x{int(k)} (nearest neighbour)"
    return "at 1:1" if k >= 1 else f"shrunk x{k:.2f}"


__all__ = [
    "BOX_COLOUR",
    "Box",
    "Panel",
    "check_box",
    "comparison_figure",
    "comparison_panels",
    "draw_figure",
    "font",
    "model_label",
    "most_different_box",
    "protocol_text",
    "score_box",
    "score_text",
]
