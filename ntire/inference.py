"""Exact, memory-bounded inference: geometric self-ensemble and tiled forward passes.

Both are small pure functions over tensors. They take `forward`, any callable mapping an
(N, C, h, w) batch to its (N, C', h*scale, w*scale) output independently per image (a network
with its scale bound, e.g. `lambda t: model(t, scale)`), and run everything on the input's device.

- `self_ensemble` averages the 8 flips/rotations of the input (the paper's "+" models).
- `tiled_forward` runs overlapping tiles and keeps only each tile's centre. With an overlap of at
  least the network's receptive-field radius every kept pixel sees exactly the input it would see
  in a whole-image pass (the zero padding at a tile's edge lies beyond what it can reach, and the
  image's own border is still the border), so the stitched result equals the whole-image output up
  to float rounding, while memory grows with the tile, not the image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ntire.config import ModelConfig
from ntire.models.build import receptive_field_radius

Forward = Callable[[Tensor], Tensor]
"""A batched image-to-image function: (N, C, h, w) -> (N, C', h*scale, w*scale)."""


# --------------------------------------------------------------------------------------------
# Self-ensemble


@dataclass(frozen=True)
class DihedralTransform:
    """One of the 8 symmetries of the square acting on the last two (H, W) axes of a tensor."""

    flip: bool
    """Mirror left-right first."""

    rotations: int
    """Then rotate by this many quarter turns (torch.rot90 over dims (-2, -1))."""

    @property
    def swaps_axes(self) -> bool:
        """Whether the transform exchanges height and width."""
        return self.rotations % 2 == 1

    def apply(self, x: Tensor) -> Tensor:
        """Transform an (..., H, W) tensor."""
        if self.flip:
            x = x.flip(-1)
        return x.rot90(self.rotations, dims=(-2, -1)) if self.rotations else x

    def undo(self, y: Tensor) -> Tensor:
        """Invert `apply` (on an output of any scale: flips and quarter turns commute with it)."""
        if self.rotations:
            y = y.rot90(-self.rotations, dims=(-2, -1))
        return y.flip(-1) if self.flip else y


def geometric_transforms() -> tuple[DihedralTransform, ...]:
    """The 8 flips/rotations used by self-ensemble, identity first."""
    return tuple(DihedralTransform(flip, k) for flip in (False, True) for k in range(4))


def self_ensemble(forward: Forward, x: Tensor, *, max_batch: int = 8) -> Tensor:
    """Mean of `forward` over the 8 flips/rotations of `x`, each output transformed back.

    The (transform, image) pairs are batched: all 8 variants share a shape when the input is
    square, otherwise the 4 that keep (H, W) and the 4 that swap it form two groups. No call to
    `forward` gets more than `max_batch` images. Transformed inputs are built per call, and the
    result is accumulated in place, so extra memory is one batch plus the output.
    """
    _check_batch(x)
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    n, _, h, w = x.shape
    transforms = geometric_transforms()
    groups = [[t for t in transforms if not t.swaps_axes], [t for t in transforms if t.swaps_axes]]
    if h == w:
        groups = [list(transforms)]
    out: Tensor | None = None
    for group in groups:
        items = [(t, i) for t in group for i in range(n)]
        for start in range(0, len(items), max_batch):
            chunk = items[start : start + max_batch]
            y = forward(torch.cat([t.apply(x[i : i + 1]) for t, i in chunk]))
            for row, (t, i) in enumerate(chunk):
                back = t.undo(y[row : row + 1])
                if out is None:
                    out = torch.zeros((n, *back.shape[1:]), dtype=back.dtype, device=back.device)
                out[i : i + 1] += back
            del y
    assert out is not None
    return out.div_(len(transforms))


# --------------------------------------------------------------------------------------------
# Tiling


@dataclass(frozen=True)
class _Span:
    """One tile along one axis, in LR pixels: the window fed to the network and its kept core."""

    window_start: int
    core_start: int
    core_stop: int


def _spans(size: int, tile: int, overlap: int) -> tuple[int, list[_Span]]:
    """Cut `size` pixels into ceil(size / tile) cores of near-equal length <= `tile`.

    Returns the common window length and the spans.

    Each core sits inside a window with `overlap` pixels of context on each side, and every
    window has the same length, min(core + 2 * overlap, size), so tiles batch together: a window
    that would cross the image border is shifted inwards instead of cropped, which only gives
    its core more context, never less. Evening out the cores (rather than leaving a sliver at
    the end) keeps those windows, and so the wasted compute, small.
    """
    count = math.ceil(size / tile)
    core = math.ceil(size / count)
    window = min(core + 2 * overlap, size)
    spans = []
    for core_start in range(0, size, core):
        core_stop = min(core_start + core, size)
        window_start = min(max(core_start - overlap, 0), size - window)
        spans.append(_Span(window_start, core_start, core_stop))
    return window, spans


def tiled_forward(
    forward: Forward,
    x: Tensor,
    *,
    scale: int,
    tile: int,
    overlap: int,
    max_batch: int = 4,
) -> Tensor:
    """Run `forward` on overlapping tiles of `x` and stitch their centres into the full output.

    `x` is (N, C, H, W). Each axis is cut into ceil(size / tile) cores of near-equal length (at
    most `tile` LR pixels); each core is run inside a window with `overlap` pixels of context on
    every side, shifted inwards at the image border so all windows share one shape and up to
    `max_batch` of them (across all N images) go through `forward` together. Only the cores'
    outputs are written, into an output allocated once.

    With `overlap` >= the network's receptive-field radius (in LR pixels) the result equals
    `forward(x)` up to float rounding. Peak memory is `max_batch` windows of activations plus the
    output itself, independent of the image size.
    """
    _check_batch(x)
    if tile < 1 or overlap < 0 or max_batch < 1 or scale < 1:
        raise ValueError(
            f"need tile >= 1, overlap >= 0, max_batch >= 1, scale >= 1; "
            f"got tile={tile}, overlap={overlap}, max_batch={max_batch}, scale={scale}"
        )
    n, _, h, w = x.shape
    (win_h, rows), (win_w, cols) = _spans(h, tile, overlap), _spans(w, tile, overlap)
    items = [(i, r, c) for i in range(n) for r in rows for c in cols]
    out: Tensor | None = None
    for start in range(0, len(items), max_batch):
        chunk = items[start : start + max_batch]
        batch = torch.cat(
            [
                x[i : i + 1, :, r.window_start : r.window_start + win_h, c.window_start : c.window_start + win_w]
                for i, r, c in chunk
            ]
        )
        y = forward(batch)
        if y.shape[0] != len(chunk) or y.shape[-2:] != (win_h * scale, win_w * scale):
            raise ValueError(
                f"forward mapped tiles {tuple(batch.shape)} to {tuple(y.shape)}, "
                f"expected spatial size {(win_h * scale, win_w * scale)} for scale {scale}"
            )
        if out is None:
            out = torch.empty((n, y.shape[1], h * scale, w * scale), dtype=y.dtype, device=y.device)
        for row, (i, r, c) in enumerate(chunk):
            top, left = (r.core_start - r.window_start) * scale, (c.core_start - c.window_start) * scale
            hh, ww = (r.core_stop - r.core_start) * scale, (c.core_stop - c.core_start) * scale
            out[i, :, r.core_start * scale : r.core_stop * scale, c.core_start * scale : c.core_stop * scale] = y[
                row, :, top : top + hh, left : left + ww
            ]
        del y, batch
    assert out is not None
    return out


def tile_layout(height: int, width: int, tile: int, overlap: int) -> tuple[int, int, int]:
    """(tiles, window height, window width) that `tiled_forward` uses for one image.

    The tiles' compute relative to one whole-image pass is tiles * window area / image area.
    """
    (win_h, rows), (win_w, cols) = _spans(height, tile, overlap), _spans(width, tile, overlap)
    return len(rows) * len(cols), win_h, win_w


def _check_batch(x: Tensor) -> None:
    if x.ndim != 4 or min(x.shape) == 0:
        raise ValueError(f"expected a non-empty (N, C, H, W) tensor, got shape {tuple(x.shape)}")


# --------------------------------------------------------------------------------------------
# Putting it together

_self_ensemble = self_ensemble  # reachable inside functions whose flag is named self_ensemble


def upscale_tensor(
    model: nn.Module,
    x: Tensor,
    *,
    scale: int,
    tile: int | None = None,
    overlap: int | None = None,
    self_ensemble: bool = False,
    max_batch: int = 4,
    config: ModelConfig | None = None,
) -> Tensor:
    """Super-resolve `x` (N, 3, H, W, float in [0, 255], on the model's device) by `scale`.

    `model(x, scale)` is called under torch.inference_mode. With `tile`, the image is run in
    tiles of that many LR pixels (see `tiled_forward`); `overlap` defaults to the receptive-field
    radius of `config` (a ModelConfig), so the output equals the whole-image one. With
    `self_ensemble` the 8-way ensemble is applied inside each tile, which is exact for the same
    reason (a flipped or rotated window still has the context on every side) and keeps memory
    bounded by the tile: the tiles of one `forward` call are ensembled `max_batch` images at a
    time, so a call takes max(1, max_batch // 8) tiles. Without `tile` the whole image is one
    tile, and self-ensemble runs up to `max_batch` transformed copies of it at once.

    Returns the unrounded float output; see `upscale_image` for 8-bit images.
    """
    ensemble = self_ensemble  # the flag shadows the function; `_self_ensemble` is the function

    def forward(t: Tensor) -> Tensor:
        return model(t, scale)

    def run(t: Tensor) -> Tensor:
        return _self_ensemble(forward, t, max_batch=max_batch) if ensemble else forward(t)

    with torch.inference_mode():
        if tile is None:
            return run(x)
        if overlap is None:
            if config is None:
                raise ValueError("tiled inference needs `overlap` or the model's `config` to derive it")
            overlap = receptive_field_radius(config)
        tiles_per_call = max(1, max_batch // 8) if ensemble else max_batch
        return tiled_forward(run, x, scale=scale, tile=tile, overlap=overlap, max_batch=tiles_per_call)


def upscale_image(
    model: nn.Module,
    config: ModelConfig | None,
    image: np.ndarray,
    *,
    scale: int,
    tile: int | None = None,
    self_ensemble: bool = False,
    device: str | torch.device = "cpu",
    max_batch: int = 4,
) -> np.ndarray:
    """Super-resolve an (H, W, 3) uint8 RGB image by `scale`; returns (H*scale, W*scale, 3) uint8.

    The model is put in eval mode and moved to `device` (a no-op when it is already there); the
    output is rounded and clipped to 8 bits. `config` (the model's ModelConfig) gives the tile
    overlap; it may be None when `tile` is None.
    """
    from ntire.images import image_to_tensor, tensor_to_image

    model.eval().to(device)
    x = image_to_tensor(image).to(device)
    y = upscale_tensor(
        model, x, scale=scale, tile=tile, self_ensemble=self_ensemble, max_batch=max_batch, config=config
    )
    return tensor_to_image(y)


__all__: Sequence[str] = [
    "DihedralTransform",
    "Forward",
    "geometric_transforms",
    "self_ensemble",
    "tile_layout",
    "tiled_forward",
    "upscale_image",
    "upscale_tensor",
]
