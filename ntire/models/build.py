"""Build a network from its ModelConfig, and the facts about it other code needs."""

from __future__ import annotations

import math
from fractions import Fraction

from torch import nn

from ntire.config import ModelConfig
from ntire.models.edsr import EDSR
from ntire.models.mdsr import MDSR


def build_model(config: ModelConfig) -> nn.Module:
    """The EDSR or MDSR network `config` describes, freshly initialised (PyTorch defaults)."""
    common = dict(
        n_blocks=config.n_blocks,
        n_feats=config.n_feats,
        res_scale=config.res_scale,
        rgb_range=config.rgb_range,
        rgb_mean=config.rgb_mean,
    )
    if config.kind == "mdsr":
        return MDSR(scales=config.scales, **common)
    return EDSR(scale=config.scales[0], **common)


def receptive_field_radius(config: ModelConfig) -> int:
    """How far, in LR pixels, an output pixel can see from the LR pixel it lies in.

    Sums every conv's (k-1)/2 along the path: head 1, MDSR pre-processing 4 x 2, two per block,
    body conv 1, then the upsampler and tail convs, whose reach in their finer grid is divided by
    that grid's factor. The fractional part is rounded up, since an output pixel at the edge of its
    LR cell reaches into the neighbouring cell. For MDSR, the largest over its scales. Tiles that
    overlap by at least this much give the same output as the whole image.
    """
    radii = []
    for scale in config.scales:
        r = Fraction(1)  # head
        if config.kind == "mdsr":
            r += 4 * 2  # two 5x5 residual blocks
        r += 2 * config.n_blocks + 1  # blocks, body conv
        grid = 1
        for step in ([2] * (scale // 2)) if scale in (2, 4) else [scale]:
            r += Fraction(1, grid)  # upsampler conv at the current grid
            grid *= step
        r += Fraction(1, grid)  # tail conv at the output grid
        radii.append(math.ceil(r))
    return max(radii)


def count_parameters(model: nn.Module) -> int:
    """Learnable parameters (the fixed mean shifts are buffers and not counted).

    This is the convention of the paper's counts: EDSR x2 has 40,729,603 ("40.7M").
    """
    return sum(p.numel() for p in model.parameters())


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside training wrappers: DDP, DataParallel or DeepSpeed (`.module`) and
    torch.compile (`._orig_mod`).

    Not `accelerator.unwrap_model`, which imports DeepSpeed whenever it is installed (seconds, and
    a warning on every CPU run), and is not needed outside training.
    """
    while True:
        for attr in ("module", "_orig_mod"):
            inner = getattr(model, attr, None)
            if isinstance(inner, nn.Module):
                model = inner
                break
        else:
            return model
