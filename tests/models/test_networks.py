"""The table of networks and what EDSR and MDSR declare in it: the numbers inference and init_from
used before the networks gave them themselves, pinned."""

from __future__ import annotations

import pytest
import torch

from ntire.config import ModelConfig
from ntire.figures import model_label
from ntire.models import edsr, mdsr
from ntire.models.build import build_model, receptive_field_radius
from ntire.models.networks import NETWORKS
from ntire.tiles import activation_bytes_per_pixel


def test_the_table_maps_each_kind_to_its_module():
    assert NETWORKS == {"edsr": edsr.NETWORK, "mdsr": mdsr.NETWORK}
    assert isinstance(build_model(ModelConfig(kind="edsr", n_blocks=1, n_feats=4)), edsr.EDSR)
    assert isinstance(build_model(ModelConfig(kind="mdsr", scales=(2, 3), n_blocks=1, n_feats=4)), mdsr.MDSR)


@pytest.mark.parametrize("n_blocks", [1, 2, 16, 32, 80])
@pytest.mark.parametrize("scales", [(2,), (3,), (4,), (2, 3, 4), (3, 4)])
def test_receptive_field_radii_are_the_ones_tiling_used_before(n_blocks, scales):
    # Values of the former single formula (head, [MDSR pre-processing], blocks, upsampler, tail).
    if len(scales) == 1:
        assert receptive_field_radius(ModelConfig(kind="edsr", scales=scales, n_blocks=n_blocks)) == 2 * n_blocks + 4
    assert receptive_field_radius(ModelConfig(kind="mdsr", scales=scales, n_blocks=n_blocks)) == 2 * n_blocks + 12


@pytest.mark.parametrize("kind", ["edsr", "mdsr"])
@pytest.mark.parametrize("n_feats", [8, 64, 256])
@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_activation_memory_is_the_one_the_planner_used_before(kind, n_feats, scale, dtype):
    config = ModelConfig(kind=kind, scales=(scale,), n_feats=n_feats)
    s2 = scale * scale
    assert activation_bytes_per_pixel(config, scale, dtype) == ((2 + 2 * s2) * n_feats + 3 * s2 + 6) * dtype.itemsize


@pytest.mark.parametrize(
    "key, edsr_role, mdsr_role",
    [
        ("head.0.weight", "head.0.weight", "head.0.weight"),
        ("body.3.body.0.weight", "body.3.body.0.weight", "body.3.body.0.weight"),
        ("tail.0.0.weight", "upsampler.0.weight", "tail.0.0.weight"),
        ("tail.0.2.bias", "upsampler.2.bias", "tail.0.2.bias"),
        ("tail.1.weight", "final.weight", "tail.1.weight"),
        ("upsample.1.0.weight", "upsample.1.0.weight", "upsampler.1.0.weight"),
        ("tail.0.weight", "tail.0.weight", "final.weight"),
        ("pre_process.0.0.body.0.weight", "pre_process.0.0.body.0.weight", "pre_process.0.0.body.0.weight"),
    ],
)
def test_init_roles(key, edsr_role, mdsr_role):
    assert (edsr.role(key), mdsr.role(key)) == (edsr_role, mdsr_role)


def test_display_names_label_the_figures():
    assert model_label("edsr-baseline") == "EDSR-baseline" and model_label("mdsr", plus=True) == "MDSR+"
    assert [n.display_name for n in NETWORKS.values()] == ["EDSR", "MDSR"]
