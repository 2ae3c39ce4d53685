"""Self-ensemble and tiling are exact: checked against independent computations, not themselves.
Auto-chosen tiles: the memory model is checked against the tensors a forward pass really holds,
and the choice against injected memory budgets."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import ntire.inference
from ntire.config import ModelConfig
from ntire.errors import ConfigError
from ntire.inference import geometric_transforms, self_ensemble, tiled_forward, upscale_image, upscale_tensor
from ntire.models.build import build_model, receptive_field_radius
from ntire.tiles import (
    MEMORY_BUDGET_ENV,
    MIN_TILE_OVERLAPS,
    SAFETY_FACTOR,
    TILE_STEP,
    MemoryBudgetError,
    activation_bytes_per_pixel,
    estimate_memory,
    free_memory,
    normalize_tile,
    plan_tiles,
    resolve_memory_budget,
    tile_layout,
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


# ---------------------------------------------------------------------------------------------
# Auto-chosen tiles: the memory model, the choice, and exactness under a budget


class LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of tensor storage alive while torch ops run under it, and the peak.

    Every op's outputs are seen here; a storage is counted once, from the first tensor that shows
    it until the last Python tensor referring to it dies. Deterministic on CPU, unlike the
    process's resident set; what kernels allocate internally (workspaces) is not seen: that is what
    SAFETY_FACTOR is for.
    """

    def __init__(self):
        super().__init__()
        self.storages: dict[int, list[int]] = {}  # data_ptr -> [live tensors, bytes]
        self.tensors: set[int] = set()
        self.live = self.peak = 0

    def _release(self, key: int, tensor_id: int) -> None:
        self.tensors.discard(tensor_id)
        entry = self.storages[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self.storages[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and id(t) not in self.tensors:
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key not in self.storages:
                    self.storages[key] = [0, storage.nbytes()]
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                self.storages[key][0] += 1
                self.tensors.add(id(t))
                weakref.finalize(t, self._release, key, id(t))
        return out


def tiny(kind: str = "edsr", scales=(2,), n_feats: int = 8) -> tuple[nn.Module, ModelConfig]:
    config = ModelConfig(kind=kind, scales=scales, n_blocks=1, n_feats=n_feats)
    torch.manual_seed(0)
    return build_model(config).eval(), config


def test_the_counter_sees_a_known_peak():
    with LiveTensorBytes() as mode:
        a = torch.zeros(1000)  # 4000 bytes
        b = torch.zeros(500)  # 2000
        del a
        c = torch.zeros(250)  # 1000: the peak stays 6000
        view = c[10:]  # a view is not new memory
    assert mode.peak == 6000 and mode.live == 3000
    del b, c, view


@pytest.mark.parametrize(
    "kind, scales, scale, size, tile, ensemble, max_batch",
    [
        ("edsr", (2,), 2, (37, 45), None, False, 4),  # whole image
        ("edsr", (4,), 4, (37, 45), 12, False, 4),  # tiles, 4 per pass
        ("edsr", (3,), 3, (33, 41), None, True, 8),  # whole, self-ensemble: non-square, 4 variants per pass
        ("mdsr", (2, 3, 4), 3, (40, 40), 16, True, 8),  # square windows: 8 variants per pass
        ("mdsr", (2, 3, 4), 4, (30, 52), 20, False, 1),
    ],
)
def test_memory_model_bounds_the_tensors_a_real_network_holds(kind, scales, scale, size, tile, ensemble, max_batch):
    """The estimate (without its safety factor) is never below the measured peak of live tensors,
    and not far above it: the model of the network is right, not just generous."""
    model, config = tiny(kind, scales, n_feats=16)
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    with LiveTensorBytes() as mode:
        upscale_image(model, config, image, scale=scale, tile=tile, self_ensemble=ensemble, max_batch=max_batch)
    modelled = estimate_memory(
        config, scale, *size, tile=tile, self_ensemble=ensemble, max_batch=max_batch, safety=1
    )
    assert mode.peak <= modelled <= 1.3 * mode.peak, (mode.peak, modelled)


def test_bytes_per_pixel_follows_the_upsampler_peak():
    config = ModelConfig.preset("edsr", scales=4)  # F = 256: 34F channels at x4
    assert activation_bytes_per_pixel(config, 4) == ((2 + 2 * 16) * 256 + 3 * 16 + 6) * 4
    assert activation_bytes_per_pixel(config, 4, torch.bfloat16) * 2 == activation_bytes_per_pixel(config, 4)
    baseline = ModelConfig.preset("edsr-baseline", scales=2)
    assert activation_bytes_per_pixel(baseline, 2) == (10 * 64 + 12 + 6) * 4


def test_tile_requests_are_auto_whole_or_a_size():
    assert normalize_tile("auto") == normalize_tile(" AUTO ") == "auto"
    assert normalize_tile(None) is None and normalize_tile(0) is None
    assert normalize_tile(128) == 128
    assert normalize_tile("128") == 128  # as typed after --tile
    for bad in (-1, "-1", "big", 1.5, True):
        with pytest.raises(ConfigError, match="tile"):
            normalize_tile(bad)


def test_plan_is_whole_when_it_fits_else_the_largest_tile_that_fits():
    config = ModelConfig.preset("edsr-baseline", scales=2)
    h, w = 339, 510
    overlap = receptive_field_radius(config)  # 36
    whole = estimate_memory(config, 2, h, w, tile=None)
    plan = plan_tiles(config, 2, h, w, budget=whole)
    assert plan.tile is None and plan.needed == whole
    assert plan_tiles(config, 2, h, w, budget=whole - 1).tile is not None

    previous = 0
    for budget in (whole // 6, whole // 4, whole // 2, whole - 1):
        plan = plan_tiles(config, 2, h, w, budget=budget)
        assert plan.tile % TILE_STEP == 0 and plan.tile >= MIN_TILE_OVERLAPS * overlap
        assert plan.needed <= budget
        assert estimate_memory(config, 2, h, w, tile=plan.tile, max_batch=plan.max_batch) == plan.needed
        bigger = plan.tile + TILE_STEP  # the next tile up, at any batch, does not fit
        if bigger < max(h, w):
            assert estimate_memory(config, 2, h, w, tile=bigger, max_batch=1) > budget
        assert plan.tile >= previous  # more memory, never smaller tiles
        previous = plan.tile


def test_plan_lowers_the_batch_before_the_tile():
    config = ModelConfig.preset("edsr-baseline", scales=2)
    one = estimate_memory(config, 2, 400, 400, tile=200, max_batch=1)
    four = estimate_memory(config, 2, 400, 400, tile=200, max_batch=4)
    assert one < four
    plan = plan_tiles(config, 2, 400, 400, budget=one, max_batch=4)
    # 2 x 2 tiles of 200, one per pass (392 is the largest tile with that layout), not 3 x 3 at 4 per pass
    assert (plan.tile, plan.max_batch) == (392, 1)
    assert tile_layout(400, 400, plan.tile, 36) == tile_layout(400, 400, 200, 36)
    assert plan_tiles(config, 2, 400, 400, budget=four, max_batch=4).max_batch == 4


def test_self_ensemble_and_wider_dtypes_need_more_memory():
    config = ModelConfig.preset("edsr-baseline", scales=3)
    args = (config, 3, 300, 300)
    plain = estimate_memory(*args, tile=None)
    assert estimate_memory(*args, tile=None, self_ensemble=True, max_batch=8) > 4 * plain
    assert estimate_memory(*args, tile=None, dtype=torch.float64) > 1.9 * plain
    assert plan_tiles(*args, budget=plain).tile is None
    # Self-ensemble in the same budget: whole with fewer variants per pass while that fits, then tiles.
    plan = plan_tiles(*args, budget=2 * plain, self_ensemble=True, max_batch=8)
    assert (plan.tile, plan.max_batch) == (None, 2)
    plan = plan_tiles(*args, budget=plain, self_ensemble=True, max_batch=8)
    assert (plan.tile, plan.max_batch) == (None, 1)
    assert plan_tiles(*args, budget=plain - 1, self_ensemble=True, max_batch=8).tile is not None


def test_a_budget_too_small_for_any_tile_names_what_it_needs():
    config = ModelConfig.preset("edsr", scales=4)
    overlap = receptive_field_radius(config)  # 68: the smallest tile is 136
    smallest = estimate_memory(config, 4, 1356, 2040, tile=136, max_batch=1)
    with pytest.raises(MemoryBudgetError) as e:
        plan_tiles(config, 4, 1356, 2040, budget=smallest - 1, budget_source="free on cuda:0")
    message = str(e.value)
    assert isinstance(e.value, ConfigError)
    assert "2040x1356" in message and "x4" in message and "edsr" in message
    assert f"{MIN_TILE_OVERLAPS * overlap} LR pixels" in message and "GiB" in message
    assert "free on cuda:0" in message and "--tile" in message
    fits = plan_tiles(config, 4, 1356, 2040, budget=smallest)
    assert fits.max_batch == 1 and fits.needed == smallest  # tile 144: the same cores of 136 as tile 136
    assert tile_layout(1356, 2040, fits.tile, overlap) == tile_layout(1356, 2040, 136, overlap)
    # An image smaller than the smallest tile can only run whole.
    with pytest.raises(MemoryBudgetError, match="run whole"):
        plan_tiles(config, 4, 100, 120, budget=1000)


def test_memory_budget_comes_from_the_argument_the_environment_or_the_device(monkeypatch):
    monkeypatch.delenv(MEMORY_BUDGET_ENV, raising=False)
    measured, source = resolve_memory_budget("cpu")
    assert measured > 0 and source == "free on cpu"
    assert free_memory("cpu") > 0
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "1.5M")
    assert resolve_memory_budget("cpu") == (1_500_000, f"allowed by {MEMORY_BUDGET_ENV}")
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "1.5MiB")
    assert resolve_memory_budget("cpu") == (int(1.5 * 2**20), f"allowed by {MEMORY_BUDGET_ENV}")
    assert resolve_memory_budget("cpu", 1000) == (1000, "the memory budget")
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "lots")
    with pytest.raises(ConfigError, match=f"{MEMORY_BUDGET_ENV}='lots'"):
        resolve_memory_budget("cpu")


