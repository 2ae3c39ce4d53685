"""BasicSR and mmagic EDSR files load by path and compute what those toolboxes' networks compute.

The files are built here from ntire weights renamed into each toolbox's layout; the references
are small plain-torch forwards written from each toolbox's EDSR description ([0, 1] input, mean
subtracted and scaled by BasicSR's img_range 255, or by mmagic's std 1), independent of ntire.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ntire.__main__ import main
from ntire.config import DIV2K_RGB_MEAN, ModelConfig
from ntire.errors import CheckpointError
from ntire.models.build import build_model
from ntire.models.checkpoint import init_from, load_model, read_metadata
from ntire.models.official import infer_config, load_released, load_released_file
from ntire.models.zoo import read_zoo_file

# ---------------------------------------------------------------- the toolboxes' layouts and forwards


def to_basicsr(ntire_sd: dict[str, torch.Tensor], n_blocks: int) -> dict[str, torch.Tensor]:
    """ntire (released-layout) EDSR weights under BasicSR's names; mean shifts dropped (BasicSR
    keeps its mean as a plain attribute, not in the state_dict)."""
    out = {}
    for key, value in ntire_sd.items():
        if key.startswith(("sub_mean.", "add_mean.")):
            continue
        key = re.sub(r"^head\.0\.", "conv_first.", key)
        key = re.sub(r"^body\.(\d+)\.body\.0\.", r"body.\1.conv1.", key)
        key = re.sub(r"^body\.(\d+)\.body\.2\.", r"body.\1.conv2.", key)
        key = re.sub(rf"^body\.{n_blocks}\.", "conv_after_body.", key)
        key = re.sub(r"^tail\.0\.(\d+)\.", r"upsample.\1.", key)
        key = re.sub(r"^tail\.1\.", "conv_last.", key)
        out[key] = value.clone()
    return out


def to_mmagic(ntire_sd: dict[str, torch.Tensor], n_blocks: int, prefix: str = "generator.") -> dict:
    """The same tensors under mmagic EDSRNet's names (upsampler stage k is
    `upsample.k.upsample_conv`), prefixed as in an mmagic model's state_dict."""
    out = {}
    for key, value in to_basicsr(ntire_sd, n_blocks).items():
        m = re.match(r"upsample\.(\d+)\.(weight|bias)$", key)
        if m:
            key = f"upsample.{int(m.group(1)) // 2}.upsample_conv.{m.group(2)}"
        out[prefix + key] = value
    return out


def conv(x, sd, name):
    return F.conv2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=1)


def edsr_trunk(x, sd, res_scale, upsampler_keys):
    """conv_first, residual blocks (x + res_scale * conv2(relu(conv1(x)))), conv_after_body plus
    the global skip, then conv/pixel-shuffle stages and conv_last."""
    feat = conv(x, sd, "conv_first")
    res = feat
    i = 0
    while f"body.{i}.conv1.weight" in sd:
        res = res + conv(F.relu(conv(res, sd, f"body.{i}.conv1")), sd, f"body.{i}.conv2") * res_scale
        i += 1
    res = conv(res, sd, "conv_after_body") + feat
    for name in upsampler_keys:
        w = sd[f"{name}.weight"]
        r = round((w.shape[0] / w.shape[1]) ** 0.5)
        res = F.pixel_shuffle(conv(res, sd, name), r)
    return conv(res, sd, "conv_last")


def basicsr_edsr(sd, x01, res_scale, img_range=255.0, mean=DIV2K_RGB_MEAN):
    """BasicSR's EDSR on [0, 1] input: `(x - mean) * img_range` in, `x / img_range + mean` out."""
    mean = torch.tensor(mean).view(1, 3, 1, 1)
    ups = [f"upsample.{j}" for j in range(0, 20, 2) if f"upsample.{j}.weight" in sd]
    return edsr_trunk((x01 - mean) * img_range, sd, res_scale, ups) / img_range + mean


