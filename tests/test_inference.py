"""Self-ensemble and tiling are exact: checked against independent computations, not themselves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ntire.inference import (
    geometric_transforms,
    self_ensemble,
    tile_layout,
    tiled_forward,
    upscale_image,
    upscale_tensor,
)


class StandInSR(nn.Module):
    """A small SR net with a receptive field known by construction.

    LR convs 3x3, 5x5, 3x3 (radius 1 + 2 + 1), sub-pixel upsampling, then a 3x3 conv on the HR
    grid: an HR pixel sees HR neighbours one step away, whose LR parents are at most one LR pixel
    from its own. Radius: 5 LR pixels. Biases make zero padding visible at every border.
    """

    RADIUS = 5

    def __init__(self, scale: int, feats: int = 6, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.scale = scale
        self.body = nn.Sequential(
            nn.Conv2d(3, feats, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(feats, feats, 5, padding=2),
            nn.ReLU(),
            nn.Conv2d(feats, 3 * scale * scale, 3, padding=1),
            nn.PixelShuffle(scale),
            nn.Conv2d(3, 3, 3, padding=1),
        )
        for m in self.body:
            if isinstance(m, nn.Conv2d):
                nn.init.uniform_(m.bias, -5, 5)

    def forward(self, x: torch.Tensor, scale: int) -> torch.Tensor:
        assert scale == self.scale, "the stand-in was built for another scale"
        return self.body(x)


class Equivariant(nn.Module):
    """Per-pixel colour mixing then nearest upsampling: commutes with every flip and rotation."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.mix = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor, scale: int) -> torch.Tensor:
        return nn.functional.interpolate(self.mix(x), scale_factor=scale, mode="nearest")


class CountingForward:
    """Wraps a forward and records the batch size of every call."""

    def __init__(self, forward):
        self.forward = forward
        self.batches: list[int] = []
        self.shapes: set[tuple[int, int]] = set()

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        self.batches.append(t.shape[0])
        self.shapes.add(tuple(t.shape[-2:]))
        return self.forward(t)


def lr_batch(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g) * 255


def plain(model, scale):
    def forward(t):
        with torch.no_grad():
            return model(t, scale)

    return forward


# ---------------------------------------------------------------------------------------------
# Self-ensemble


def test_transforms_are_the_eight_distinct_symmetries_and_undo_inverts():
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    ts = geometric_transforms()
    assert len(ts) == 8
    assert torch.equal(ts[0].apply(x), x)
    outputs = {tuple(t.apply(x).flatten().tolist()) + tuple(t.apply(x).shape) for t in ts}
    assert len(outputs) == 8
    for t in ts:
        assert torch.equal(t.undo(t.apply(x)), x)
        assert t.apply(x).shape[-2:] == ((4, 3) if t.swaps_axes else (3, 4))


def numpy_self_ensemble(model, scale: int, image: np.ndarray) -> np.ndarray:
    """The paper's recipe done independently on an (H, W, 3) array with NumPy flips/rotations."""
    outs = []
    for flip in (False, True):
        for k in range(4):
            a = np.rot90(image[:, ::-1] if flip else image, k, axes=(0, 1))
            t = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float()
            with torch.no_grad():
                y = model(t, scale)[0].permute(1, 2, 0).numpy()
            back = np.rot90(y, -k, axes=(0, 1))
            outs.append(back[:, ::-1] if flip else back)
    return np.mean(outs, axis=0)


@pytest.mark.parametrize("h, w, n, max_batch", [(9, 9, 1, 8), (7, 11, 2, 3), (6, 10, 1, 1)])
def test_self_ensemble_equals_mean_of_eight_independent_runs(h, w, n, max_batch):
    model = StandInSR(scale=2)
    x = lr_batch(n, h, w)
    got = self_ensemble(plain(model, 2), x, max_batch=max_batch)
    assert got.shape == (n, 3, 2 * h, 2 * w)
    for i in range(n):
        want = numpy_self_ensemble(model, 2, x[i].permute(1, 2, 0).numpy())
        np.testing.assert_allclose(got[i].permute(1, 2, 0).numpy(), want, atol=1e-3, rtol=0)
    # ... and the ensemble really is different from one plain pass (the check above can fail).
    assert (got - plain(model, 2)(x)).abs().max() > 0.1