class _SpyPlans:
    """Records every TilePlan `upscale_tensor` gets from plan_tiles."""

    def __init__(self, monkeypatch):
        self.plans = []
        real = ntire.inference.plan_tiles

        def spy(*args, **kwargs):
            plan = real(*args, **kwargs)
            self.plans.append(plan)
            return plan

        monkeypatch.setattr(ntire.inference, "plan_tiles", spy)


@pytest.mark.parametrize("kind, scales, scale, ensemble", [("edsr", (2,), 2, False), ("mdsr", (2, 3, 4), 3, True)])
def test_auto_tiles_under_a_small_budget_equal_the_whole_image(monkeypatch, kind, scales, scale, ensemble):
    model, config = tiny(kind, scales)
    h, w = 90, 76  # a few times the smallest tile (2 overlaps), so that tiles can be smaller than the image
    budget = estimate_memory(config, scale, h, w, tile=None, self_ensemble=ensemble, max_batch=1) - 1
    spy = _SpyPlans(monkeypatch)
    x = lr_batch(1, h, w)
    auto = upscale_tensor(model, x, scale=scale, config=config, self_ensemble=ensemble, memory_budget=budget)
    (plan,) = spy.plans
    assert plan.tile is not None and plan.needed <= budget
    assert tile_layout(h, w, plan.tile, receptive_field_radius(config))[0] > 1  # really tiled
    whole = upscale_tensor(model, x, scale=scale, tile=0, self_ensemble=ensemble)
    assert (auto - whole).abs().max().item() < 1e-3
    # In 8 bits: equal, but for a value whose float lies within rounding of a .5 step.
    image = x[0].permute(1, 2, 0).round().to(torch.uint8).numpy()
    auto8 = upscale_image(model, config, image, scale=scale, self_ensemble=ensemble, memory_budget=budget)
    whole8 = upscale_image(model, config, image, scale=scale, self_ensemble=ensemble, tile=None)
    differ = auto8 != whole8
    assert differ.mean() < 1e-4 and np.abs(auto8.astype(int) - whole8).max() <= 1


