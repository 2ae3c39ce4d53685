"""The validation picture: HR overview with the crop's box, then labelled Bicubic | SR | HR crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntire.config import ModelConfig, TrainConfig
from ntire.data.degrade import bicubic_downscale, bicubic_upscale
from ntire.figures import Box, most_different_box
from ntire.metrics import score, shave_for
from ntire.models.build import build_model
from ntire.training.validate import ValidationImage, comparison, validate


def find(picture: np.ndarray, crop: np.ndarray) -> list[tuple[int, int]]:
    """Every (y, x) where `crop` appears verbatim in `picture`."""
    h, w = crop.shape[:2]
    ys, xs = np.nonzero((picture[: picture.shape[0] - h + 1, : picture.shape[1] - w + 1] == crop[0, 0]).all(-1))
    return [(int(y), int(x)) for y, x in zip(ys, xs, strict=True)
            if np.array_equal(picture[y : y + h, x : x + w], crop)]


def _image(photo, name, top, scale, keep):
    hr = np.ascontiguousarray(photo[top : top + 60, 100:172])
    lr = bicubic_downscale(hr, scale)
    up = bicubic_upscale(lr, scale)
    return ValidationImage(name, scale, lr, hr, score(up, hr, scale=scale, protocol="div2k"), up if keep else None)


def test_comparison_shows_the_box_where_sr_and_bicubic_differ_most(photo):
    hr = np.ascontiguousarray(photo[150:278, 120:280])
    bicubic = bicubic_upscale(bicubic_downscale(hr, 2), 2)
    sr = bicubic.copy()
    sr[60:92, 100:132] = 255 - bicubic[60:92, 100:132]
    picture = comparison(bicubic, sr, hr, scale=2, protocol="div2k", crop=32, name="0801", model="EDSR (this run)")
    assert picture.dtype == np.uint8 and picture.shape[2] == 3
    box = Box(100, 60, 32, 32)
    places = [find(picture, box.crop(im)) for im in (bicubic, sr, hr)]
    assert all(len(p) == 1 for p in places)
    assert places[0][0][1] < places[1][0][1] < places[2][0][1]  # Bicubic | SR | HR, left to right
    assert len({p[0][0] for p in places}) == 1
    # The overview (HR at the crops' height) sits left of the crops, with a red box drawn.
    left = picture[:, : places[0][0][1]]
    assert (np.abs(left.astype(int) - (230, 20, 20)).sum(-1) == 0).any()


def test_validate_makes_one_picture_per_scale_and_keeps_its_scores(photo):
    torch.manual_seed(0)
    config = ModelConfig(kind="mdsr", scales=(2, 3), n_blocks=1, n_feats=8)
    model = build_model(config)
    images = [_image(photo, "0801", 0, 2, True), _image(photo, "0802", 60, 2, False),
              _image(photo, "0801", 0, 3, True)]
    result = validate(model, config, images, protocol="div2k", comparison_crop=24)
    assert sorted(result.comparisons) == [2, 3]
    from ntire.inference import upscale_image

    for scale in (2, 3):
        mine = [im for im in images if im.scale == scale]
        srs = [upscale_image(model, config, im.lr, scale=scale) for im in mine]
        scores = [score(sr, im.hr, scale=scale, protocol="div2k") for sr, im in zip(srs, mine, strict=True)]
        assert result.scales[scale].psnr == pytest.approx(np.mean([s.psnr for s in scores]), abs=1e-9)
        assert result.scales[scale].images == len(mine)
        box = most_different_box(mine[0].bicubic_image, [srs[0]], 24, margin=shave_for(scale, "div2k"))
        picture = result.comparisons[scale]
        assert find(picture, box.crop(srs[0])) and find(picture, box.crop(mine[0].hr))


def test_run_validation_logs_the_picture_per_scale(photo):
    from accelerate import Accelerator

    from ntire.training.distributed import finish
    from ntire.training.validate import run_validation

    class Tracker:
        def __init__(self):
            self.images, self.metrics = [], {}

        def log_metrics(self, metrics, step):
            self.metrics.update(metrics)

        def log_image(self, image, name):
            self.images.append((name, image))

    config = TrainConfig(model=ModelConfig(kind="edsr", scales=(2,), n_blocks=1, n_feats=8))
    accelerator = Accelerator(cpu=True)
    try:
        tracker, said = Tracker(), []
        run_validation(build_model(config.model), config, [_image(photo, "0801", 0, 2, True)], accelerator,
                       tracker, 7, said.append)
    finally:
        finish(accelerator)
    assert [name for name, _ in tracker.images] == ["comparisons/step-00000007_x2.png"]
    picture = tracker.images[0][1]
    assert picture.dtype == np.uint8 and picture.shape[0] > config.tracking.comparison_crop // 2
    assert said[0].startswith("step 7: x2 valid PSNR") and "valid/psnr_x2" in tracker.metrics