def test_self_ensemble_of_an_equivariant_net_is_its_plain_output():
    model = Equivariant()
    x = lr_batch(1, 5, 8)
    torch.testing.assert_close(self_ensemble(plain(model, 3), x), plain(model, 3)(x), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "h, w, n, max_batch, expected",
    [
        (8, 8, 1, 8, [8]),  # square: all eight variants in one batch
        (8, 8, 1, 3, [3, 3, 2]),
        (6, 9, 1, 8, [4, 4]),  # non-square: (H, W) and (W, H) groups
        (6, 9, 2, 3, [3, 3, 2, 3, 3, 2]),
    ],
)
def test_self_ensemble_batches_variants_within_max_batch(h, w, n, max_batch, expected):
    counting = CountingForward(plain(Equivariant(), 2))
    self_ensemble(counting, lr_batch(n, h, w), max_batch=max_batch)
    assert counting.batches == expected


def test_self_ensemble_stays_on_the_input_device_without_numpy(monkeypatch):
    # Any round trip through NumPy would call Tensor.numpy / torch.from_numpy.
    def refuse(*args, **kwargs):
        raise AssertionError("self_ensemble left torch")

    monkeypatch.setattr(torch.Tensor, "numpy", refuse)
    monkeypatch.setattr(torch, "from_numpy", refuse)
    out = self_ensemble(plain(Equivariant().double(), 2), lr_batch(1, 4, 6).double())
    assert out.dtype == torch.float64 and out.device.type == "cpu"


# ---------------------------------------------------------------------------------------------
# Tiling


def test_stand_in_receptive_field_radius_is_what_the_tiling_tests_assume():
    """Gradient of one LR pixel's HR block w.r.t. the input reaches exactly RADIUS pixels."""
    for scale in (2, 3, 4):
        model = StandInSR(scale)
        x = lr_batch(1, 21, 21).requires_grad_(True)
        y = model(x, scale)
        c = 10
        y[..., c * scale : (c + 1) * scale, c * scale : (c + 1) * scale].sum().backward()
        rows, cols = torch.nonzero(x.grad[0].abs().sum(0), as_tuple=True)
        assert rows.min() == cols.min() == c - StandInSR.RADIUS
        assert rows.max() == cols.max() == c + StandInSR.RADIUS


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("h, w, tile", [(23, 17, 5), (23, 17, 8), (20, 30, 10), (13, 9, 64), (40, 7, 16)])
def test_tiled_equals_whole_image(scale, h, w, tile):
    model = StandInSR(scale)
    forward = plain(model, scale)
    x = lr_batch(1, h, w)
    whole = forward(x)
    tiled = tiled_forward(forward, x, scale=scale, tile=tile, overlap=StandInSR.RADIUS)
    assert tiled.shape == whole.shape == (1, 3, h * scale, w * scale)
    assert (tiled - whole).abs().max().item() < 1e-3


@pytest.mark.parametrize("scale", [2, 4])
def test_tiled_with_too_little_overlap_differs(scale):
    model = StandInSR(scale)
    forward = plain(model, scale)
    x = lr_batch(1, 23, 17)
    whole = forward(x)
    short = tiled_forward(forward, x, scale=scale, tile=6, overlap=StandInSR.RADIUS - 1)
    assert (short - whole).abs().max().item() > 1e-2


def test_tiled_batches_tiles_of_all_images_within_max_batch():
    scale, tile, max_batch = 2, 4, 3
    model = StandInSR(scale)
    x = lr_batch(2, 30, 25)
    counting = CountingForward(plain(model, scale))
    out = tiled_forward(counting, x, scale=scale, tile=tile, overlap=StandInSR.RADIUS, max_batch=max_batch)
    tiles = 2 * tile_layout(30, 25, tile, StandInSR.RADIUS)[0]
    assert tiles == 2 * 8 * 7
    assert counting.batches == [3] * 37 + [1]
    # Every window has one shape, core 4 plus 5 on each side, whatever the image size: what the
    # network sees at once is bounded by tile, overlap and max_batch.
    assert counting.shapes == {(14, 14)}
    assert (out - plain(model, scale)(x)).abs().max().item() < 1e-3


