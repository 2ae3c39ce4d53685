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
- `tile="auto"` (the default of `upscale_tensor`/`upscale_image`, hence of `ntire upscale`, the
  benchmark and the submission builder) runs the whole image if it fits the memory free on the
  device, else the largest tiles that do: ntire.tiles.plan_tiles decides, by a memory model of the
  network rather than by trying.
- `precision` (`fp32`, `tf32`, `bf16`) and `channels_last` choose how the convolutions run:
  `precision_mode` sets TF32 and bf16 autocast for the duration of a call only. TF32 changes
  0.4-2.5% of 8-bit pixels and PSNR by at most 0.003 dB; bf16 costs PSNR (see BF16_COST), so the
  commands default to `tf32` on CUDA and `fp32` elsewhere, and say so when bf16 is asked for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ntire.config import ModelConfig
from ntire.errors import ConfigError
from ntire.models.build import receptive_field_radius
from ntire.models.network import SRNetwork
from ntire.tiles import MemoryBudgetError, normalize_tile, plan_tiles, resolve_memory_budget, spans
from ntire.values import Tile

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
    (win_h, rows), (win_w, cols) = spans(h, tile, overlap), spans(w, tile, overlap)
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


def _check_batch(x: Tensor) -> None:
    if x.ndim != 4 or min(x.shape) == 0:
        raise ValueError(f"expected a non-empty (N, C, H, W) tensor, got shape {tuple(x.shape)}")


# --------------------------------------------------------------------------------------------
# Precision and layout

PRECISIONS = ("fp32", "tf32", "bf16")
"""Inference precisions: `fp32` (TF32 off: exact IEEE float32), `tf32` (float32 tensors, TF32
tensor-core convolutions and matmuls; CUDA only), `bf16` (bf16 autocast)."""

BF16_COST = (
    "bf16 costs PSNR: on an H200 it changed 9-20% of 8-bit values and PSNR by -0.06 dB on average, -0.46 dB at "
    "worst, against fp32 (README, benchmarks/precision.py); submissions should use tf32 or fp32"
)
"""The line the commands print when bf16 is asked for."""


def default_precision(device: str | torch.device) -> str:
    """`tf32` on CUDA (measured: at most 0.003 dB of PSNR), else `fp32`."""
    return "tf32" if torch.device(device).type == "cuda" else "fp32"


def resolve_precision(precision: str | None, device: str | torch.device, option: str = "--precision") -> str:
    """`precision`, or the device's default when None; a ConfigError naming `option` for an unknown
    name, or for `tf32` where it does not exist (TF32 is a mode of NVIDIA tensor cores)."""
    device = torch.device(device)
    if precision is None:
        return default_precision(device)
    if precision not in PRECISIONS:
        raise ConfigError(f"{option} {precision}: unknown precision; choose from {', '.join(PRECISIONS)}")
    if precision == "tf32" and device.type != "cuda":
        raise ConfigError(f"{option} tf32: TF32 exists on CUDA devices only; on {device} use fp32 (or bf16)")
    return precision


@contextlib.contextmanager
def precision_mode(precision: str | None, device: str | torch.device) -> Iterator[None]:
    """Run the block's forward passes at `precision` on `device`; None leaves torch as it is.

    TF32 is a process-wide switch in torch, so it is set on entry and restored on exit rather than
    left changed for whoever runs next (a benchmark comparing against TF32-off fp32, say).
    """
    if precision is None:
        yield
        return
    device = torch.device(device)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    try:
        with autocast:
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def use_channels_last(device: str | torch.device) -> bool:
    """Whether inference on `device` runs channels_last: on CUDA, where cuDNN's NHWC kernels
    measured 15% faster (EDSR x2, whole 1020x678 image, TF32); on CPU it gains nothing in fp32."""
    return torch.device(device).type == "cuda"


# --------------------------------------------------------------------------------------------
# Putting it together

_self_ensemble = self_ensemble  # reachable inside functions whose flag is named self_ensemble


