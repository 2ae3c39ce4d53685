import pytest
import torch
import torch.nn.functional as F

from ntire.config import DIV2K_RGB_MEAN, ModelConfig
from ntire.models.build import build_model, count_parameters, receptive_field_radius
from ntire.models.edsr import EDSR

# Released parameter counts as printed in the paper / model zoo.
RELEASED = {
    ("edsr-baseline", 2): "1.37M",
    ("edsr-baseline", 3): "1.55M",
    ("edsr-baseline", 4): "1.52M",
    ("edsr", 2): "40.7M",
    ("edsr", 3): "43.7M",
    ("edsr", 4): "43.1M",
    ("mdsr-baseline", None): "3.23M",
    ("mdsr", None): "7.95M",
}


def printed(n: int, like: str) -> str:
    decimals = len(like.split(".")[1]) - 1
    return f"{n / 1e6:.{decimals}f}M"


@pytest.mark.parametrize("name, scale", list(RELEASED))
def test_parameter_counts_equal_the_released_ones(name, scale):
    with torch.device("meta"):  # full size, no memory or init cost
        model = build_model(ModelConfig.preset(name, scale))
    assert printed(count_parameters(model), RELEASED[name, scale]) == RELEASED[name, scale]


def test_exact_count_of_edsr_x2():
    with torch.device("meta"):
        model = build_model(ModelConfig.preset("edsr", 2))
    assert count_parameters(model) == 40_729_603


@pytest.mark.parametrize("name", ["edsr-baseline", "edsr"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_full_size_output_shapes(name, scale):
    with torch.device("meta"):
        model = build_model(ModelConfig.preset(name, scale))
        out = model(torch.empty(2, 3, 7, 5))
    assert out.shape == (2, 3, 7 * scale, 5 * scale)


def edsr_by_hand(sd: dict, x: torch.Tensor, n_blocks: int, res_scale: float, scale: int) -> torch.Tensor:
    """The paper's EDSR written out with functional ops over the released key names."""
    mean = torch.tensor(DIV2K_RGB_MEAN).view(1, 3, 1, 1) * 255

    def c(t, key):
        return F.conv2d(t, sd[f"{key}.weight"], sd[f"{key}.bias"], padding=1)

    h = c(x - mean, "head.0")
    r = h
    for i in range(n_blocks):
        r = c(F.relu(c(r, f"body.{i}.body.0")), f"body.{i}.body.2") * res_scale + r
    r = c(r, f"body.{n_blocks}") + h
    if scale == 3:
        r = F.pixel_shuffle(c(r, "tail.0.0"), 3)
    else:
        r = F.pixel_shuffle(c(r, "tail.0.0"), 2)
        if scale == 4:
            r = F.pixel_shuffle(c(r, "tail.0.2"), 2)
    return c(r, "tail.1") + mean


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("res_scale", [1.0, 0.1])
def test_forward_matches_the_paper_written_out(scale, res_scale):
    torch.manual_seed(scale)
    model = EDSR(scale=scale, n_blocks=2, n_feats=8, res_scale=res_scale).eval()
    x = torch.rand(2, 3, 6, 5) * 255
    with torch.no_grad():
        out = model(x)
        expected = edsr_by_hand(model.state_dict(), x, 2, res_scale, scale)
    assert out.shape == (2, 3, 6 * scale, 5 * scale)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-3)


def test_key_names_are_the_released_ones():
    keys = set(EDSR(scale=4, n_blocks=2, n_feats=4).state_dict())
    modules = ["sub_mean", "add_mean", "head.0", "body.2", "tail.0.0", "tail.0.2", "tail.1"]
    expected = {f"{m}.{p}" for m in modules for p in ["weight", "bias"]}
    expected |= {f"body.{i}.body.{j}.{p}" for i in range(2) for j in (0, 2) for p in ("weight", "bias")}
    assert keys == expected
    assert "tail.0.2.weight" not in EDSR(scale=2, n_blocks=2, n_feats=4).state_dict()


def test_scale_argument_is_optional_but_checked():
    model = EDSR(scale=3, n_blocks=1, n_feats=4)
    x = torch.rand(1, 3, 4, 4)
    assert torch.equal(model(x), model(x, 3))
    with pytest.raises(ValueError, match="x3.*not x2"):
        model(x, 2)


def test_mean_shift_is_not_trained():
    model = EDSR(scale=2, n_blocks=1, n_feats=4)
    names = {n for n, _ in model.named_parameters()}
    assert not any(n.startswith(("sub_mean", "add_mean")) for n in names)
    assert model.sub_mean.weight.requires_grad is False


@pytest.mark.parametrize("kind", ["edsr", "mdsr"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_receptive_field_radius_is_exactly_what_gradients_reach(kind, scale):
    torch.manual_seed(0)
    config = ModelConfig(kind=kind, scales=(scale,), n_blocks=1, n_feats=4)
    model = build_model(config)
    x = (torch.rand(1, 3, 32, 32) * 255).requires_grad_()
    y = model(x, scale)
    reach = 0
    for q in range(12 * scale, 12 * scale + scale):  # every phase of an output pixel in its LR cell
        (g,) = torch.autograd.grad(y[0, 0, q, q], x, retain_graph=True)
        cols = (g[0].abs().sum((0, 1)) != 0).nonzero().flatten()
        reach = max(reach, q // scale - int(cols.min()), int(cols.max()) - q // scale)
    assert receptive_field_radius(config) == reach


def test_receptive_field_radius_of_the_presets():
    assert receptive_field_radius(ModelConfig.preset("edsr-baseline", 2)) == 1 + 32 + 1 + 1 + 1
    assert receptive_field_radius(ModelConfig.preset("edsr", 4)) == 1 + 64 + 1 + 1 + 1
    assert receptive_field_radius(ModelConfig.preset("mdsr")) == 1 + 8 + 160 + 1 + 1 + 1
