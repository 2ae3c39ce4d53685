import pytest
import torch
import torch.nn.functional as F

from ntire.config import DIV2K_RGB_MEAN
from ntire.models.blocks import MeanShift, ResBlock, Upsampler


@pytest.mark.parametrize("kernel_size, res_scale", [(3, 1.0), (3, 0.1), (5, 1.0)])
def test_res_block_is_conv_relu_conv_scaled_plus_skip(kernel_size, res_scale):
    torch.manual_seed(0)
    block = ResBlock(6, kernel_size, res_scale)
    x = torch.randn(2, 6, 9, 7)
    c0, c2 = block.body[0], block.body[2]
    pad = kernel_size // 2
    expected = F.conv2d(F.relu(F.conv2d(x, c0.weight, c0.bias, padding=pad)), c2.weight, c2.bias, padding=pad)
    expected = expected * res_scale + x
    with torch.no_grad():
        out = block(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert [type(m).__name__ for m in block.body] == ["Conv2d", "ReLU", "Conv2d"]
    assert c0.kernel_size == (kernel_size, kernel_size)


def test_res_block_has_no_relu_after_the_addition():
    block = ResBlock(4, 3, 1.0)
    with torch.no_grad():
        for p in block.parameters():
            p.zero_()
    x = -torch.rand(1, 4, 5, 5)  # negative: a trailing ReLU would zero it
    assert torch.equal(block(x), x)


def test_mean_shift_subtracts_and_adds_the_div2k_mean_times_255():
    x = torch.rand(2, 3, 5, 4) * 255
    mean = torch.tensor(DIV2K_RGB_MEAN).view(1, 3, 1, 1) * 255
    sub, add = MeanShift(255.0, DIV2K_RGB_MEAN, -1), MeanShift(255.0, DIV2K_RGB_MEAN, 1)
    assert torch.equal(sub(x), x - mean)
    assert torch.equal(add(x), x + mean)
    torch.testing.assert_close(add(sub(x)), x, rtol=0, atol=1e-4)


def test_mean_shift_is_fixed_but_in_the_state_dict():
    shift = MeanShift(255.0, DIV2K_RGB_MEAN, -1)
    assert list(shift.parameters()) == []
    assert set(shift.state_dict()) == {"weight", "bias"}
    assert not shift.weight.requires_grad and not shift.bias.requires_grad
    assert shift.weight.shape == (3, 3, 1, 1)


def test_mean_shift_stays_float32_under_bf16_autocast():
    x = torch.arange(256.0).view(1, 1, 16, 16).expand(1, 3, 16, 16) + 0.25
    add = MeanShift(255.0, DIV2K_RGB_MEAN, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = add(x)
    assert out.dtype == torch.float32
    assert torch.equal(out, add(x))


@pytest.mark.parametrize("scale, convs", [(2, [0]), (3, [0]), (4, [0, 2])])
def test_upsampler_layout_and_shape(scale, convs):
    up = Upsampler(8, scale)
    assert [i for i, m in enumerate(up) if isinstance(m, torch.nn.Conv2d)] == convs
    assert not any(isinstance(m, (torch.nn.ReLU, torch.nn.PReLU)) for m in up)
    assert up(torch.zeros(1, 8, 5, 3)).shape == (1, 8, 5 * scale, 3 * scale)


def test_upsampler_refuses_other_scales():
    with pytest.raises(ValueError, match="2, 3 or 4"):
        Upsampler(8, 5)