def mmagic_edsr(sd, x01, res_scale, std=(1.0, 1.0, 1.0), mean=DIV2K_RGB_MEAN):
    """mmagic's EDSRNet on [0, 1] input: `(x - mean) / std` in, `x * std + mean` out."""
    sd = {k.removeprefix("generator."): v for k, v in sd.items()}
    mean, std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    ups = [f"upsample.{j}.upsample_conv" for j in range(10) if f"upsample.{j}.upsample_conv.weight" in sd]
    return edsr_trunk((x01 - mean) / std, sd, res_scale, ups) * std + mean


def random_edsr(config: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_model(config).state_dict()


def assert_same_sr(loaded, reference_01, x255, scale):
    """ntire's output on 0-255 input equals 255 x the toolbox's on the same pixels / 255."""
    with torch.no_grad():
        ours = loaded(x255, scale)
    theirs = reference_01 * 255
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-3)


def pixels(size=(7, 6)):
    torch.manual_seed(1)
    return torch.randint(0, 256, (1, 3, *size)).float()


CONFIGS = [
    pytest.param(ModelConfig(kind="edsr", scales=(2,), n_blocks=2, n_feats=8), id="f8b2x2"),
    pytest.param(ModelConfig(kind="edsr", scales=(3,), n_blocks=1, n_feats=8), id="f8b1x3"),
    pytest.param(ModelConfig(kind="edsr", scales=(4,), n_blocks=3, n_feats=12), id="f12b3x4"),
    # BasicSR's "M" model as released (F=64, B=16, residual scale 1)
    pytest.param(ModelConfig.preset("edsr-baseline", 2), id="Mx2-f64b16"),
    # "L" width: F=256 means residual scale 0.1 (few blocks to stay quick on 2 cores)
    pytest.param(ModelConfig.preset("edsr", 4, n_blocks=2), id="L-f256b2x4"),
]

# ---------------------------------------------------------------- BasicSR


@pytest.mark.parametrize("config", CONFIGS)
def test_basicsr_file_computes_basicsrs_sr_image(tmp_path, config):
    basicsr_sd = to_basicsr(random_edsr(config, 0), config.n_blocks)
    path = tmp_path / "EDSR_x_official-0000.pth"
    torch.save({"params": basicsr_sd}, path)
    model, inferred = load_released(path)
    assert inferred == config  # width, depth, scale from shapes; residual scale from F
    x = pixels()
    with torch.no_grad():
        reference = basicsr_edsr(basicsr_sd, x / 255, config.res_scale)
    assert_same_sr(model, reference, x, config.scales[0])


@pytest.mark.parametrize(
    "name, config",
    [("edsr-baseline", ModelConfig.preset("edsr-baseline", s)) for s in (2, 3, 4)]
    + [("edsr", ModelConfig.preset("edsr", s)) for s in (2, 3, 4)],
)
def test_full_size_basicsr_files_infer_the_official_configs(name, config):
    # EDSR_Mx{2,3,4}_f64b16 and EDSR_Lx{2,3,4}_f256b32: shapes only (meta tensors)
    with torch.device("meta"):
        sd = build_model(config).state_dict()
    zoo = read_zoo_file({"params": to_basicsr(sd, config.n_blocks)})
    assert zoo is not None and zoo.toolbox == "basicsr"
    inferred = infer_config(zoo.state_dict)
    assert inferred == config and inferred.name == name
    assert inferred.res_scale == (0.1 if name == "edsr" else 1.0)
    assert inferred.rgb_range == 255.0 and inferred.rgb_mean == DIV2K_RGB_MEAN


