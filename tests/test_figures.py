"""Comparison figures: box parsing and checks, the chosen box, crop scores, labels, drawing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ntire.errors import ConfigError
from ntire.figures import (
    BOX_COLOUR,
    Box,
    Panel,
    check_box,
    comparison_figure,
    comparison_panels,
    draw_figure,
    font,
    model_label,
    most_different_box,
    score_box,
    score_text,
)
from ntire.metrics import rgb_to_y, score


def find(picture: np.ndarray, crop: np.ndarray) -> list[tuple[int, int]]:
    """Every (y, x) where `crop` appears verbatim in `picture`."""
    h, w = crop.shape[:2]
    ys, xs = np.nonzero((picture[: picture.shape[0] - h + 1, : picture.shape[1] - w + 1] == crop[0, 0]).all(-1))
    return [(int(y), int(x)) for y, x in zip(ys, xs, strict=True)
            if np.array_equal(picture[y : y + h, x : x + w], crop)]


def test_box_parse_and_errors():
    assert Box.parse("10, 20,30,40") == Box(10, 20, 30, 40)
    assert str(Box(1, 2, 3, 4)) == "1,2,3,4"
    for bad in ("10,20,30", "a,b,c,d", "1,2,3,4,5", "1.5,2,3,4"):
        with pytest.raises(ConfigError, match=r"--box .*expected x,y,w,h"):
            Box.parse(bad)
    with pytest.raises(ConfigError, match="w, h >= 1"):
        Box.parse("0,0,0,5")
    with pytest.raises(ConfigError, match="x and y must be >= 0"):
        Box.parse("-1,0,5,5")


def test_check_box_names_the_image_size_and_the_scored_region():
    check_box(Box(2, 2, 11, 11), (40, 50, 3), scale=2, protocol="benchmark")
    with pytest.raises(ConfigError, match=r"--box 45,0,10,10: outside the 50x40 \(WxH\) HR image"):
        check_box(Box(45, 0, 10, 10), (40, 50, 3), scale=2, protocol="benchmark")
    # Inside the image but mostly in the 8-pixel border the div2k protocol ignores at x2.
    with pytest.raises(ConfigError, match=r"leaves 7x12 scored pixels .*ignores 8 pixels"):
        check_box(Box(0, 10, 15, 12), (40, 50, 3), scale=2, protocol="div2k")


def test_most_different_box_finds_the_changed_region_inside_the_margin(rng):
    base = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    other = base.copy()
    other[30:46, 50:66] = 255 - other[30:46, 50:66]
    assert most_different_box(base, [other], 16) == Box(50, 30, 16, 16)
    # A change in the border is not chosen: the box stays `margin` pixels inside.
    edge = base.copy()
    edge[:16, :16] = 255 - edge[:16, :16]
    box = most_different_box(base, [edge], 16, margin=4)
    assert box == Box(4, 4, 16, 16)
    # The box shrinks to fit a small image.
    assert most_different_box(base[:20, :30], [other[:20, :30]], 32, margin=2) == Box(2, 2, 26, 16)
    # No difference at all: the first position (ties go top-left).
    assert most_different_box(base, [base], 8, margin=3) == Box(3, 3, 8, 8)


def test_score_box_scores_exactly_the_boxes_pixels(photo, rng):
    hr = photo[:96, :128]
    sr = np.clip(hr.astype(int) + rng.integers(-20, 21, hr.shape), 0, 255).astype(np.uint8)
    box = Box(30, 20, 40, 32)
    got = score_box(sr, hr, box, scale=3, protocol="benchmark")
    a, b = rgb_to_y(box.crop(sr)), rgb_to_y(box.crop(hr))
    assert got.psnr == pytest.approx(10 * math.log10(255**2 / np.mean((a - b) ** 2)), abs=1e-9)
    # The whole image as the box is the image's usual score (the border it ignores included).
    whole = score_box(sr, hr, Box(0, 0, 128, 96), scale=3, protocol="div2k")
    assert whole == score(sr, hr, scale=3, protocol="div2k")
    # A box touching the border: only its pixels outside the ignored border count.
    corner = score_box(sr, hr, Box(0, 0, 30, 30), scale=2, protocol="div2k")
    inner = Box(8, 8, 22, 22).crop(sr).astype(float) - Box(8, 8, 22, 22).crop(hr)
    assert corner.psnr == pytest.approx(10 * math.log10(255**2 / np.mean(inner**2)), abs=1e-9)


def test_labels():
    assert model_label("edsr-baseline", scale=2) == "EDSR-baseline x2"
    assert model_label("edsr", scale=4, plus=True) == "EDSR+ x4"
    assert model_label("mdsr") == "MDSR"
    assert model_label("edsr-b1f8", plus=True) == "EDSR-b1f8+"
    from ntire.metrics import Score

    assert score_text(Score(30.123, 0.90126)) == "30.12 dB / 0.9013"
    assert score_text(Score(math.inf, 1.0)) == "inf dB / 1.0000"


def test_the_font_scales():
    assert font(24).getbbox("Ag")[3] > font(12).getbbox("Ag")[3] > 0


def test_draw_figure_places_the_crops_and_draws_the_box(rng):
    overview = np.full((100, 150, 3), 128, np.uint8)
    crops = [rng.integers(0, 256, (20, 20, 3), dtype=np.uint8) for _ in range(3)]
    box = Box(50, 40, 20, 20)
    picture = draw_figure(overview, box, [Panel(c, (f"method {i}", "1.00 dB / 0.5000")) for i, c in enumerate(crops)],
                          caption=("name",), tile=40)
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    for crop in crops:  # each enlarged x2 by pixel repetition, left to right in one row
        assert len(find(picture, crop.repeat(2, 0).repeat(2, 1))) == 1
    xs = [find(picture, c.repeat(2, 0).repeat(2, 1))[0] for c in crops]
    assert xs == sorted(xs, key=lambda p: p[1]) and len({y for y, _ in xs}) == 1
    # The overview is resized to the grid's height less its caption's; the box's outline is red
    # and encloses the box's (scaled) region, which stays the overview's grey.
    red = np.all(picture == BOX_COLOUR, axis=-1)
    ys, xs_ = np.nonzero(red)
    assert red.any()
    grey_rows = np.nonzero((picture == 128).all(-1).any(1))[0]
    grey_cols = np.nonzero((picture == 128).all(-1).any(0))[0]
    factor = (grey_rows[-1] - grey_rows[0] + 1) / 100
    top, left = grey_rows[0], grey_cols[0]
    assert ys.min() < top + 40 * factor <= ys.min() + 4
    assert xs_.min() < left + 50 * factor <= xs_.min() + 4
    assert ys.max() >= top + 60 * factor - 1 and xs_.max() >= left + 70 * factor - 1
    # Text was drawn under the crops (dark pixels below the first crop).
    y0, x0 = xs[0]
    below = picture[y0 + 40 : y0 + 80, x0 : x0 + 40]
    assert (below < 100).all(-1).any()


def test_two_rows_beyond_four_panels(rng):
    crops = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(6)]
    picture = draw_figure(np.zeros((50, 50, 3), np.uint8), Box(0, 0, 10, 10),
                          [Panel(c, ("x",)) for c in crops], tile=16)
    places = [find(picture, c)[0] for c in crops]
    assert len({y for y, _ in places}) == 2 and [p[0] for p in places] == sorted(p[0] for p in places)


def test_comparison_figure_labels_each_crop_with_its_scores(photo):
    from ntire.data.degrade import bicubic_downscale, bicubic_upscale

    hr = photo[100:196, 150:278]
    lr = bicubic_downscale(hr, 2)
    bicubic = bicubic_upscale(lr, 2)
    sr = bicubic.copy()
    sr[40:60, 70:90] = hr[40:60, 70:90]  # "the model" fixes one patch
    picture, box = comparison_figure(hr, bicubic, [("EDSR x2", sr)], scale=2, protocol="benchmark", box_size=20,
                                     name="astronaut", tile=20)
    assert box == Box(70, 40, 20, 20)
    assert find(picture, box.crop(sr)) and find(picture, box.crop(hr)) and find(picture, box.crop(bicubic))
    panels = comparison_panels(hr, bicubic, [("EDSR x2", sr)], box, scale=2, protocol="benchmark")
    assert [p.lines[0] for p in panels] == ["HR", "Bicubic", "EDSR x2"]
    assert panels[2].lines[1] == "box inf dB / 1.0000"
    assert panels[1].lines[1] == "box " + score_text(score_box(bicubic, hr, box, scale=2, protocol="benchmark"))
    assert panels[2].lines[2] == "image " + score_text(score(sr, hr, scale=2, protocol="benchmark"))
    last = comparison_panels(hr, bicubic, [("EDSR x2", sr)], box, scale=2, protocol="benchmark", hr_first=False)
    assert [p.lines[0] for p in last] == ["Bicubic", "EDSR x2", "HR"]
    with pytest.raises(ConfigError, match="outside"):
        comparison_figure(hr, bicubic, [("EDSR x2", sr)], scale=2, protocol="benchmark", box=Box(120, 0, 20, 20))
