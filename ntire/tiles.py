"""Which tiles an image is cut into: their geometry (`spans`, `tile_layout`) and, for
`tile="auto"`, the choice itself (`plan_tiles`): the whole image if it fits the memory free on
the device, else the largest tile that does, by a memory model of the network
(`activation_bytes_per_pixel`, `estimate_memory`) rather than by trying. `NTIRE_MEMORY_BUDGET`
(e.g. `2GiB`) or a `memory_budget=` argument replaces the measured free memory.
ntire.inference runs the tiles.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from ntire.config import ModelConfig
from ntire.errors import ConfigError
from ntire.models.build import activation_elements_per_pixel, receptive_field_radius
from ntire.values import Tile, parse_bytes, parse_tile

# --------------------------------------------------------------------------------------------
# Tile geometry


@dataclass(frozen=True)
class Span:
    """One tile along one axis, in LR pixels: the window fed to the network and its kept core."""

    window_start: int
    core_start: int
    core_stop: int


def spans(size: int, tile: int, overlap: int) -> tuple[int, list[Span]]:
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
        spans.append(Span(window_start, core_start, core_stop))
    return window, spans


def tile_layout(height: int, width: int, tile: int, overlap: int) -> tuple[int, int, int]:
    """(tiles, window height, window width) that `tiled_forward` uses for one image.

    The tiles' compute relative to one whole-image pass is tiles * window area / image area.
    """
    (win_h, rows), (win_w, cols) = spans(height, tile, overlap), spans(width, tile, overlap)
    return len(rows) * len(cols), win_h, win_w


# --------------------------------------------------------------------------------------------
# Choosing the tile: a memory model of the network and the memory actually free

MEMORY_BUDGET_ENV = "NTIRE_MEMORY_BUDGET"
"""Environment variable that replaces the measured free memory for `tile="auto"`: a byte size as
`ntire.values.parse_bytes` reads it (`2GiB` = 2^31 bytes, `2G` = 2 * 10^9). For tests, and for
sharing a device."""

SAFETY_FACTOR = 1.5
"""The estimate's margin over the tensors the model counts: convolution workspaces (cuDNN,
oneDNN), allocator rounding and fragmentation. On CPU the resident-set growth of a forward pass
measures 1.1-1.25x the counted tensors."""

TILE_STEP = 8
"""Auto-chosen tiles are multiples of this many LR pixels."""

MIN_TILE_OVERLAPS = 2
"""The smallest auto-chosen tile is this many overlaps (receptive-field radii): below that a
window is mostly context, and tiling costs more compute than it saves memory (a core of 2r in
a window of 4r already does 4x the work). `--tile N` still forces any size."""

DEFAULT_MEMORY_BUDGET = 2 * 2**30
"""What `free_memory` assumes when the device cannot say (an unknown backend; a CPU without
psutil or /proc/meminfo)."""


class MemoryBudgetError(ConfigError):
    """Not even the smallest tile fits the memory available; the message says how much it needs."""


@dataclass(frozen=True)
class TilePlan:
    """What `plan_tiles` decided for one image (or batch of images)."""

    tile: int | None
    """Tile size for `tiled_forward` in LR pixels; None: the whole image in one pass."""

    max_batch: int
    """Images (tiles or ensemble variants) per forward pass: the caller's, or fewer if needed."""

    needed: int
    """Estimated peak bytes, safety factor included (see `estimate_memory`)."""

    budget: int
    """The bytes it had to fit in."""


def normalize_tile(tile: Tile) -> int | str | None:
    """`"auto"`, None (the whole image; 0 means the same) or a positive tile size; ConfigError
    else (`ntire.values.parse_tile`, the one check of every tile option)."""
    return parse_tile(tile, "tile") or None


