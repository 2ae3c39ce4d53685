"""PSNR/SSIM under the benchmark and DIV2K protocols, against values derived independently:
hand-computed MSEs and SSIM formulas on constant images, and scikit-image's implementation."""

import math

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ntire.errors import DataError
from ntire.metrics import (
    PROTOCOLS,
    Score,
    evaluate_folders,
    match_sr_to_hr,
    psnr,
    rgb_to_y,
    score,
    shave_for,
    ssim,
)

C1 = (0.01 * 255) ** 2
C2 = (0.03 * 255) ** 2


def _noisy(image, rng, amplitude=10):
    noise = rng.integers(-amplitude, amplitude + 1, image.shape)
    return np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)


def _const(h, w, rgb):
    return np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()


# --- Y channel ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rgb, y",
    [
        ((255, 255, 255), 235.0),
        ((0, 0, 0), 16.0),
        ((255, 0, 0), 16 + 65.481),
        ((0, 255, 0), 16 + 128.553),
        ((0, 0, 255), 16 + 24.966),
        ((128, 128, 128), 16 + 219 * 128 / 255),  # 125.929..., not rounded to 126
    ],
)
def test_y_of_pure_colours(rgb, y):
    out = rgb_to_y(_const(2, 3, rgb))
    assert out.dtype == np.float64 and out.shape == (2, 3)
    np.testing.assert_allclose(out, y, atol=1e-9)


# --- shave and arguments -----------------------------------------------------------------------


def test_shave_per_protocol():
    assert PROTOCOLS == ("benchmark", "div2k")
    assert [shave_for(s, "benchmark") for s in (2, 3, 4)] == [2, 3, 4]
    assert [shave_for(s, "div2k") for s in (2, 3, 4)] == [8, 9, 10]
    with pytest.raises(ValueError, match="unknown protocol 'rgb'"):
        shave_for(2, "rgb")
    with pytest.raises(ValueError, match="positive integer"):
        shave_for(0, "div2k")


def test_bad_inputs_are_value_errors_naming_shapes(rng):
    a = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"\(40, 40, 3\).*\(40, 42, 3\)"):
        psnr(a, np.zeros((40, 42, 3), np.uint8), scale=2, protocol="div2k")
    with pytest.raises(ValueError, match="uint8"):
        ssim(a.astype(np.float32), a, scale=2, protocol="div2k")
    # div2k x4 shaves 10 per side: 30 - 20 = 10 < the 11x11 SSIM window
    small = a[:30, :30]
    with pytest.raises(ValueError, match="too small"):
        ssim(small, small, scale=4, protocol="div2k")
    assert psnr(small, small, scale=4, protocol="div2k") == math.inf


# --- PSNR --------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 5, 17])
def test_psnr_constant_offset_rgb(rng, d):
    hr = rng.integers(20, 200, (40, 44, 3), dtype=np.uint8)
    sr = hr + np.uint8(d)
    assert psnr(sr, hr, scale=3, protocol="div2k") == pytest.approx(
        10 * math.log10(255**2 / d**2), abs=1e-9
    )
    assert psnr(hr, sr, scale=3, protocol="div2k") == pytest.approx(20 * math.log10(255 / d))


def test_psnr_constant_offset_y(rng):
    hr = rng.integers(20, 200, (40, 44, 3), dtype=np.uint8)
    sr = hr + np.uint8(6)
    # The same offset on R, G and B moves Y by 6 * (65.481 + 128.553 + 24.966) / 255 = 6 * 219/255.
    dy = 6 * 219 / 255
    assert psnr(sr, hr, scale=2, protocol="benchmark") == pytest.approx(
        10 * math.log10(255**2 / dy**2), abs=1e-9
    )


def test_psnr_offset_on_one_channel_div2k_averages_over_channels(rng):
    hr = rng.integers(20, 200, (40, 40, 3), dtype=np.uint8)
    sr = hr.copy()
    sr[..., 1] += 9  # MSE over all three channels: 81 / 3 = 27
    assert psnr(sr, hr, scale=2, protocol="div2k") == pytest.approx(10 * math.log10(255**2 / 27))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_identical_images_give_inf_psnr_and_ssim_one(photo, protocol):
    assert psnr(photo, photo, scale=4, protocol=protocol) == math.inf
    assert ssim(photo, photo, scale=4, protocol=protocol) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("protocol, scale", [("benchmark", 2), ("div2k", 2), ("div2k", 4)])