def test_params_ema_is_preferred_and_said(tmp_path):
    config = ModelConfig(kind="edsr", scales=(2,), n_blocks=1, n_feats=8)
    plain, ema = (to_basicsr(random_edsr(config, seed), 1) for seed in (0, 1))
    torch.save({"params": plain, "params_ema": ema}, tmp_path / "net_g_ema.pth")
    said = []
    model, _ = load_model(tmp_path / "net_g_ema.pth", say=said.append)
    x = pixels()
    with torch.no_grad():
        assert_same_sr(model, basicsr_edsr(ema, x / 255, 1.0), x, 2)
    assert len(said) == 1 and "\n" not in said[0]
    assert said[0].startswith("net_g_ema.pth: BasicSR EDSR F=8 B=1 x2, weights 'params_ema'")
    assert "preferred over 'params'" in said[0] and "residual scale 1" in said[0]
    assert "img_range 255" in said[0] and "DIV2K mean (0.4488, 0.4371, 0.404)" in said[0]

    torch.save({"params": plain}, tmp_path / "net_g.pth")
    _, _, source = load_released_file(tmp_path / "net_g.pth")
    assert (source.layout, source.weights) == ("basicsr", "params")
    assert "weights 'params' (no 'params_ema' in the file)" in source.describe(config)


def test_authors_files_say_nothing(tmp_path):
    config = ModelConfig(kind="edsr", scales=(2,), n_blocks=1, n_feats=4)
    torch.save(build_model(config).state_dict(), tmp_path / "edsr_x2.pt")
    said = []
    load_model(tmp_path / "edsr_x2.pt", say=said.append)
    assert said == []
    assert load_released_file(tmp_path / "edsr_x2.pt")[2].layout == "authors"