def test_auto_runs_small_images_whole_and_reads_the_environment(monkeypatch):
    model, config = tiny()
    spy = _SpyPlans(monkeypatch)
    calls = []
    monkeypatch.setattr(ntire.inference, "tiled_forward", lambda *a, **k: calls.append(1))
    monkeypatch.delenv(MEMORY_BUDGET_ENV, raising=False)
    upscale_tensor(model, lr_batch(1, 20, 24), scale=2, config=config)  # default tile="auto", plenty free
    assert spy.plans[-1].tile is None and not calls
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "10")
    with pytest.raises(MemoryBudgetError, match=f"10 B is allowed by {MEMORY_BUDGET_ENV}"):
        upscale_tensor(model, lr_batch(1, 20, 24), scale=2, config=config)
    # Without a config there is nothing to size: the whole image runs, as before auto existed.
    assert upscale_tensor(StandInSR(2), lr_batch(1, 6, 6), scale=2).shape == (1, 3, 12, 12)


def test_forced_tiles_ignore_the_budget(monkeypatch):
    model, config = tiny()
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "10")  # far too small for auto
    x = lr_batch(1, 20, 24)
    forced = upscale_tensor(model, x, scale=2, tile=8, config=config)
    whole = upscale_tensor(model, x, scale=2, tile=0, config=config)
    assert (forced - whole).abs().max().item() < 1e-3
    assert SAFETY_FACTOR > 1