def test_shave_removes_exactly_the_border(rng, protocol, scale):
    h, w = 48, 50
    s = shave_for(scale, protocol)
    hr = rng.integers(20, 200, (h, w, 3), dtype=np.uint8)
    # All the error in the ignored border: a perfect score.
    sr = hr.copy()
    border = np.ones((h, w), bool)
    border[s : h - s, s : w - s] = False
    sr[border] += 30
    assert psnr(sr, hr, scale=scale, protocol=protocol) == math.inf
    assert ssim(sr, hr, scale=scale, protocol=protocol) == pytest.approx(1.0, abs=1e-12)
    # One error on the first kept pixel (row s, column s): counted over the (h-2s)x(w-2s) area.
    sr = hr.copy()
    sr[s, s] += 8
    n = (h - 2 * s) * (w - 2 * s)
    dy = 8 * 219 / 255 if protocol == "benchmark" else 8  # Y error, or the same on all channels
    expected = 10 * math.log10(255**2 * n / dy**2)
    assert psnr(sr, hr, scale=scale, protocol=protocol) == pytest.approx(expected, abs=1e-9)


def test_psnr_matches_skimage(photo, rng):
    sr = _noisy(photo, rng)
    for protocol, a, b in [
        ("div2k", sr[10:-10, 10:-10], photo[10:-10, 10:-10]),
        ("benchmark", rgb_to_y(sr)[4:-4, 4:-4], rgb_to_y(photo)[4:-4, 4:-4]),
    ]:
        ref = peak_signal_noise_ratio(b.astype(float), a.astype(float), data_range=255)
        assert psnr(sr, photo, scale=4, protocol=protocol) == pytest.approx(ref, abs=1e-9)


# --- SSIM --------------------------------------------------------------------------------------


def test_ssim_of_constant_images_is_the_luminance_term():
    # Constant images: every local variance and covariance is 0, so SSIM reduces to
    # (2 m1 m2 + C1) / (m1^2 + m2^2 + C1) with m the constants.
    hr = _const(40, 40, (100, 150, 200))
    sr = _const(40, 40, (110, 140, 200))

    def lum(m1, m2):
        return (2 * m1 * m2 + C1) / (m1**2 + m2**2 + C1)

    expected_rgb = (lum(110, 100) + lum(140, 150) + lum(200, 200)) / 3
    assert ssim(sr, hr, scale=2, protocol="div2k") == pytest.approx(expected_rgb, abs=1e-12)
    y_sr = 16 + (65.481 * 110 + 128.553 * 140 + 24.966 * 200) / 255
    y_hr = 16 + (65.481 * 100 + 128.553 * 150 + 24.966 * 200) / 255
    assert ssim(sr, hr, scale=2, protocol="benchmark") == pytest.approx(
        lum(y_sr, y_hr), abs=1e-12
    )


def _skimage_ssim(a, b):
    # skimage filters with 'reflect' padding, then averages only the map more than 5 pixels from
    # the border, which is exactly MATLAB's 'valid' region; with these options the windows and
    # weights are Wang et al.'s (11 taps, sigma 1.5, population statistics).
    return structural_similarity(
        a.astype(float),
        b.astype(float),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=255,
    )


def test_ssim_matches_skimage_on_a_photo(photo, rng):
    sr = _noisy(photo, rng, amplitude=20)
    a, b = sr[10:-10, 10:-10], photo[10:-10, 10:-10]
    expected_rgb = np.mean([_skimage_ssim(a[..., c], b[..., c]) for c in range(3)])
    got = ssim(sr, photo, scale=4, protocol="div2k")
    assert got == pytest.approx(expected_rgb, abs=1e-9)
    assert 0.3 < got < 0.99  # a real, imperfect score: the test can tell methods apart

    expected_y = _skimage_ssim(rgb_to_y(sr)[4:-4, 4:-4], rgb_to_y(photo)[4:-4, 4:-4])
    assert ssim(sr, photo, scale=4, protocol="benchmark") == pytest.approx(expected_y, abs=1e-9)


