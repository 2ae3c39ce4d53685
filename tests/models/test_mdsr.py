import pytest
import torch
import torch.nn.functional as F

from ntire.config import DIV2K_RGB_MEAN, ModelConfig
from ntire.models.build import build_model
from ntire.models.mdsr import MDSR


def tiny(**kw) -> MDSR:
    torch.manual_seed(0)
    return MDSR(scales=(2, 3, 4), n_blocks=2, n_feats=8, **kw)


@pytest.mark.parametrize("name", ["mdsr-baseline", "mdsr"])
def test_full_size_output_shapes_for_every_scale(name):
    with torch.device("meta"):
        model = build_model(ModelConfig.preset(name))
        for scale in (2, 3, 4):
            assert model(torch.empty(1, 3, 7, 5), scale).shape == (1, 3, 7 * scale, 5 * scale)


def mdsr_by_hand(sd: dict, x: torch.Tensor, n_blocks: int, k: int, scale: int) -> torch.Tensor:
    """MDSR written out with functional ops over the released key names (res_scale 1)."""
    mean = torch.tensor(DIV2K_RGB_MEAN).view(1, 3, 1, 1) * 255

    def c(t, key, pad=1):
        return F.conv2d(t, sd[f"{key}.weight"], sd[f"{key}.bias"], padding=pad)

    h = c(x - mean, "head.0")
    for j in range(2):  # two 5x5 residual blocks
        p = f"pre_process.{k}.{j}.body"
        h = c(F.relu(c(h, f"{p}.0", 2)), f"{p}.2", 2) + h
    r = h
    for i in range(n_blocks):
        r = c(F.relu(c(r, f"body.{i}.body.0")), f"body.{i}.body.2") + r
    r = c(r, f"body.{n_blocks}") + h  # global skip from the pre-processed features
    for j in range(1 if scale == 3 else scale // 2):
        r = F.pixel_shuffle(c(r, f"upsample.{k}.{2 * j}"), 3 if scale == 3 else 2)
    return c(r, "tail.0") + mean


@pytest.mark.parametrize("k, scale", [(0, 2), (1, 3), (2, 4)])
def test_forward_matches_the_paper_written_out(k, scale):
    model = tiny().eval()
    x = torch.rand(1, 3, 6, 7) * 255
    with torch.no_grad():
        out = model(x, scale)
        expected = mdsr_by_hand(model.state_dict(), x, 2, k, scale)
    assert out.shape == (1, 3, 6 * scale, 7 * scale)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-3)


def test_pre_process_blocks_use_5x5_kernels():
    model = tiny()
    for branch in model.pre_process:
        for block in branch:
            assert block.body[0].kernel_size == (5, 5) and block.body[2].kernel_size == (5, 5)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_only_the_requested_branches_run(scale):
    model = tiny()
    ran: list[str] = []
    for name, module in model.named_modules():
        if name.count(".") == 1 and name.startswith(("pre_process.", "upsample.")):
            module.register_forward_hook(lambda m, i, o, name=name: ran.append(name))
    model(torch.rand(1, 3, 5, 5) * 255, scale)
    k = (2, 3, 4).index(scale)
    assert ran == [f"pre_process.{k}", f"upsample.{k}"]


def test_backward_leaves_other_branches_untouched():
    model = tiny()
    model(torch.rand(1, 3, 5, 5) * 255, 3).mean().backward()
    for name, p in model.named_parameters():
        other_branch = name.startswith(("pre_process.0", "pre_process.2", "upsample.0", "upsample.2"))
        assert (p.grad is None) == other_branch, name


def test_scale_is_an_argument_not_state():
    model = tiny().eval()
    x = torch.rand(1, 3, 5, 5) * 255
    with torch.no_grad():
        a = model(x, 2)
        model(x, 4)
        assert torch.equal(model(x, 2), a)
    with pytest.raises(ValueError, match="not x5"):
        model(x, 5)
    assert not hasattr(model, "set_scale")


def test_key_names_are_the_released_ones():
    keys = set(tiny().state_dict())
    assert "pre_process.2.1.body.2.weight" in keys and "pre_process.0.0.body.0.bias" in keys
    assert {f"upsample.{k}.0.weight" for k in range(3)} | {"upsample.2.2.weight"} <= keys
    assert "upsample.0.2.weight" not in keys and "upsample.1.2.weight" not in keys
    assert {"tail.0.weight", "body.2.weight", "body.1.body.2.weight", "sub_mean.bias"} <= keys
    assert not any(k.startswith("tail.1") for k in keys)