# --------------------------------------------------------------------------------------------
# Whole-image ensemble batching, precision and layout


class _CountingModel(nn.Module):
    """A real network that records the batch of every forward call (and its memory format)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.calls: list[tuple[int, bool]] = []

    def forward(self, t, scale):
        self.calls.append((t.shape[0], t.is_contiguous(memory_format=torch.channels_last)))
        return self.model(t, scale)


@pytest.mark.parametrize("channels_last", [False, True])
def test_batched_whole_image_ensemble_equals_the_unbatched_one(channels_last):
    model, config = tiny()
    counting = _CountingModel(model)
    image = (lr_batch(1, 18, 26)[0].permute(1, 2, 0)).round().to(torch.uint8).numpy()  # not square: 4 + 4
    batched = upscale_tensor(counting, lr_batch(1, 18, 26), scale=2, tile="auto", config=config,
                             self_ensemble=True, max_batch=4, channels_last=channels_last)
    assert counting.calls == [(4, channels_last)] * 2  # the plan ran it whole: two passes of 4 variants
    counting.calls.clear()
    one_by_one = upscale_tensor(counting, lr_batch(1, 18, 26), scale=2, tile=0, self_ensemble=True, max_batch=1)
    assert counting.calls == [(1, False)] * 8
    torch.testing.assert_close(batched, one_by_one, atol=1e-3, rtol=0)
    # ... and the model's own layout follows the request in upscale_image (and back again).
    upscale_image(model, config, image, scale=2, channels_last=channels_last)
    weight = next(p for p in model.parameters() if p.ndim == 4)
    assert weight.is_contiguous(memory_format=torch.channels_last) == channels_last
    upscale_image(model, config, image, scale=2)
    assert weight.is_contiguous()


def test_precision_is_resolved_per_device_and_refused_in_one_line():
    from ntire.inference import PRECISIONS, resolve_precision

    assert PRECISIONS == ("fp32", "tf32", "bf16")
    assert resolve_precision(None, "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ConfigError, match=r"^--precision fp16: unknown precision; choose from fp32, tf32, bf16$"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ConfigError, match=r"^--precision tf32: TF32 exists on CUDA devices only; on cpu use fp32"):
        resolve_precision("tf32", "cpu")


def test_precision_mode_sets_tf32_and_autocast_for_the_call_only(monkeypatch):
    from ntire.inference import default_precision, precision_mode

    assert default_precision("cuda") == "tf32" and default_precision("cpu") == "fp32"
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with precision_mode("fp32", torch.device("cuda")):  # only flags: no CUDA needed
            assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (False, False)
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    with precision_mode("bf16", "cpu"):
        assert torch.is_autocast_enabled("cpu")
    assert not torch.is_autocast_enabled("cpu")


def test_bf16_runs_autocast_and_returns_float32_close_to_fp32():
    model, config = tiny()
    x = lr_batch(1, 16, 20)
    fp32 = upscale_tensor(model, x, scale=2, tile=0, precision="fp32")
    bf16 = upscale_tensor(model, x, scale=2, tile=0, precision="bf16", self_ensemble=True)
    bf16_plain = upscale_tensor(model, x, scale=2, tile=0, precision="bf16")
    assert bf16.dtype == bf16_plain.dtype == torch.float32  # the ensemble's sum is float32, not bf16
    diff = (bf16_plain - fp32).abs().max().item()
    assert 0 < diff < 8  # bf16 really ran (it rounds), and it is still the same picture