def test_ssim_uses_valid_windows_only(rng):
    # A pixel in the shaved-off border is in no 11x11 window; the corner pixel of the shaved
    # image is in exactly one (the first 'valid' window), and that is enough to lower the mean.
    hr = rng.integers(20, 200, (40, 40, 3), dtype=np.uint8)
    sr = hr.copy()
    sr[2, 2] += 40  # benchmark x2: shave 2, so (2, 2) is the shaved image's corner pixel
    assert ssim(sr, hr, scale=2, protocol="benchmark") < 1.0
    sr = hr.copy()
    sr[1, 1] += 40  # in the shaved border
    assert ssim(sr, hr, scale=2, protocol="benchmark") == pytest.approx(1.0, abs=1e-12)


def test_score_bundles_both(photo, rng):
    sr = _noisy(photo, rng)
    s = score(sr, photo, scale=2, protocol="benchmark")
    assert isinstance(s, Score)
    assert s.psnr == psnr(sr, photo, scale=2, protocol="benchmark")
    assert s.ssim == ssim(sr, photo, scale=2, protocol="benchmark")


def test_div2k_sized_image(photo, rng):
    """A 2040x1356 image (DIV2K HR size) under both protocols."""
    hr = np.minimum(np.tile(photo, (3, 4, 1))[:1356, :2040], 250)  # room for the offset
    sr = hr + np.uint8(3)
    assert psnr(sr, hr, scale=4, protocol="div2k") == pytest.approx(
        10 * math.log10(255**2 / 9), abs=1e-9
    )
    noisy = _noisy(hr, rng, amplitude=6)
    expected = _skimage_ssim(rgb_to_y(noisy)[4:-4, 4:-4], rgb_to_y(hr)[4:-4, 4:-4])
    assert ssim(noisy, hr, scale=4, protocol="benchmark") == pytest.approx(expected, abs=1e-9)


# --- folders -----------------------------------------------------------------------------------


