"""MDSR (Lim et al., 2017): one shared body serving several upscaling factors.

Data flow for scale s: subtract mean -> head conv -> pre-process branch of s (two residual blocks
with 5x5 kernels) -> shared body (B blocks, one conv, plus a global skip from the pre-processed
features) -> upsampler branch of s -> shared tail conv -> add mean. Only the branches of the
requested scale run, so a training step on one scale neither computes nor updates the others.
Attribute names reproduce the released keys (`pre_process.{k}.{0,1}.body.{0,2}`, `body.{i}`,
`upsample.{k}.{j}`, `tail.0`), k indexing `scales` in order.

Beside the class, `NETWORK` gives what the rest of ntire needs to know about it (ntire/models/
network.py): its builder, receptive field, activation memory, init-from roles and name.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ntire.models.blocks import (
    MeanShift,
    ResBlock,
    Upsampler,
    conv,
    reach_through_tail,
    residual_sr_peak_elements,
)
from ntire.models.network import DIV2K_RGB_MEAN, Architecture, Network, tail_roles


class MDSR(nn.Module):
    """Multi-scale Deep Super-Resolution network.

    Args:
        scales: upscaling factors served, in branch order (the released models use 2, 3, 4).
        n_blocks: residual blocks in the shared body (16 baseline, 80 MDSR).
        n_feats: feature channels (64).
        res_scale: residual scaling inside every block (1.0 for both released MDSRs).
        rgb_range: pixel range of input and output (255 for the released models).
        rgb_mean: per-channel mean on the 0-1 scale, subtracted at the input and added at the end.
        n_colors: image channels (3).

    `forward(x, scale)` maps (N, n_colors, H, W) in [0, rgb_range] to
    (N, n_colors, scale*H, scale*W); the scale is an argument, there is no hidden state.
    """

    def __init__(
        self,
        *,
        scales: Sequence[int] = (2, 3, 4),
        n_blocks: int,
        n_feats: int,
        res_scale: float = 1.0,
        rgb_range: float = 255.0,
        rgb_mean: Sequence[float] = DIV2K_RGB_MEAN,
        n_colors: int = 3,
    ) -> None:
        super().__init__()
        self.scales = tuple(int(s) for s in scales)
        if not self.scales or len(set(self.scales)) != len(self.scales):
            raise ValueError(f"scales must be distinct and non-empty, got {scales}")
        if len(rgb_mean) != n_colors:
            raise ValueError(f"rgb_mean has {len(rgb_mean)} values for {n_colors} colours")
        self.sub_mean = MeanShift(rgb_range, rgb_mean, sign=-1)
        self.head = nn.Sequential(conv(n_colors, n_feats, 3))
        self.pre_process = nn.ModuleList(
            nn.Sequential(ResBlock(n_feats, 5, res_scale), ResBlock(n_feats, 5, res_scale))
            for _ in self.scales
        )
        self.body = nn.Sequential(
            *[ResBlock(n_feats, 3, res_scale) for _ in range(n_blocks)],
            conv(n_feats, n_feats, 3),
        )
        self.upsample = nn.ModuleList(Upsampler(n_feats, s) for s in self.scales)
        self.tail = nn.Sequential(conv(n_feats, n_colors, 3))
        self.add_mean = MeanShift(rgb_range, rgb_mean, sign=1)

    def forward(self, x: torch.Tensor, scale: int) -> torch.Tensor:
        """Upscale `x` by `scale`, which must be one of `self.scales` (ValueError otherwise)."""
        if scale not in self.scales:
            raise ValueError(f"this MDSR serves scales {self.scales}, not x{scale}")
        k = self.scales.index(scale)
        x = self.pre_process[k](self.head(self.sub_mean(x)))
        res = self.body(x)
        res += x
        return self.add_mean(self.tail(self.upsample[k](res)))


def build(config: Architecture) -> MDSR:
    """The MDSR `config` describes, freshly initialised (PyTorch defaults)."""
    return MDSR(
        scales=config.scales,
        n_blocks=config.n_blocks,
        n_feats=config.n_feats,
        res_scale=config.res_scale,
        rgb_range=config.rgb_range,
        rgb_mean=config.rgb_mean,
    )


def receptive_field(config: Architecture) -> int:
    """Every conv's (k-1)/2 along the path: head 1, pre-processing 4 x 2 (two 5x5 blocks), two per
    block, body conv 1, then the upsampler and tail convs at their finer grids; the largest over
    the scales."""
    return max(reach_through_tail(1 + 4 * 2 + 2 * config.n_blocks + 1, s) for s in config.scales)


def activation_elements_per_pixel(config: Architecture, scale: int) -> int:
    """Peak elements per LR pixel of a forward pass at `scale` (see `residual_sr_peak_elements`:
    the pre-processing blocks hold no more than the body's)."""
    return residual_sr_peak_elements(config.n_feats, scale)


role = tail_roles(upsampler=r"upsample\.(\d+\..*)", final=r"tail\.0\.(weight|bias)")
"""`upsample.*` are the upsamplers, `tail.0` the final conv (EDSR's `tail.1`); the rest as named."""


NETWORK = Network(
    display_name="MDSR",
    build=build,
    receptive_field=receptive_field,
    activation_elements_per_pixel=activation_elements_per_pixel,
    role=role,
    multi_scale=True,
)
