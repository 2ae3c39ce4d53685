"""Building blocks shared by EDSR and MDSR.

Module and attribute names here are part of the checkpoint format: they reproduce the authors'
released state_dict keys (`body.0`/`body.2` inside a residual block, conv/shuffle pairs inside an
upsampler), so released files load with `strict=True`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def conv(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Conv2d:
    """A 'same'-padded convolution with bias, as every conv of EDSR/MDSR is."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=True)


class MeanShift(nn.Module):
    """Fixed 1x1 conv that subtracts (sign=-1) or adds (sign=+1) `rgb_range * rgb_mean`.

    The weight (identity) and bias are buffers, not parameters: they appear in the state_dict as
    `weight`/`bias` like the reference's frozen conv, but no optimizer ever sees them and
    parameter counts exclude them, as the paper's counts do.

    Args:
        rgb_range: pixel range of the images (255 for the paper's models).
        rgb_mean: per-channel mean on the 0-1 scale.
        sign: -1 to subtract the mean (network input), +1 to add it back (network output).
    """

    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(self, rgb_range: float, rgb_mean: Sequence[float], sign: int) -> None:
        super().__init__()
        if sign not in (-1, 1):
            raise ValueError(f"sign must be -1 or +1, got {sign}")
        n = len(rgb_mean)
        # fill_diagonal_ rather than torch.eye: eye on the meta device costs seconds on first use.
        self.register_buffer("weight", torch.zeros(n, n).fill_diagonal_(1.0).view(n, n, 1, 1))
        # float32 product as the reference computes it, done in NumPy so that building on the
        # meta device never needs tensor arithmetic (whose first meta call costs seconds).
        bias = np.asarray(rgb_mean, dtype=np.float32) * np.float32(sign * rgb_range)
        self.register_buffer("bias", torch.tensor(bias.tolist(), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A conv (not a broadcast add) so that whatever weights a loaded checkpoint holds are the
        # ones applied, exactly as the reference network applies them. Always in float32: under
        # bf16 autocast, 0-255 values would otherwise be rounded to steps of 1 at the output.
        out_dtype = torch.promote_types(x.dtype, self.weight.dtype)
        device = x.device.type
        no_autocast = (
            torch.autocast(device, enabled=False)
            if torch.amp.is_autocast_available(device)
            else contextlib.nullcontext()  # e.g. the meta device, used to build models cheaply
        )
        with no_autocast:
            out = F.conv2d(x.float(), self.weight.float(), self.bias.float())
        return out.to(out_dtype)


class ResBlock(nn.Module):
    """EDSR residual block: `x + res_scale * conv(relu(conv(x)))`; no batch norm, no final ReLU.

    Args:
        n_feats: channels in and out.
        kernel_size: 3 in the body, 5 in MDSR's scale-specific pre-processing.
        res_scale: residual scaling (0.1 for the wide EDSR, which is unstable to train without it).
    """

    def __init__(self, n_feats: int, kernel_size: int = 3, res_scale: float = 1.0) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv(n_feats, n_feats, kernel_size),
            nn.ReLU(inplace=True),
            conv(n_feats, n_feats, kernel_size),
        )
        self.res_scale = float(res_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.body(x)
        if self.res_scale != 1.0:
            res = res.mul_(self.res_scale)
        # In place on a fresh tensor: one feature map less at peak, which matters for large tiles.
        return res.add_(x)


def upsampling_steps(scale: int) -> list[int]:
    """The factors the Upsampler's sub-pixel convs upscale by in turn: x4 is two x2 steps."""
    if scale in (2, 4):
        return [2] * (scale // 2)
    if scale == 3:
        return [3]
    raise ValueError(f"upsampling scale must be 2, 3 or 4, got {scale}")


def reach_through_tail(reach: Fraction | int, scale: int) -> int:
    """The receptive-field radius, in LR pixels, of a network whose features reach `reach` LR
    pixels before an Upsampler and one 3x3 conv at the output grid (EDSR's and MDSR's tail).

    Each conv of the upsampler reaches one pixel of its own grid, 1/grid LR pixels; so does the
    last conv at the output grid. The fractional part is rounded up, since an output pixel at the
    edge of its LR cell reaches into the neighbouring cell.
    """
    r = Fraction(reach)
    grid = 1
    for step in upsampling_steps(scale):
        r += Fraction(1, grid)  # upsampler conv at the current grid
        grid *= step
    r += Fraction(1, grid)  # tail conv at the output grid
    return math.ceil(r)


def residual_sr_peak_elements(n_feats: int, scale: int) -> int:
    """Elements one image of a forward batch holds at the peak of a pass through a residual
    network with a global skip, an Upsampler and a tail conv (EDSR, MDSR), per LR pixel.

    With F = `n_feats` and s = `scale`, the peak is in the upsampler's last step (a residual block
    only ever holds 4 feature maps: the global skip, its input, and its two convs' outputs). There
    the head's output (the global skip, F channels) and the body's output (F) are still
    referenced while the last sub-pixel conv writes s^2 F channels of the coarser grid and
    PixelShuffle copies them into the finer one (s^2 F more): (2 + 2 s^2) F channels per LR pixel,
    10F at x2, 20F at x3, 34F at x4 (x4's first x2 step holds less). Add the batch's input (3),
    slack for MeanShift's copies (3), and the output that self-ensemble accumulates per tile (3 s^2;
    small, so counted with or without self-ensemble):

        elements per LR pixel = (2 + 2 s^2) F + 3 s^2 + 6

    This counts tensors, not workspace (ntire.tiles.estimate_memory adds a safety factor). The
    count is exact for EDSR and MDSR, whose pre-processing blocks also hold 4 maps at most (a test
    measures it).
    """
    s2 = scale * scale
    return (2 + 2 * s2) * n_feats + 3 * s2 + 6


class Upsampler(nn.Sequential):
    """Sub-pixel upsampler: [conv(F->4F), PixelShuffle(2)] once (x2) or twice (x4), or
    [conv(F->9F), PixelShuffle(3)] (x3). No activation.

    Args:
        n_feats: channels in and out.
        scale: 2, 3 or 4.
    """

    def __init__(self, n_feats: int, scale: int) -> None:
        layers: list[nn.Module] = []
        for s in upsampling_steps(scale):
            layers += [conv(n_feats, s * s * n_feats, 3), nn.PixelShuffle(s)]
        super().__init__(*layers)
        self.scale = scale
