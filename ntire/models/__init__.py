"""EDSR and MDSR exactly as the paper and the authors' released checkpoints define them."""

from ntire.models.blocks import MeanShift, ResBlock, Upsampler
from ntire.models.build import build_model, count_parameters, receptive_field_radius, unwrap
from ntire.models.edsr import EDSR
from ntire.models.mdsr import MDSR

__all__ = [
    "EDSR",
    "MDSR",
    "MeanShift",
    "ResBlock",
    "Upsampler",
    "build_model",
    "count_parameters",
    "receptive_field_radius",
    "unwrap",
]