def upscale_tensor(
    model: SRNetwork,
    x: Tensor,
    *,
    scale: int,
    tile: Tile = "auto",
    overlap: int | None = None,
    self_ensemble: bool = False,
    max_batch: int = 4,
    config: ModelConfig | None = None,
    memory_budget: int | None = None,
    precision: str | None = None,
    channels_last: bool = False,
) -> Tensor:
    """Super-resolve `x` (N, 3, H, W, float in [0, 255], on the model's device) by `scale`.

    `model(x, scale)` is called under torch.inference_mode. `tile`:

    - `"auto"` (default): `plan_tiles` picks the whole image if it fits the memory available on
      `x`'s device (see `resolve_memory_budget`: the `memory_budget` bytes if given, else
      $NTIRE_MEMORY_BUDGET, else what is free), else the largest tile that fits, lowering
      `max_batch` before the tile if need be; MemoryBudgetError if not even the smallest tile
      fits. This needs `config` (a ModelConfig) to size the network: without it the whole image
      is run.
    - None or 0: the whole image in one pass.
    - N: tiles of at most N x N LR pixels (see `tiled_forward`).

    Tiles overlap by `overlap`, by default the receptive-field radius of `config`, so the output
    equals the whole-image one. With `self_ensemble` the 8-way ensemble is applied inside each
    tile, which is exact for the same reason (a flipped or rotated window still has the context on
    every side) and keeps memory bounded by the tile: the tiles of one `forward` call are
    ensembled `max_batch` images at a time, so a call takes max(1, max_batch // 8) tiles. For the
    whole image, self-ensemble runs up to `max_batch` transformed copies of it at once.

    `precision` (`fp32`, `tf32`, `bf16`; None: torch's current settings) applies to this call only
    (`precision_mode`); outputs are float32 whatever it is, so the ensemble's mean and the tiles'
    stitching add in float32. `channels_last` feeds every batch to the model in that layout (the
    model's weights should be in it too: `upscale_image` moves them). Neither enters the memory plan,
    which counts float32 tensors and so holds for them all.

    Returns the unrounded float output; see `upscale_image` for 8-bit images.
    """
    ensemble = self_ensemble  # the flag shadows the function; `_self_ensemble` is the function
    tile = normalize_tile(tile)
    if tile == "auto":
        tile = None
        if config is not None:
            _check_batch(x)
            n, _, h, w = x.shape
            param = next(model.parameters(), None)
            dtype = x.dtype if param is None else torch.promote_types(x.dtype, param.dtype)
            budget, source = resolve_memory_budget(x.device, memory_budget)
            plan = plan_tiles(
                config, scale, h, w, budget=budget, dtype=dtype, max_batch=max_batch, self_ensemble=ensemble,
                images=n, overlap=overlap, budget_source=source,
            )
            tile, max_batch = plan.tile, plan.max_batch

    def forward(t: Tensor) -> Tensor:
        if channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        return model(t, scale).float()

    def run(t: Tensor) -> Tensor:
        return _self_ensemble(forward, t, max_batch=max_batch) if ensemble else forward(t)

    with torch.inference_mode(), precision_mode(precision, x.device):
        if tile is None:
            return run(x)
        if overlap is None:
            if config is None:
                raise ValueError("tiled inference needs `overlap` or the model's `config` to derive it")
            overlap = receptive_field_radius(config)
        tiles_per_call = max(1, max_batch // 8) if ensemble else max_batch
        return tiled_forward(run, x, scale=scale, tile=tile, overlap=overlap, max_batch=tiles_per_call)


def upscale_image(
    model: SRNetwork,
    config: ModelConfig | None,
    image: np.ndarray,
    *,
    scale: int,
    tile: Tile = "auto",
    self_ensemble: bool = False,
    device: str | torch.device = "cpu",
    max_batch: int = 4,
    memory_budget: int | None = None,
    precision: str | None = None,
    channels_last: bool = False,
) -> np.ndarray:
    """Super-resolve an (H, W, 3) uint8 RGB image by `scale`; returns (H*scale, W*scale, 3) uint8.

    The model is put in eval mode and moved to `device` in the memory format `channels_last` asks
    for (no-ops when it is already so); the output is rounded and clipped to 8 bits. `tile` is
    `"auto"` (fit the memory free on `device`, or `memory_budget` bytes), None or 0 (whole image)
    or a tile size, as for `upscale_tensor`; `config` (the model's ModelConfig) sizes the network
    and gives the tile overlap (without it, `"auto"` runs the whole image and a tile size is an
    error). `precision` and `channels_last` as for `upscale_tensor`.
    """
    from ntire.images import image_to_tensor, tensor_to_image

    layout = torch.channels_last if channels_last else torch.contiguous_format
    model.eval().to(device, memory_format=layout)
    x = image_to_tensor(image).to(device)
    y = upscale_tensor(
        model, x, scale=scale, tile=tile, self_ensemble=self_ensemble, max_batch=max_batch, config=config,
        memory_budget=memory_budget, precision=precision, channels_last=channels_last,
    )
    return tensor_to_image(y)


__all__: Sequence[str] = [
    "BF16_COST",
    "PRECISIONS",
    "DihedralTransform",
    "Forward",
    "MemoryBudgetError",
    "Tile",
    "default_precision",
    "geometric_transforms",
    "precision_mode",
    "resolve_precision",
    "self_ensemble",
    "tiled_forward",
    "upscale_image",
    "upscale_tensor",
    "use_channels_last",
]