def test_module_prefix_inside_params_is_stripped(tmp_path):
    config = ModelConfig(kind="edsr", scales=(3,), n_blocks=1, n_feats=4)
    sd = to_basicsr(random_edsr(config, 0), 1)
    torch.save({"params": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "ddp.pth")
    assert load_released(tmp_path / "ddp.pth")[1] == config


def one_line_error(path, match):
    with pytest.raises(CheckpointError, match=match) as e:
        load_model(path)
    assert "\n" not in str(e.value) and path.name in str(e.value)
    return str(e.value)


def z(*shape):
    return torch.zeros(*shape or (1,))


@pytest.mark.parametrize(
    "entry, keys, found",
    [
        ("params_ema", ["conv_first.weight", "body.0.rdb1.conv1.weight", "conv_body.weight", "conv_up1.weight"],
         "RRDBNet"),
        ("params", ["conv_first.weight", "body.0.residual_group.0.rcab.0.weight", "conv_after_body.weight",
                    "upsample.0.weight", "conv_last.weight"], "RCAN"),
        ("params", ["conv_first.weight", "patch_embed.norm.weight", "conv_after_body.weight",
                    "layers.0.residual_group.blocks.0.attn.relative_position_bias_table", "upsample.0.weight",
                    "conv_last.weight"], "SwinIR"),
        ("params_ema", ["conv_first.weight", "layers.0.residual_group.blocks.0.conv_block.cab.0.weight",
                        "layers.0.residual_group.overlap_attn.qkv.weight", "conv_last.weight"], "HAT"),
        ("params", ["conv_first.weight", "body.0.conv1.weight", "body.0.conv2.weight", "upconv1.weight",
                    "conv_hr.weight", "conv_last.weight"], "MSRResNet"),
        ("params", ["body.0.weight", "body.1.weight", "body.2.weight"], "SRVGGNetCompact"),
    ],
)
def test_other_basicsr_networks_are_named_in_one_line(tmp_path, entry, keys, found):
    path = tmp_path / "other.pth"
    torch.save({entry: {k: z() for k in keys}}, path)
    msg = one_line_error(path, rf"a BasicSR checkpoint \('{entry}'\) of {found}.*not EDSR")
    assert "ntire loads EDSR/MDSR networks only" in msg


def test_unknown_basicsr_network_lists_its_keys(tmp_path):
    torch.save({"params": {"conv_a.weight": z(), "conv_b.weight": z()}}, tmp_path / "what.pth")
    one_line_error(tmp_path / "what.pth", r"BasicSR checkpoint \('params'\) of a network that is not EDSR "
                   r"\(keys: conv_a.weight, conv_b.weight\)")


def test_rcan_in_its_own_edsr_style_layout_is_named(tmp_path):
    keys = ["sub_mean.weight", "head.0.weight", "body.0.body.0.body.0.weight", "body.0.body.0.body.3.conv_du.0.weight"]
    torch.save({k: z() for k in keys}, tmp_path / "RCAN_BIX2.pt")
    one_line_error(tmp_path / "RCAN_BIX2.pt", "a state_dict of RCAN, not EDSR/MDSR")


def test_x8_and_odd_upsamplers_are_explained(tmp_path):
    config = ModelConfig(kind="edsr", scales=(4,), n_blocks=1, n_feats=4)
    sd = to_basicsr(random_edsr(config, 0), 1)
    sd["upsample.4.weight"], sd["upsample.4.bias"] = z(16, 4, 3, 3), z(16)
    torch.save({"params": sd}, tmp_path / "x8.pth")
    one_line_error(tmp_path / "x8.pth", r"upsampling x8 \(3 x2 stages\); ntire's networks upscale x2, x3 and x4")
    sd = to_basicsr(random_edsr(ModelConfig(kind="edsr", scales=(2,), n_blocks=1, n_feats=4), 0), 1)
    sd["upsample.0.weight"] = z(20, 4, 3, 3)
    torch.save({"params": sd}, tmp_path / "odd.pth")
    one_line_error(tmp_path / "odd.pth", r"upsampler of 1 stage\(s\) with \[20\] output channels")


def test_stray_keys_and_broken_blocks_are_named(tmp_path):
    sd = to_basicsr(random_edsr(ModelConfig(kind="edsr", scales=(2,), n_blocks=2, n_feats=4), 0), 2)
    torch.save({"params": {**sd, "extra.weight": z()}}, tmp_path / "extra.pth")
    one_line_error(tmp_path / "extra.pth", "BasicSR EDSR state_dict with keys EDSR does not have: extra.weight")
    gone = {k: v for k, v in sd.items() if not k.startswith("body.0.")}
    torch.save({"params": gone}, tmp_path / "gone.pth")
    one_line_error(tmp_path / "gone.pth", r"not numbered 0..B-1: \[1\]")
    torch.save({"params": {"conv_first.weight": z(), "note": "hi"}}, tmp_path / "note.pth")
    one_line_error(tmp_path / "note.pth", "'params' is not a state_dict: entries that are not named tensors: note")


class Payload:
    """Unpickling this would create a file: stands in for code in a hostile checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_hostile_pickle_in_params_is_refused_unrun(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"params": {"conv_first.weight": z(), "x": Payload(marker)}}, tmp_path / "evil.pth")
    one_line_error(tmp_path / "evil.pth", "refused.*run code")
    assert not marker.exists()


# ---------------------------------------------------------------- mmagic


@pytest.mark.parametrize("config", CONFIGS[:3])
def test_mmagic_file_computes_mmagics_sr_image(tmp_path, config):
    mm = to_mmagic(random_edsr(config, 0), config.n_blocks)
    checkpoint = {"meta": {"mmedit_version": "0.14.0", "iter": 300000, "config": "model = dict(...)"},
                  "state_dict": mm}
    torch.save(checkpoint, tmp_path / "edsr_x2c64b16_1x16_300k_div2k.pth")
    said = []
    model, inferred = load_model(tmp_path / "edsr_x2c64b16_1x16_300k_div2k.pth", say=said.append)
    assert inferred == config
    x = pixels()
    with torch.no_grad():
        assert_same_sr(model, mmagic_edsr(mm, x / 255, config.res_scale), x, config.scales[0])
    assert "mmagic EDSR" in said[0] and "weights 'state_dict/generator'" in said[0]
    assert "/ 255" in said[0] and "std 1" in said[0]


def test_mmagic_ema_generator_is_preferred(tmp_path):
    config = ModelConfig(kind="edsr", scales=(2,), n_blocks=1, n_feats=8)
    plain = to_mmagic(random_edsr(config, 0), 1)
    ema = to_mmagic(random_edsr(config, 1), 1, prefix="generator_ema.module.")
    ema["generator_ema.steps"] = torch.tensor(10)
    torch.save({"state_dict": {**plain, **ema}}, tmp_path / "ema.pth")
    model, _, source = load_released_file(tmp_path / "ema.pth")
    assert (source.layout, source.weights, source.others) == ("mmagic", "state_dict/generator_ema",
                                                              ("state_dict/generator",))
    x = pixels()
    reference = {k.replace("generator_ema.module.", "generator."): v for k, v in ema.items()}
    with torch.no_grad():
        assert_same_sr(model, mmagic_edsr(reference, x / 255, 1.0), x, 2)


def test_other_mmagic_network_is_named(tmp_path):
    keys = ["generator.conv_first.weight", "generator.body.0.rdb1.conv1.weight", "generator.conv_body.weight"]
    torch.save({"state_dict": {k: z() for k in keys}}, tmp_path / "esrgan.pth")
    one_line_error(tmp_path / "esrgan.pth", r"an mmagic checkpoint \('state_dict/generator'\) of RRDBNet")


# ---------------------------------------------------------------- every command that takes a checkpoint


@pytest.fixture
def basicsr_x2(tmp_path):
    config = ModelConfig(kind="edsr", scales=(2,), n_blocks=2, n_feats=8)
    sd = to_basicsr(random_edsr(config, 3), 2)
    path = tmp_path / "EDSR_Mx2_f8b2_DIV2K_official-00000000.pth"
    torch.save({"params": to_basicsr(random_edsr(config, 4), 2), "params_ema": sd}, path)
    return path, sd, config


def test_convert_says_which_params_and_records_them(basicsr_x2, tmp_path, capsys):
    path, sd, config = basicsr_x2
    assert main(["convert", str(path), str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "BasicSR EDSR F=8 B=2 x2, weights 'params_ema' (preferred over 'params')" in printed
    metadata = read_metadata(tmp_path / "out")
    assert metadata["source_layout"] == "basicsr" and metadata["source_weights"] == "params_ema"
    model, loaded_config = load_model(tmp_path / "out")
    assert loaded_config == config
    x = pixels()
    with torch.no_grad():
        assert_same_sr(model, basicsr_edsr(sd, x / 255, 1.0), x, 2)


def test_upscale_cli_takes_a_basicsr_file(basicsr_x2, tmp_path, rng):
    from ntire.inference import upscale_image

    path, sd, _ = basicsr_x2
    image = rng.integers(0, 256, (9, 10, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "lr.png")
    args = ["upscale", "--checkpoint", str(path), "--scale", "2", "--device", "cpu"]
    assert main([*args, str(tmp_path / "lr.png"), str(tmp_path / "sr.png")]) == 0
    got = np.asarray(Image.open(tmp_path / "sr.png"))
    np.testing.assert_array_equal(got, upscale_image(*load_model(path), image, scale=2))
    with torch.no_grad():  # BasicSR's own 8-bit output: clamp to [0, 1], x 255, round
        x01 = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
        theirs = (basicsr_edsr(sd, x01, 1.0).clamp(0, 1) * 255)[0].permute(1, 2, 0).numpy()
    assert np.abs(got.astype(float) - theirs).max() <= 0.5 + 1e-3  # rounding only


def test_init_from_a_basicsr_x2_file(basicsr_x2):
    path, _, _ = basicsr_x2
    source, source_config = load_model(path)
    x4 = ModelConfig(kind="edsr", scales=(4,), n_blocks=2, n_feats=8)
    report = init_from(build_model(x4), x4, source.state_dict())
    assert "body.0.body.0.weight" in report.transferred and "head.0.weight" in report.transferred
    assert all(k.startswith("tail.0.") for k in report.skipped)
