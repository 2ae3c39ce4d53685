"""Degradation: MATLAB imresize checked against values derived by hand, printed MATLAB output,
an independent per-pixel reference and PIL; the unknown-track stand-in; the CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ntire.__main__ import main
from ntire.data.degrade import (
    TRACKS,
    UNKNOWN_BLUR,
    bicubic_downscale,
    bicubic_upscale,
    crop_to_multiple,
    cubic_kernel,
    degrade,
    imresize,
    resize_weights,
    round_to_uint8,
    unknown_downscale,
    unknown_kernel,
)
from ntire.errors import ConfigError, ImageError
from ntire.images import read_image, write_png


def _keys(t: float) -> float:
    """Keys' cubic with a = -0.5, written out from the paper's piecewise formula."""
    t = abs(t)
    if t <= 1:
        return 1.5 * t**3 - 2.5 * t**2 + 1
    if t < 2:
        return -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2
    return 0.0


def _mirror(j: int, n: int) -> int:
    """Symmetric extension with the edge sample repeated: -1 -> 0, -2 -> 1, n -> n - 1."""
    while j < 0 or j >= n:
        j = -j - 1 if j < 0 else 2 * n - 1 - j
    return j


# --- the kernel ------------------------------------------------------------------------------


def test_cubic_kernel_known_values_and_partition_of_unity():
    assert cubic_kernel(0.0) == 1
    for x in (1, -1, 2, -2, 2.5, -3):
        assert cubic_kernel(float(x)) == 0
    assert cubic_kernel(0.5) == 0.5625 and cubic_kernel(-0.5) == 0.5625
    assert cubic_kernel(1.5) == -0.0625
    shifts = np.linspace(0, 1, 17)
    total = sum(cubic_kernel(shifts + k) for k in range(-3, 4))
    np.testing.assert_allclose(total, 1.0, atol=1e-15)


# --- weights and boundary, derived by hand -----------------------------------------------------


def test_half_scale_weights_and_symmetric_boundary_by_hand():
    # Shrinking by 2: the kernel is k(d / 2) / 2 over 8 taps at d = +-0.5, +-1.5, +-2.5, +-3.5.
    # k(0.25) = 111/128, k(0.75) = 29/128, k(1.25) = -9/128, k(1.75) = -3/128, so the taps are
    # [-3, -9, 29, 111, 111, 29, -9, -3] / 256 (they already sum to 1). Output i (0-based) is
    # centred at input 2 i + 0.5 (MATLAB: u = x / scale + 0.5 (1 - 1 / scale), 1-based), so its
    # taps are inputs 2i - 3 .. 2i + 4, mirrored at the borders with the edge repeated.
    w = np.array([-3, -9, 29, 111, 111, 29, -9, -3]) / 256
    taps = {0: [2, 1, 0, 0, 1, 2, 3, 4], 1: [0, 0, 1, 2, 3, 4, 5, 6], 2: [1, 2, 3, 4, 5, 6, 7, 7],
            3: [3, 4, 5, 6, 7, 7, 6, 5]}  # fmt: skip
    weights, indices = resize_weights(8, 4, 0.5)
    np.testing.assert_allclose(weights, np.tile(w, (4, 1)), atol=1e-15)
    assert indices.tolist() == [taps[i] for i in range(4)]

    signal = np.array([10.0, 200, 30, 0, 255, 90, 90, 7])
    expected = [sum(wk * signal[j] for wk, j in zip(w, taps[i])) for i in range(4)]
    column = imresize(signal[:, None], output_shape=(4, 1))  # the column pass is the identity
    np.testing.assert_allclose(column[:, 0], expected, atol=1e-12)
    row = imresize(signal[None, :], output_shape=(1, 4))
    np.testing.assert_allclose(row[0], expected, atol=1e-12)


def test_double_scale_weights_by_hand():
    # Enlarging by 2: output i sits at input i / 2 - 0.25. Even outputs 2m use inputs
    # m-2 .. m+1 with [-3, 29, 111, -9] / 128 (k(1.75), k(0.75), k(0.25), k(1.25)); odd outputs
    # 2m+1 use m-1 .. m+2 with the mirror image [-9, 111, 29, -3] / 128.
    even, odd = np.array([-3, 29, 111, -9]) / 128, np.array([-9, 111, 29, -3]) / 128
    x = np.array([40.0, 0, 100, 250])
    expected = []
    for m in range(4):
        expected.append(sum(w * x[_mirror(j, 4)] for w, j in zip(even, range(m - 2, m + 2))))
        expected.append(sum(w * x[_mirror(j, 4)] for w, j in zip(odd, range(m - 1, m + 3))))
    np.testing.assert_allclose(imresize(x[None, :], 2)[0], expected, atol=1e-12)


def test_quarter_scale_weights_follow_the_formula():
    # 16 taps k(d / 4) / 4 at d = +-0.5 .. +-7.5 around input 4 i + 1.5.
    n = 20
    weights, indices = resize_weights(n, n // 4, 0.25)
    for i in range(n // 4):
        centre = 4 * i + 1.5
        js = range(4 * i - 6, 4 * i + 10)
        raw = np.array([_keys((centre - j) / 4) / 4 for j in js])
        np.testing.assert_allclose(weights[i], raw / raw.sum(), atol=1e-15)
        assert indices[i].tolist() == [_mirror(j, n) for j in js]


# --- printed MATLAB output -------------------------------------------------------------------

# MATLAB's own printed results (4 decimals). Both come from releases that replicated the edge
# pixel beyond the border (Steve Eddins, MathWorks, says so in the second thread), hence
# padding="replicate". Their interiors do not depend on the boundary rule.
# https://stackoverflow.com/questions/17380407 (2013): imresize([0 0 1 1 0], [1, 10])
MATLAB_ROW_IN = [[0.0, 0, 1, 1, 0]]
MATLAB_ROW_OUT = [[0, -0.0234, -0.0703, 0.2031, 0.7969, 1.0938, 1.0938, 0.7969, 0.2031, -0.0703]]
# https://www.mathworks.com/matlabcentral/answers/1628 (2011): imresize(A, size(A) * 2, 'bicubic')
MATLAB_A = [[3.0, 1, 2, 6], [1, 5, 2, 7], [1, 3, 6, 2], [4, 1, 9, 2]]
MATLAB_A2 = [
    [3.3109, 2.6187, 1.1206, 0.7166, 1.4067, 2.8883, 5.1615, 6.2060],
    [2.6454, 2.4435, 2.0052, 1.7138, 1.5692, 2.8062, 5.4248, 6.6307],
    [1.2008, 2.0609, 3.9181, 3.8763, 1.9355, 2.6382, 5.9844, 7.5302],
    [0.4985, 1.6796, 4.2357, 4.6921, 3.0489, 3.2618, 5.3307, 6.2876],
    [0.5384, 1.2996, 2.9579, 4.1612, 4.9094, 4.6769, 3.4639, 2.9028],
    [1.5500, 1.6768, 1.9697, 3.5367, 6.3776, 6.1378, 2.8173, 1.2798],
    [3.5334, 2.8110, 1.2710, 2.8185, 7.4537, 7.6444, 3.3907, 1.4186],
    [4.4466, 3.3344, 0.9529, 2.4891, 7.9430, 8.3334, 3.6605, 1.4930],
]


def test_matches_printed_matlab_output():
    row = imresize(np.array(MATLAB_ROW_IN), output_shape=(1, 10), padding="replicate")
    np.testing.assert_allclose(row, MATLAB_ROW_OUT, atol=5.1e-5)
    a2 = imresize(np.array(MATLAB_A), output_shape=(8, 8), padding="replicate")
    np.testing.assert_allclose(a2, MATLAB_A2, atol=5.1e-5)
    # With today's mirrored boundary the interior is unchanged and the border is not.
    mirrored = imresize(np.array(MATLAB_A), 2)
    np.testing.assert_allclose(mirrored[3:5, 3:5], np.array(MATLAB_A2)[3:5, 3:5], atol=5.1e-5)
    assert np.abs(mirrored - MATLAB_A2).max() > 0.1
    # The last sample mirrors x[4], x[3] = 0, 1 instead of repeating 0: (-9 - 3) / 128.
    assert imresize(np.array(MATLAB_ROW_IN), output_shape=(1, 10))[0, -1] == pytest.approx(-12 / 128)


# --- properties --------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_constant_image_stays_constant(scale):
    flat = np.full((12 * scale, 9 * scale, 3), 77, np.uint8)
    assert np.array_equal(bicubic_downscale(flat, scale), np.full((12, 9, 3), 77, np.uint8))
    assert np.array_equal(bicubic_upscale(flat[:5, :4], scale), np.full((5 * scale, 4 * scale, 3), 77))
    np.testing.assert_allclose(imresize(flat.astype(float) / 3, 1 / scale), 77 / 3, atol=1e-12)
    # At a non-integer factor the kernel no longer sums to 1 by itself; the weights are normalised.
    np.testing.assert_allclose(imresize(flat.astype(float), output_shape=(7, 31)), 77, atol=1e-12)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_linear_ramp_is_reproduced_away_from_borders(scale):
    # Cubic convolution reproduces linear functions; output pixel i sits at input
    # (i + 0.5) * s - 0.5 when shrinking by s and at (i + 0.5) / s - 0.5 when enlarging.
    h, w = 10 * scale, 12 * scale
    r, c = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    ramp = 0.7 * r - 1.3 * c + 5
    lr = imresize(ramp, 1 / scale)
    i, j = np.meshgrid(np.arange(10), np.arange(12), indexing="ij")
    expected = 0.7 * ((i + 0.5) * scale - 0.5) - 1.3 * ((j + 0.5) * scale - 0.5) + 5
    np.testing.assert_allclose(lr[2:-2, 2:-2], expected[2:-2, 2:-2], atol=1e-9)
    assert np.abs(lr - expected).max() > 0.01  # the mirrored border bends the ramp
    up = imresize(ramp[:8, :8], scale)
    i, j = np.meshgrid(np.arange(8 * scale), np.arange(8 * scale), indexing="ij")
    expected = 0.7 * ((i + 0.5) / scale - 0.5) - 1.3 * ((j + 0.5) / scale - 0.5) + 5
    m = 2 * scale
    np.testing.assert_allclose(up[m:-m, m:-m], expected[m:-m, m:-m], atol=1e-9)


def test_uint8_intermediate_is_rounded_and_rows_go_first():
    # MATLAB keeps the first pass in the input's class; with equal factors it resizes rows
    # (height) first. A step that varies down the rows only: after the row pass, the column pass
    # is the identity, so uint8 input comes out whole numbers clipped to 0-255, float input not.
    step = np.repeat(np.array([0, 0, 0, 255, 255, 255, 0, 0], np.uint8)[:, None], 6, axis=1)
    as_uint8 = imresize(step, 2)
    as_float = imresize(step.astype(np.float64), 2)
    assert as_float.min() < -10 and as_float.max() > 265
    np.testing.assert_allclose(as_uint8, np.clip(np.floor(as_float + 0.5), 0, 255), atol=1e-9)
    # Varying along the columns instead, the rounded pass is not the last one.
    across = imresize(step.T.copy(), 2)
    np.testing.assert_allclose(across, as_float.T, atol=1e-9)


def test_round_to_uint8_rounds_half_away_from_zero_and_saturates():
    x = np.array([-3.0, 0.4999, 0.5, 1.5, 2.5, 254.5, 300])
    assert round_to_uint8(x).tolist() == [0, 0, 1, 2, 3, 255, 255]


# --- agreement with independent implementations -----------------------------------------------


def _reference_pass(image: np.ndarray, scale: int, axis: int) -> np.ndarray:
    """Shrink along `axis` by `scale` straight from the definition, one output line at a time."""
    x = np.moveaxis(image, axis, 0)
    n = x.shape[0]
    out = []
    for i in range(n // scale):
        centre = (i + 0.5) * scale - 0.5
        js = [j for j in range(int(centre) - 2 * scale - 1, int(centre) + 2 * scale + 2)
              if abs(centre - j) < 2 * scale]  # fmt: skip
        w = np.array([_keys((centre - j) / scale) for j in js])
        out.append(sum(wk * x[_mirror(j, n)] for wk, j in zip(w / w.sum(), js)))
    return np.moveaxis(np.array(out), 0, axis)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_downscale_agrees_with_per_pixel_reference_within_one_level(photo, scale):
    hr = photo[200 : 200 + 9 * scale + 1, 250 : 250 + 7 * scale + 1]  # not a multiple: cropped
    cropped = hr[: 9 * scale, : 7 * scale].astype(float)
    rows = np.clip(np.floor(_reference_pass(cropped, scale, 0) + 0.5), 0, 255)
    expected = np.clip(np.floor(_reference_pass(rows, scale, 1) + 0.5), 0, 255)
    got = bicubic_downscale(hr, scale)
    assert got.shape == (9, 7, 3)
    diff = np.abs(got.astype(int) - expected)
    assert diff.max() <= 1
    assert (diff == 0).mean() > 0.99


def _pil_float(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    channels = [Image.fromarray(image[..., c].astype(np.float32), "F").resize(size, Image.BICUBIC)
                for c in range(image.shape[2])]  # fmt: skip
    return np.stack([np.asarray(c, np.float64) for c in channels], axis=-1)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_interior_matches_pils_bicubic(photo, scale):
    # PIL's BICUBIC is an independent implementation of the same kernel (a = -0.5), widened by the
    # factor when shrinking, with the same pixel-centre alignment. It renormalises at the borders
    # instead of mirroring, so only the interior must agree (to float32 precision).
    hr = crop_to_multiple(photo, scale).astype(np.float64)
    h, w = hr.shape[0] // scale, hr.shape[1] // scale
    m = 2 * scale
    ours = imresize(hr, 1 / scale)
    pil = _pil_float(hr, (w, h))
    assert np.abs(ours - pil)[m:-m, m:-m].max() < 1e-3
    assert np.abs(ours - pil).max() > 0.5
    up = imresize(ours[:40, :40], scale)
    pil_up = _pil_float(ours[:40, :40], (40 * scale, 40 * scale))
    assert np.abs(up - pil_up)[m:-m, m:-m].max() < 1e-3
    # In uint8 the two differ (border rule, pass order, fixed-point) but only slightly.
    pil_uint8 = np.asarray(Image.fromarray(crop_to_multiple(photo, scale)).resize((w, h), Image.BICUBIC))
    lr = bicubic_downscale(photo, scale)
    psnr = 10 * np.log10(255**2 / np.mean((lr.astype(float) - pil_uint8) ** 2))
    assert 45 < psnr < 80


# --- shapes and cropping -----------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(13, 11), (7, 9), (16, 17)])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_output_shapes_after_crop(rng, shape, scale):
    hr = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
    for fn in (bicubic_downscale, unknown_downscale):
        lr = fn(hr, scale)
        assert lr.shape == (shape[0] // scale, shape[1] // scale, 3) and lr.dtype == np.uint8
        # Only the bottom rows and right columns are cropped away.
        changed = hr.copy()
        changed[shape[0] // scale * scale :] = 0
        changed[:, shape[1] // scale * scale :] = 0
        assert np.array_equal(fn(changed, scale), lr)
    up = bicubic_upscale(lr, scale)
    assert up.shape == (lr.shape[0] * scale, lr.shape[1] * scale, 3) and up.dtype == np.uint8


def test_crop_to_multiple():
    img = np.arange(7 * 10).reshape(7, 10)
    assert np.array_equal(crop_to_multiple(img, 3), img[:6, :9])
    assert crop_to_multiple(img, 1).shape == (7, 10)


def test_bad_inputs_are_refused():
    with pytest.raises(ImageError, match="smaller than the scale"):
        bicubic_downscale(np.zeros((3, 8, 3), np.uint8), 4)
    with pytest.raises(ImageError, match="uint8"):
        bicubic_downscale(np.zeros((8, 8, 3), np.float32), 2)
    with pytest.raises(ConfigError, match="scale"):
        bicubic_downscale(np.zeros((8, 8, 3), np.uint8), 0)


# --- unknown-track stand-in ----------------------------------------------------------------------


@pytest.mark.parametrize("scale", sorted(UNKNOWN_BLUR))
def test_unknown_kernel_is_normalised_centred_and_anisotropic(scale):
    k = unknown_kernel(scale)
    assert k.shape[0] == k.shape[1] and (k.shape[0] - scale) % 2 == 0
    assert k.sum() == pytest.approx(1.0, abs=1e-12) and (k > 0).all()
    np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-15)  # point-symmetric: no shift
    assert np.abs(k - k.T).max() > 1e-3  # rotated and elongated, not isotropic
    if scale % 2:  # odd: the block centre is a pixel, and the peak
        assert np.unravel_index(k.argmax(), k.shape) == (k.shape[0] // 2, k.shape[1] // 2)


@pytest.mark.parametrize("scale", sorted(UNKNOWN_BLUR))
def test_unknown_kernel_has_the_documented_axes(scale):
    # Second moments of the kernel: the major axis points 30 degrees from the width axis towards
    # the height axis, and the spreads are the documented sigmas (3-sigma truncation trims ~1%).
    sigma_major, sigma_minor, angle = UNKNOWN_BLUR[scale]
    assert (sigma_major, sigma_minor, angle) == pytest.approx((0.6 * scale, 0.4 * scale, 30.0))
    k = unknown_kernel(scale)
    t = np.arange(k.shape[0]) - (k.shape[0] - 1) / 2
    ty, tx = np.meshgrid(t, t, indexing="ij")
    cov = np.array([[np.sum(k * tx * tx), np.sum(k * tx * ty)], [np.sum(k * tx * ty), np.sum(k * ty * ty)]])
    variances, vectors = np.linalg.eigh(cov)
    major = vectors[:, 1]
    assert np.degrees(np.arctan2(major[1], major[0])) % 180 == pytest.approx(30.0, abs=0.5)
    assert np.sqrt(variances[1]) == pytest.approx(sigma_major, rel=0.03)
    assert np.sqrt(variances[0]) == pytest.approx(sigma_minor, rel=0.03)


@pytest.mark.parametrize("scale", sorted(UNKNOWN_BLUR))
def test_unknown_downscale_is_deterministic_and_keeps_linear_content(photo, scale):
    lr = unknown_downscale(photo, scale)
    assert np.array_equal(lr, unknown_downscale(photo.copy(), scale))
    assert not np.array_equal(lr, bicubic_downscale(photo, scale))
    flat = np.full((8 * scale, 8 * scale, 3), 131, np.uint8)
    assert np.array_equal(unknown_downscale(flat, scale), np.full((8, 8, 3), 131, np.uint8))
    # A symmetric kernel sampled at block centres reproduces a ramp (up to rounding) inside.
    n = 16
    r, c = np.meshgrid(np.arange(n * scale), np.arange(n * scale), indexing="ij")
    ramp = np.repeat((20 + 2 * r + c)[..., None], 3, axis=2).astype(np.uint8)
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    expected = 20 + 2 * ((i + 0.5) * scale - 0.5) + ((j + 0.5) * scale - 0.5)
    got = unknown_downscale(ramp, scale)[..., 0].astype(float)
    m = (unknown_kernel(scale).shape[0] - scale) // (2 * scale) + 1
    assert np.abs(got - expected)[m:-m, m:-m].max() <= 0.5 + 1e-9


def test_unknown_downscale_matches_direct_sum(rng):
    hr = rng.integers(0, 256, (11, 9, 3), dtype=np.uint8)
    k = unknown_kernel(2)
    margin = (k.shape[0] - 2) // 2
    expected = np.zeros((5, 4, 3))
    for i in range(5):
        for j in range(4):
            for ky in range(k.shape[0]):
                for kx in range(k.shape[1]):
                    y, x = _mirror(2 * i - margin + ky, 10), _mirror(2 * j - margin + kx, 8)
                    expected[i, j] += k[ky, kx] * hr[y, x]
    assert np.array_equal(unknown_downscale(hr, 2), np.floor(expected + 0.5).astype(np.uint8))


def test_unknown_scale_without_kernel_is_refused():
    with pytest.raises(ConfigError, match="x5"):
        unknown_downscale(np.zeros((20, 20, 3), np.uint8), 5)


# --- dispatch and CLI ------------------------------------------------------------------------------


def test_degrade_dispatches_and_names_bad_track(photo):
    small = photo[:64, :48]
    assert TRACKS == ("bicubic", "unknown")
    assert np.array_equal(degrade(small, 2, "bicubic"), bicubic_downscale(small, 2))
    assert np.array_equal(degrade(small, 3, "unknown"), unknown_downscale(small, 3))
    with pytest.raises(ConfigError, match="track.*'mild'.*bicubic, unknown|'mild'.*track"):
        degrade(small, 2, "mild")


def test_cli_folder_writes_div2k_names(tmp_path, photo, capsys):
    src, dst = tmp_path / "HR", tmp_path / "LR" / "X2"
    write_png(src / "0801.png", photo[:64, :50])
    write_png(src / "0802.png", photo[100:131, 200:245])
    assert main(["degrade", "--track", "bicubic", "--scale", "2", str(src), str(dst)]) == 0
    assert sorted(p.name for p in dst.iterdir()) == ["0801x2.png", "0802x2.png"]
    lr = read_image(dst / "0802x2.png")
    assert np.array_equal(lr, bicubic_downscale(photo[100:131, 200:245], 2)) and lr.shape == (15, 22, 3)
    # A single file into an existing folder, unknown track.
    assert main(["degrade", "--track", "unknown", "--scale", "4", str(src / "0801.png"), str(dst)]) == 0
    assert np.array_equal(read_image(dst / "0801x4.png"), unknown_downscale(photo[:64, :50], 4))
    capsys.readouterr()
    assert main(["degrade", "--track", "bicubic", "--scale", "2", str(src), str(src)]) == 2
    assert "input folder" in capsys.readouterr().err


def test_cli_missing_src_is_a_clear_error(tmp_path):
    missing = tmp_path / "no_such_dir"
    command = ["degrade", "--track", "bicubic", "--scale", "2", str(missing), str(tmp_path / "out")]
    result = subprocess.run(
        [sys.executable, "-m", "ntire", *command],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert str(missing) in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
