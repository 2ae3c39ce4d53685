"""EDSR (Lim et al., 2017): a single-scale residual network without batch norm.

Data flow: subtract mean -> head conv -> body (B residual blocks, one conv, plus a global skip
from the head) -> upsampler -> tail conv -> add mean. Attribute names reproduce the authors'
released keys (`sub_mean`, `head.0`, `body.{i}.body.{0,2}`, `body.{B}`, `tail.0.{0,2}`, `tail.1`,
`add_mean`).

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


class EDSR(nn.Module):
    """Enhanced Deep Super-Resolution network for one upscaling factor.

    Args:
        scale: upscaling factor, 2, 3 or 4.
        n_blocks: residual blocks in the body (B: 16 for the baseline, 32 for EDSR).
        n_feats: feature channels (F: 64 for the baseline, 256 for EDSR).
        res_scale: residual scaling inside each block (1.0 baseline, 0.1 EDSR).
        rgb_range: pixel range of input and output (255 for the released models).
        rgb_mean: per-channel mean on the 0-1 scale, subtracted at the input and added at the end.
        n_colors: image channels (3).

    `forward(x, scale=None)` maps (N, n_colors, H, W) in [0, rgb_range] to
    (N, n_colors, scale*H, scale*W); output is not clipped.
    """

    def __init__(
        self,
        *,
        scale: int,
        n_blocks: int,
        n_feats: int,
        res_scale: float = 1.0,
        rgb_range: float = 255.0,
        rgb_mean: Sequence[float] = DIV2K_RGB_MEAN,
        n_colors: int = 3,
    ) -> None:
        super().__init__()
        if len(rgb_mean) != n_colors:
            raise ValueError(f"rgb_mean has {len(rgb_mean)} values for {n_colors} colours")
        self.scale = int(scale)
        self.scales = (self.scale,)
        self.sub_mean = MeanShift(rgb_range, rgb_mean, sign=-1)
        self.head = nn.Sequential(conv(n_colors, n_feats, 3))
        self.body = nn.Sequential(
            *[ResBlock(n_feats, 3, res_scale) for _ in range(n_blocks)],
            conv(n_feats, n_feats, 3),
        )
        self.tail = nn.Sequential(Upsampler(n_feats, self.scale), conv(n_feats, n_colors, 3))
        self.add_mean = MeanShift(rgb_range, rgb_mean, sign=1)

    def forward(self, x: torch.Tensor, scale: int | None = None) -> torch.Tensor:
        """Upscale `x` by the model's scale; `scale`, if given, must equal it (ValueError)."""
        if scale is not None and scale != self.scale:
            raise ValueError(f"this EDSR upscales x{self.scale}, not x{scale}")
        x = self.head(self.sub_mean(x))
        res = self.body(x)
        res += x
        return self.add_mean(self.tail(res))


def build(config: Architecture) -> EDSR:
    """The EDSR `config` describes, freshly initialised (PyTorch defaults)."""
    return EDSR(
        scale=config.scales[0],
        n_blocks=config.n_blocks,
        n_feats=config.n_feats,
        res_scale=config.res_scale,
        rgb_range=config.rgb_range,
        rgb_mean=config.rgb_mean,
    )


def receptive_field(config: Architecture) -> int:
    """Every conv's (k-1)/2 along the path: head 1, two per block, body conv 1, then the upsampler
    and tail convs at their finer grids."""
    return reach_through_tail(1 + 2 * config.n_blocks + 1, config.scales[0])


def activation_elements_per_pixel(config: Architecture, scale: int) -> int:
    """Peak elements per LR pixel of a forward pass (see `residual_sr_peak_elements`)."""
    return residual_sr_peak_elements(config.n_feats, scale)


role = tail_roles(upsampler=r"tail\.0\.(\d+\..*)", final=r"tail\.1\.(.*)")
"""`tail.0.*` is the upsampler, `tail.1.*` the final conv (MDSR's `tail.0`); the rest as named."""


NETWORK = Network(
    display_name="EDSR",
    build=build,
    receptive_field=receptive_field,
    activation_elements_per_pixel=activation_elements_per_pixel,
    role=role,
)