def activation_bytes_per_pixel(config: ModelConfig, scale: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes that one image of a forward batch holds at the pass's peak, per LR pixel of its input:
    the network's own count of elements (its `activation_elements_per_pixel`, ntire/models/; for
    EDSR and MDSR `ntire.models.blocks.residual_sr_peak_elements`) times the element size.

    This counts tensors, not workspace: `estimate_memory` multiplies by SAFETY_FACTOR.
    """
    return activation_elements_per_pixel(config, scale) * dtype.itemsize


def estimate_memory(
    config: ModelConfig,
    scale: int,
    height: int,
    width: int,
    *,
    tile: int | None,
    dtype: torch.dtype = torch.float32,
    max_batch: int = 4,
    self_ensemble: bool = False,
    images: int = 1,
    overlap: int | None = None,
    safety: float = SAFETY_FACTOR,
) -> int:
    """Peak bytes `upscale_tensor` (and `upscale_image`) need for `images` LR images of
    `height` x `width` at `scale` in tiles of `tile` (None: whole), `max_batch` per pass.

        peak = safety x (input + output + max(batch x window pixels x activation_bytes_per_pixel,
                                               2 x output))

    input and output are the whole images (3 and 3 s^2 channels per LR pixel), which tiling keeps in
    memory; the 2 x output term is the 8-bit conversion's rounded copies after the last pass. The
    batch is what one forward call gets: `max_batch` tiles (at most the number of tiles), all
    `images` for a whole-image pass, and with self-ensemble up to `max_batch` variants of one
    shape (8 per square window, 4 per other window).
    """
    itemsize = dtype.itemsize
    if tile is None:
        count, win_h, win_w = 1, height, width
    else:
        overlap = receptive_field_radius(config) if overlap is None else overlap
        count, win_h, win_w = tile_layout(height, width, tile, overlap)
    if self_ensemble:  # as upscale_tensor and self_ensemble batch the variants
        group = 8 if win_h == win_w else 4  # a non-square window's variants come in two shapes
        windows = images if tile is None else min(max(1, max_batch // 8), count * images)
        batch = min(max_batch, group * windows)
    else:
        batch = images if tile is None else min(max_batch, count * images)
    image_bytes = images * 3 * height * width * itemsize
    output_bytes = image_bytes * scale * scale
    call_bytes = batch * win_h * win_w * activation_bytes_per_pixel(config, scale, dtype)
    return math.ceil(safety * (image_bytes + output_bytes + max(call_bytes, 2 * output_bytes)))


def plan_tiles(
    config: ModelConfig,
    scale: int,
    height: int,
    width: int,
    *,
    budget: int,
    dtype: torch.dtype = torch.float32,
    max_batch: int = 4,
    self_ensemble: bool = False,
    images: int = 1,
    overlap: int | None = None,
    budget_source: str = "available",
) -> TilePlan:
    """The tiling `tile="auto"` uses: pure arithmetic on `estimate_memory`, nothing is run.

    The whole image if it fits in `budget` bytes, else the largest tile (a multiple of TILE_STEP,
    at least MIN_TILE_OVERLAPS overlaps) that does; a larger tile at a smaller batch is preferred
    to a smaller tile at `max_batch` (fewer tiles: less overlap computed twice). If not even the
    smallest tile fits one at a time, MemoryBudgetError says how much it needs and how much is
    `budget_source` (e.g. "free on cuda:0").
    """
    overlap = receptive_field_radius(config) if overlap is None else overlap
    longest = max(height, width)
    smallest = max(TILE_STEP, math.ceil(MIN_TILE_OVERLAPS * overlap / TILE_STEP) * TILE_STEP)
    top = (longest - 1) // TILE_STEP * TILE_STEP  # tiles at least the image's size are the whole image
    candidates: list[int | None] = [None, *range(top, smallest - 1, -TILE_STEP)]

    def need(tile: int | None, batch: int) -> int:
        return estimate_memory(
            config, scale, height, width, tile=tile, dtype=dtype, max_batch=batch,
            self_ensemble=self_ensemble, images=images, overlap=overlap,
        )

    for tile in candidates:
        for batch in range(max_batch, 0, -1):
            needed = need(tile, batch)
            if needed <= budget:
                return TilePlan(tile, batch, needed, budget)
    tile = candidates[-1]
    if tile is None:
        smallest_run = "run whole (the image is smaller than the smallest tile), one pass at a time,"
    else:
        _, win_h, win_w = tile_layout(height, width, tile, overlap)
        smallest_run = f"in the smallest tiles ({tile} LR pixels, {win_w}x{win_h} windows), one per pass,"
    raise MemoryBudgetError(
        f"a {width}x{height} LR image at x{scale} ({config.name}, {str(dtype).removeprefix('torch.')}"
        f"{', self-ensemble' if self_ensemble else ''}) {smallest_run} needs about "
        f"{format_bytes(need(tile, 1))} of memory, and {format_bytes(budget)} is {budget_source}; "
        "free some memory or force a smaller tile (--tile N, slower)"
    )


def free_memory(device: str | torch.device) -> int:
    """Bytes this process can still allocate on `device`, as measured now.

    CUDA: the driver's free memory (`torch.cuda.mem_get_info`) plus what torch's caching allocator
    holds unused. CPU: the available RAM (psutil, else /proc/meminfo's MemAvailable), capped by a
    cgroup memory limit's headroom. Anything else: DEFAULT_MEMORY_BUDGET.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type == "cpu":
        available = _available_ram()
        headroom = _cgroup_headroom()
        known = [b for b in (available, headroom) if b is not None]
        return min(known) if known else DEFAULT_MEMORY_BUDGET
    return DEFAULT_MEMORY_BUDGET


def resolve_memory_budget(device: str | torch.device, budget: int | None = None) -> tuple[int, str]:
    """(bytes, where they come from) that `tile="auto"` fits into on `device`: `budget` if given,
    else $NTIRE_MEMORY_BUDGET if set, else `free_memory(device)`."""
    if budget is not None:
        return int(budget), "the memory budget"
    text = os.environ.get(MEMORY_BUDGET_ENV, "").strip()
    if text:
        return parse_bytes(text, MEMORY_BUDGET_ENV), f"allowed by {MEMORY_BUDGET_ENV}"
    return free_memory(device), f"free on {device}"


def format_bytes(n: float) -> str:
    """`1.5 GiB`, `300 MiB`, `12 KiB`, `100 B`."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def _available_ram() -> int | None:
    try:
        import psutil
    except ImportError:
        pass
    else:
        return int(psutil.virtual_memory().available)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_headroom() -> int | None:
    """A cgroup memory limit minus the cgroup's usage (v2, then v1), or None without a limit."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
            with open(usage_file) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # "max" or a huge number: no limit
            return max(0, int(limit) - usage)
    return None


__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "MEMORY_BUDGET_ENV",
    "MIN_TILE_OVERLAPS",
    "SAFETY_FACTOR",
    "TILE_STEP",
    "MemoryBudgetError",
    "Span",
    "TilePlan",
    "activation_bytes_per_pixel",
    "estimate_memory",
    "format_bytes",
    "free_memory",
    "normalize_tile",
    "plan_tiles",
    "resolve_memory_budget",
    "spans",
    "tile_layout",
]