def test_tiled_rejects_a_forward_of_the_wrong_scale():
    with pytest.raises(ValueError, match="scale 3"):
        tiled_forward(plain(StandInSR(2), 2), lr_batch(1, 8, 8), scale=3, tile=4, overlap=5)


def test_tiled_self_ensemble_equals_whole_image_self_ensemble():
    scale = 3
    model = StandInSR(scale)
    x = lr_batch(1, 14, 19)
    whole = upscale_tensor(model, x, scale=scale, self_ensemble=True)
    counting = []

    def spy(t, s):
        counting.append(t.shape[0])
        return model(t, s)

    spy_model = _CallableModule(spy)
    tiled = upscale_tensor(
        spy_model, x, scale=scale, tile=6, overlap=StandInSR.RADIUS, self_ensemble=True, max_batch=4
    )
    assert (tiled - whole).abs().max().item() < 1e-3
    assert max(counting) <= 4
    # One tile per call, its 8 variants in 2 batches.
    assert len(counting) == tile_layout(14, 19, 6, StandInSR.RADIUS)[0] * 2


class _CallableModule(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x, scale):
        return self.fn(x, scale)


def test_upscale_tensor_runs_in_inference_mode_and_needs_an_overlap_source():
    model = StandInSR(2)
    x = lr_batch(1, 6, 6)
    assert upscale_tensor(model, x, scale=2).is_inference()
    with pytest.raises(ValueError, match="overlap"):
        upscale_tensor(model, x, scale=2, tile=4)


def test_upscale_image_rounds_the_whole_image_output_to_uint8(rng):
    model = StandInSR(2)
    image = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)
    out = upscale_image(model, None, image, scale=2)
    assert out.dtype == np.uint8 and out.shape == (18, 24, 3)
    with torch.no_grad():
        ref = model(torch.from_numpy(image).permute(2, 0, 1)[None].float(), 2)[0]
    want = ref.round().clamp(0, 255).permute(1, 2, 0).numpy().astype(np.uint8)
    np.testing.assert_array_equal(out, want)


def test_tile_layout_evens_out_cores_and_clips_windows_to_the_image():
    # 1356 = 3 cores of 452 (not 512, 512, 332); windows 452 + 2 * 36. 2040 = 4 cores of 510.
    assert tile_layout(1356, 2040, 512, 36) == (12, 524, 582)
    assert tile_layout(20, 30, 64, 5) == (1, 20, 30)  # tile larger than the image
    assert tile_layout(20, 30, 8, 10) == (12, 20, 28)  # cores 7 and 8: windows 27 -> 20 (clipped), 28


# ---------------------------------------------------------------------------------------------
# The real networks, tiny: their declared receptive-field radius makes tiling exact


@pytest.mark.parametrize(
    "kind, scales", [("edsr", (2,)), ("edsr", (3,)), ("edsr", (4,)), ("mdsr", (2, 3, 4))]
)
def test_tiled_equals_whole_for_real_networks_at_their_declared_radius(kind, scales):
    from ntire.config import ModelConfig
    from ntire.models.build import build_model, receptive_field_radius

    config = ModelConfig(kind=kind, scales=scales, n_blocks=1, n_feats=4)
    torch.manual_seed(0)
    model = build_model(config).eval()
    x = lr_batch(1, 29, 23)
    for scale in scales:
        whole = upscale_tensor(model, x, scale=scale)
        tiled = upscale_tensor(model, x, scale=scale, tile=7, config=config)
        assert (tiled - whole).abs().max().item() < 1e-3
        # Far too little overlap is visibly wrong, so the check above can fail.
        short = upscale_tensor(model, x, scale=scale, tile=7, overlap=receptive_field_radius(config) // 4)
        assert (short - whole).abs().max().item() > 1e-2