def _save(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


@pytest.fixture
def pair_dirs(tmp_path, rng):
    """HR 0801-0803 (40x44) and SR images under the three naming forms, offsets 2, 4, 8."""
    hr_dir, sr_dir = tmp_path / "hr", tmp_path / "sr"
    names = ["0801.png", "0802x2.png", "0803_x2_SR.png"]
    for i, (sr_name, d) in enumerate(zip(names, (2, 4, 8), strict=True)):
        hr = rng.integers(20, 200, (40, 44, 3), dtype=np.uint8)
        _save(hr_dir / f"080{i + 1}.png", hr)
        _save(sr_dir / sr_name, hr + np.uint8(d))
    return sr_dir, hr_dir


def test_match_accepts_three_naming_forms(pair_dirs):
    sr_dir, hr_dir = pair_dirs
    pairs, unmatched = match_sr_to_hr(sr_dir, hr_dir, 2)
    assert [(s.name, h.name) for s, h in pairs] == [
        ("0801.png", "0801.png"),
        ("0802x2.png", "0802.png"),
        ("0803_x2_SR.png", "0803.png"),
    ]
    assert unmatched == []


def test_an_sr_image_without_an_hr_partner_is_an_error_unless_ignored(pair_dirs):
    sr_dir, hr_dir = pair_dirs
    _save(sr_dir / "0804x3.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match=r"1 SR image\(s\) without an HR partner.*0804x3\.png.*--ignore-unmatched"):
        match_sr_to_hr(sr_dir, hr_dir, 2)
    pairs, unmatched = match_sr_to_hr(sr_dir, hr_dir, 2, ignore_unmatched=True)
    assert len(pairs) == 3 and [p.name for p in unmatched] == ["0804x3.png"]
    result = evaluate_folders(sr_dir, hr_dir, scale=2, protocol="div2k", ignore_unmatched=True)
    assert result["unmatched_sr"] == ["0804x3.png"] and len(result["per_image"]) == 3


def test_temp_files_of_a_killed_writer_are_not_images(pair_dirs):
    sr_dir, hr_dir = pair_dirs
    (sr_dir / ".0804x2.png.k3j2_x.tmp").write_bytes(b"")  # what atomic_path leaves on SIGKILL
    pairs, unmatched = match_sr_to_hr(sr_dir, hr_dir, 2)
    assert len(pairs) == 3 and unmatched == []


def test_match_missing_sr_names_the_file(pair_dirs):
    sr_dir, hr_dir = pair_dirs
    (sr_dir / "0802x2.png").unlink()
    with pytest.raises(DataError, match=r"0802\.png: no SR image.*0802x2\.png"):
        match_sr_to_hr(sr_dir, hr_dir, 2)
    # The x3 form does not count at scale 2.
    _save(sr_dir / "0802x3.png", np.zeros((40, 44, 3), np.uint8))
    with pytest.raises(DataError, match="0802.png"):
        match_sr_to_hr(sr_dir, hr_dir, 2)


def test_match_ambiguous_is_an_error(pair_dirs):
    sr_dir, hr_dir = pair_dirs
    _save(sr_dir / "0801x2.png", np.zeros((40, 44, 3), np.uint8))
    with pytest.raises(DataError, match=r"ambiguous.*0801\.png, 0801x2\.png"):
        match_sr_to_hr(sr_dir, hr_dir, 2)


def test_match_missing_folder_and_empty_hr(tmp_path):
    (tmp_path / "sr").mkdir()
    (tmp_path / "hr").mkdir()
    with pytest.raises(DataError, match="nope"):
        match_sr_to_hr(tmp_path / "sr", tmp_path / "nope", 2)
    with pytest.raises(DataError, match="no images"):
        match_sr_to_hr(tmp_path / "sr", tmp_path / "hr", 2)


def test_evaluate_folders_values_and_mean(pair_dirs):
    sr_dir, hr_dir = pair_dirs
    result = evaluate_folders(sr_dir, hr_dir, scale=2, protocol="div2k")
    assert list(result) == ["per_image", "mean", "unmatched_sr"]
    assert list(result["per_image"]) == ["0801", "0802", "0803"]
    expected = [20 * math.log10(255 / d) for d in (2, 4, 8)]
    got = [v["psnr"] for v in result["per_image"].values()]
    np.testing.assert_allclose(got, expected, atol=1e-9)
    # Mean of per-image PSNRs (the literature's convention), not the PSNR of the pooled MSE.
    assert result["mean"]["psnr"] == pytest.approx(sum(expected) / 3, abs=1e-9)
    ssims = [v["ssim"] for v in result["per_image"].values()]
    assert all(0 < s < 1 for s in ssims) and ssims == sorted(ssims, reverse=True)
    assert result["mean"]["ssim"] == pytest.approx(sum(ssims) / 3, abs=1e-12)


def test_hr_larger_by_less_than_scale_is_cropped_top_left(tmp_path, rng):
    hr = rng.integers(0, 256, (43, 47, 3), dtype=np.uint8)  # not multiples of 4
    _save(tmp_path / "hr" / "a.png", hr)
    _save(tmp_path / "sr" / "ax4.png", hr[:40, :44])  # SR = 4 x (10 x 11) LR
    result = evaluate_folders(tmp_path / "sr", tmp_path / "hr", scale=4, protocol="benchmark")
    assert result["per_image"]["a"]["psnr"] == math.inf


@pytest.mark.parametrize("sr_size", [(36, 44), (40, 48), (40, 40)])
def test_mis_sized_sr_names_file_and_sizes(tmp_path, rng, sr_size):
    hr = rng.integers(0, 256, (43, 47, 3), dtype=np.uint8)
    _save(tmp_path / "hr" / "a.png", hr)
    _save(tmp_path / "sr" / "a.png", np.zeros(sr_size + (3,), np.uint8))
    h, w = sr_size
    with pytest.raises(DataError, match=rf"sr/a\.png.*{w}x{h}.*47x43"):
        evaluate_folders(tmp_path / "sr", tmp_path / "hr", scale=4, protocol="benchmark")


def test_sr_file_matching_two_hr_files_is_ambiguous(tmp_path):
    image = np.zeros((40, 40, 3), np.uint8)
    _save(tmp_path / "hr" / "a.png", image)
    _save(tmp_path / "hr" / "ax2.png", image)
    _save(tmp_path / "sr" / "ax2.png", image)  # exact name of one, x2 form of the other
    with pytest.raises(DataError, match=r"ax2\.png: ambiguous.*a\.png and ax2\.png"):
        match_sr_to_hr(tmp_path / "sr", tmp_path / "hr", 2)
