"""Adding a network takes its module and one line of the table (ntire/models/networks.py).

The first half of this file is such a module: a toy network (a few convs and a PixelShuffle) and
its `NETWORK`. The tests add the table line (monkeypatched, so no other module is edited) and use
the toy through ntire's ordinary entry points: fit() trains it, inference upscales with it tiled
exactly as whole, and `ntire submit` ships it.
"""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from ntire.models.network import Architecture, Network

# ---------------------------------------------------------------------------------------------
# The new network's module: the class and, beside it, what ntire needs to know about it.


class Toy(nn.Module):
    """head conv -> `n_blocks` conv+ReLU -> conv to 3 s^2 channels -> PixelShuffle(s).

    Args:
        scale: upscaling factor.
        n_blocks: conv+ReLU layers between the head and the upsampler.
        n_feats: feature channels.
        rgb_range: pixel range of input and output.
    """

    def __init__(self, *, scale: int, n_blocks: int, n_feats: int, rgb_range: float = 255.0) -> None:
        super().__init__()
        self.scales = (scale,)
        self.rgb_range = rgb_range
        self.head = nn.Conv2d(3, n_feats, 3, padding=1)
        self.body = nn.Sequential(*[
            layer for _ in range(n_blocks) for layer in (nn.Conv2d(n_feats, n_feats, 3, padding=1), nn.ReLU())
        ])
        self.upsample = nn.Sequential(nn.Conv2d(n_feats, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor, scale: int) -> torch.Tensor:
        if scale not in self.scales:
            raise ValueError(f"this Toy upscales x{self.scales[0]}, not x{scale}")
        y = self.upsample(self.body(self.head(x / self.rgb_range)))
        return y * self.rgb_range


def build(config: Architecture) -> Toy:
    return Toy(scale=config.scales[0], n_blocks=config.n_blocks, n_feats=config.n_feats, rgb_range=config.rgb_range)


def receptive_field(config: Architecture) -> int:
    # One pixel per 3x3 conv, all on the LR grid (PixelShuffle only rearranges).
    return 1 + config.n_blocks + 1


def activation_elements_per_pixel(config: Architecture, scale: int) -> int:
    # A conv's input and output feature maps, the upsampler's conv output and its shuffled copy,
    # the input and the output.
    return 2 * config.n_feats + 3 * 3 * scale * scale + 3


NETWORK = Network(
    display_name="Toy",
    build=build,
    receptive_field=receptive_field,
    activation_elements_per_pixel=activation_elements_per_pixel,
)

# ---------------------------------------------------------------------------------------------
# The tests


@pytest.fixture
def toy_in_table(monkeypatch):
    """The one line a new network adds to ntire/models/networks.py."""
    from ntire.models.networks import NETWORKS

    monkeypatch.setitem(NETWORKS, "toy", NETWORK)


TOY = {"kind": "toy", "scales": [2], "n_blocks": 2, "n_feats": 8}


def test_the_config_refuses_the_toy_until_the_table_names_it(monkeypatch):
    from ntire.config import ModelConfig
    from ntire.errors import ConfigError

    with pytest.raises(ConfigError, match=r"model kind 'toy' is not a known network; known: edsr, mdsr$"):
        ModelConfig(kind="toy")
    with monkeypatch.context() as m:
        from ntire.models.networks import NETWORKS

        m.setitem(NETWORKS, "toy", NETWORK)
        config = ModelConfig(kind="toy", n_blocks=2, n_feats=8)
        assert config.name == "toy-b2f8"
        with pytest.raises(ConfigError, match="Toy models have exactly one scale"):
            ModelConfig(kind="toy", scales=(2, 3))


def test_toy_trains_upscales_tiled_as_whole_and_is_submitted(toy_in_table, dataset, tmp_path, capsys):
    from ntire.__main__ import main
    from ntire.config import build_config
    from ntire.figures import model_label
    from ntire.images import read_image
    from ntire.inference import upscale_image
    from ntire.models.build import build_model, receptive_field_radius
    from ntire.models.checkpoint import load_model
    from ntire.tiles import activation_bytes_per_pixel
    from ntire.training.fit import fit

    # Trained by fit(), eager on the CPU, validated and exported like any network.
    config = build_config(None, {
        "model": TOY,
        "data": {"source": str(dataset), "batch_size": 4, "patch_size": 16, "num_workers": 0,
                 "patches_per_sample": 4, "shuffle_buffer": 16},
        "max_steps": 4, "save_every": 4, "eval_every": 4, "log_every": 1, "keep_last": 1,
        "output_dir": str(tmp_path / "run"), "tracking": {"enabled": False}, "progress": False,
        "optim": {"lr": 1e-3},
    })
    assert config.model.kind == "toy"
    result = fit(config)
    assert result.step == 4 and result.validation.scales[2].psnr > 0
    model, loaded = load_model(result.model_dir)
    assert isinstance(model, Toy) and loaded == config.model
    torch.manual_seed(config.seed)
    fresh = build_model(config.model)
    assert not torch.equal(fresh.head.weight, model.head.weight)  # the steps changed it
    assert "Toy" in model_label(loaded.name)
    assert activation_bytes_per_pixel(loaded, 2) == (2 * 8 + 36 + 3) * 4

    # Tiled (tiles of 8 LR pixels, overlapping by the toy's receptive field) as whole.
    image = read_image(dataset / "DIV2K" / "DIV2K_valid_LR_bicubic" / "X2" / "0801x2.png")
    assert receptive_field_radius(loaded) == 4 and max(image.shape[:2]) > 3 * 8
    whole = upscale_image(model, loaded, image, scale=2, tile=None)
    tiled = upscale_image(model, loaded, image, scale=2, tile=8)
    assert whole.shape == (image.shape[0] * 2, image.shape[1] * 2, 3)
    np.testing.assert_array_equal(tiled, whole)

    # Submitted: `ntire submit` on the valid split, in tiles, scored against bicubic.
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({
        "name": "toy", "data": str(dataset), "split": "valid", "tile": 8,
        "bicubic": {"models": [{"checkpoint": str(result.model_dir), "scales": [2], "self_ensemble": False}]},
    }))
    out = tmp_path / "submission"
    capsys.readouterr()
    argv = ["submit", "--manifest", str(manifest), "--out", str(out), "--device", "cpu", "--no-progress",
            "--no-mlflow", "--no-compare"]
    assert main(argv) == 0
    assert "bicubic" in capsys.readouterr().out
    with zipfile.ZipFile(out / "bicubic_x2.zip") as z:
        submitted = z.read("0801x2.png")
    submitted_path = tmp_path / "submitted.png"
    submitted_path.write_bytes(submitted)
    np.testing.assert_array_equal(read_image(submitted_path), whole)


def test_a_new_network_needs_no_other_module(toy_in_table):
    """The toy's facts reach inference and init_from through the table alone."""
    from ntire.config import ModelConfig
    from ntire.models.build import build_model
    from ntire.models.checkpoint import init_from
    from ntire.tiles import plan_tiles

    config = ModelConfig(kind="toy", n_blocks=2, n_feats=8)
    budget = 40 * 2**20  # the whole image would need ~67 MB by the toy's own count
    plan = plan_tiles(config, 2, 400, 400, budget=budget)
    assert plan.tile is not None and plan.needed <= budget
    source, target = build_model(config), build_model(config)
    report = init_from(target, config, source.state_dict())  # the toy's keys are their own roles
    assert not report.skipped and torch.equal(target.body[0].weight, source.body[0].weight)
