"""The whole-image readers for validation and the benchmark sets."""

from __future__ import annotations

import numpy as np

from ntire.data.whole_images import benchmark_images, validation_images


def test_validation_and_benchmark_images(sample_root):
    images = validation_images(sample_root, track="bicubic", scales=(2, 3))
    assert [(n, s) for n, s, _, _ in images] == [("0801", 2), ("0802", 2), ("0801", 3), ("0802", 3)]
    for _, s, lr, hr in images:
        assert lr.dtype == np.uint8 and hr.shape == (lr.shape[0] * s, lr.shape[1] * s, 3)
    chelsea = images[3]  # 300x451 photo: the HR is cropped to 300x450 for x3
    assert chelsea[3].shape == (300, 450, 3)
    test = validation_images(sample_root, track="unknown", scales=(4,), split="test")
    assert [n for n, *_ in test] == ["0901", "0902"] and test[0][3] is None
    bench = benchmark_images(sample_root, "Sample5", (4,))
    assert len(bench) == 5 and bench[0][0] == "astronaut" and bench[0][2].shape == (128, 128, 3)
