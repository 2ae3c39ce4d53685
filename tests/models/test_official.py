import pickle

import pytest
import torch

from ntire.config import DIV2K_RGB_MEAN, MODEL_PRESETS, ModelConfig
from ntire.errors import CheckpointError
from ntire.models.blocks import MeanShift
from ntire.models.build import build_model
from ntire.models.official import infer_config, load_released


def save_released(model: torch.nn.Module, path):
    torch.save(model.state_dict(), path)
    return path


def same_outputs(a, b, config: ModelConfig, size=(5, 6)):
    x = torch.rand(1, 3, *size) * 255
    with torch.no_grad():
        for s in config.scales:
            assert torch.equal(a(x, s), b(x, s))


@pytest.mark.parametrize(
    "file_name, config",
    [
        ("edsr_baseline_x2-1bc95232.pt", ModelConfig.preset("edsr-baseline", 2)),
        # F=256 with a small B: the authors' residual scaling 0.1 must be inferred from F
        ("edsr_x4-4f62e9ef.pt", ModelConfig.preset("edsr", 4, n_blocks=1)),
        ("edsr_x3-ea3ef2c6.pt", ModelConfig(kind="edsr", scales=(3,), n_blocks=2, n_feats=16)),
        ("mdsr-4a78bedf.pt", ModelConfig(kind="mdsr", scales=(2, 3, 4), n_blocks=3, n_feats=8)),
    ],
)
def test_released_layout_round_trip(tmp_path, file_name, config):
    torch.manual_seed(0)
    original = build_model(config).eval()
    path = save_released(original, tmp_path / file_name)
    loaded, inferred = load_released(path)
    assert inferred == config
    assert not loaded.training
    same_outputs(original, loaded, config)


@pytest.mark.parametrize("name", list(MODEL_PRESETS))
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_infers_every_full_size_preset(name, scale):
    config = ModelConfig.preset(name, None if name.startswith("mdsr") else scale)
    with torch.device("meta"):  # shapes are all inference needs, except the mean-shift values
        sd = dict(build_model(config).state_dict())
    sd["sub_mean.bias"] = MeanShift(255.0, DIV2K_RGB_MEAN, -1).bias
    assert infer_config(sd) == config
    assert infer_config(sd).res_scale == (0.1 if config.n_feats == 256 else 1.0)


def test_wrapper_prefix_is_stripped(tmp_path):
    config = ModelConfig(kind="edsr", scales=(2,), n_blocks=1, n_feats=4)
    model = build_model(config)
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "dp.pt")
    loaded, inferred = load_released(tmp_path / "dp.pt")
    assert inferred == config
    same_outputs(model, loaded, config)


def test_rgb_range_one_is_inferred_from_the_mean_shift(tmp_path):
    config = ModelConfig(kind="edsr", scales=(2,), n_blocks=1, n_feats=4, rgb_range=1.0)
    path = save_released(build_model(config), tmp_path / "m.pt")
    assert load_released(path)[1] == config


class Payload:
    """Unpickling this creates a file: stands in for arbitrary code in a hostile checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_payload_is_live_when_unpickled_unsafely(tmp_path):
    # Proves the next test would notice code execution: plain pickle does run it.
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker))).close()
    assert marker.exists()


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_without_running_it(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "edsr_x2-evil.pt"
    obj = {"head.0.weight": torch.zeros(1), "payload": Payload(marker)}
    if writer == "torch.save":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj))
    with pytest.raises(CheckpointError, match="edsr_x2-evil.pt") as e:
        load_released(path)
    assert not marker.exists()
    if writer == "torch.save":  # torch.load names the global it refused to import
        assert "run code" in str(e.value) and "open" in str(e.value)


def test_random_bytes_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(CheckpointError, match="noise.pt.*not a PyTorch state_dict"):
        load_released(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="absent.pt.*no such"):
        load_released(tmp_path / "absent.pt")


def test_other_network_is_refused(tmp_path):
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    path = save_released(other, tmp_path / "resnetish.pt")
    with pytest.raises(CheckpointError, match="resnetish.pt.*not an EDSR/MDSR"):
        load_released(path)


def test_not_a_state_dict_is_refused(tmp_path):
    torch.save({"epoch": 3, "state": {"head.0.weight": torch.zeros(1)}}, tmp_path / "train.pt")
    with pytest.raises(CheckpointError, match="train.pt.*not named tensors: epoch, state"):
        load_released(tmp_path / "train.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="list.pt.*holds a list"):
        load_released(tmp_path / "list.pt")


def test_missing_and_misshaped_keys_are_listed(tmp_path):
    sd = build_model(ModelConfig(kind="edsr", scales=(2,), n_blocks=2, n_feats=4)).state_dict()
    gone = dict(sd)
    del gone["body.1.body.2.weight"]
    torch.save(gone, tmp_path / "gone.pt")
    with pytest.raises(CheckpointError, match=r"gone.pt.*missing body\.1\.body\.2\.weight"):
        load_released(tmp_path / "gone.pt")
    bent = dict(sd)
    bent["body.0.body.0.bias"] = torch.zeros(5)
    torch.save(bent, tmp_path / "bent.pt")
    with pytest.raises(CheckpointError, match=r"bent.pt.*wrong shape.*body\.0\.body\.0\.bias"):
        load_released(tmp_path / "bent.pt")
    no_body_conv = {k: v for k, v in sd.items() if not k.startswith("body.2.")}
    with pytest.raises(CheckpointError, match=r"body\.2\.weight"):
        infer_config(no_body_conv)


def test_odd_upsampler_width_is_explained():
    sd = dict(build_model(ModelConfig(kind="edsr", scales=(2,), n_blocks=1, n_feats=4)).state_dict())
    sd["tail.0.0.weight"] = torch.zeros(20, 4, 3, 3)
    with pytest.raises(CheckpointError, match="tail.0.0.weight.*20 output channels"):
        infer_config(sd)
