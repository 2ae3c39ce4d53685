"""DIV2K and benchmark layouts: pairs found as published, and every fault named by its file."""

from __future__ import annotations

import numpy as np
import pytest

from ntire.data.layout import benchmark_pairs, check_pair, div2k_pairs
from ntire.errors import DataError
from ntire.images import write_png


def _img(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(h * 1000 + w).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _fake_div2k(root, names=("0001", "0002"), hr_size=(26, 37), scales=(2, 3)):
    """A tiny DIV2K tree with odd HR sizes, so LR sizes depend on the crop-to-multiple rule."""
    for name in names:
        write_png(root / "DIV2K_train_HR" / f"{name}.png", _img(*hr_size))
        for s in scales:
            lr = _img(hr_size[0] // s, hr_size[1] // s)
            write_png(root / "DIV2K_train_LR_bicubic" / f"X{s}" / f"{name}x{s}.png", lr)
    return root


def test_sample_dataset_splits(sample_root):
    train = div2k_pairs(sample_root, split="train", track="bicubic", scales=(2, 3, 4))
    assert [p.name for p in train] == [f"{i:04d}" for i in range(1, 9)]
    assert train[0].hr.name == "0001.png" and train[0].lr[3].name == "0001x3.png"
    assert train[0].lr[3].parent.name == "X3" and "DIV2K_train_LR_bicubic" in str(train[0].lr[3])
    valid = div2k_pairs(sample_root / "DIV2K", split="valid", track="unknown", scales=(4,))
    assert [p.name for p in valid] == ["0801", "0802"] and "LR_unknown" in str(valid[0].lr[4])
    test = div2k_pairs(sample_root, split="test", track="bicubic", scales=(2, 4))
    assert [p.name for p in test] == ["0901", "0902"] and all(p.hr is None for p in test)


def test_index_range_keeps_only_present_files(sample_root):
    pairs = div2k_pairs(sample_root, split="train", track="bicubic", scales=(2,), indices=range(7, 20))
    assert [p.name for p in pairs] == ["0007", "0008"]
    with pytest.raises(DataError, match="no images numbered 0100-0199"):
        div2k_pairs(sample_root, split="train", track="bicubic", scales=(2,), indices=range(100, 200))


def test_benchmark_set(sample_root):
    pairs = benchmark_pairs(sample_root, "Sample5", (2, 3, 4))
    assert [p.name for p in pairs] == ["astronaut", "camera", "chelsea", "coins", "moon"]
    assert pairs[0].lr[4].name == "astronautx4.png"
    assert benchmark_pairs(sample_root / "benchmark", "Sample5", (2,))[0].name == "astronaut"
    with pytest.raises(DataError, match="Set14.*folder not found"):
        benchmark_pairs(sample_root, "Set14", (2,))


def test_lr_size_follows_crop_to_multiple(tmp_path):
    root = _fake_div2k(tmp_path, hr_size=(26, 37), scales=(2, 3))
    pairs = div2k_pairs(root, split="train", track="bicubic", scales=(2, 3))
    for pair in pairs:
        check_pair(pair, 2)
        check_pair(pair, 3)


def test_missing_folder_is_named(tmp_path):
    root = _fake_div2k(tmp_path, scales=(2,))
    with pytest.raises(DataError, match=r"DIV2K_train_LR_bicubic[/\\]X3: folder not found"):
        div2k_pairs(root, split="train", track="bicubic", scales=(2, 3))
    with pytest.raises(DataError, match=r"DIV2K_train_LR_unknown[/\\]X2: folder not found"):
        div2k_pairs(root, split="train", track="unknown", scales=(2,))
    with pytest.raises(DataError, match="DIV2K_valid"):
        div2k_pairs(root, split="valid", track="bicubic", scales=(2,))


def test_missing_lr_file_is_named(tmp_path):
    root = _fake_div2k(tmp_path, scales=(2, 3))
    (root / "DIV2K_train_LR_bicubic" / "X3" / "0002x3.png").unlink()
    with pytest.raises(DataError, match=r"0002x3\.png: LR image missing"):
        div2k_pairs(root, split="train", track="bicubic", scales=(2, 3))


def test_mis_sized_lr_is_named(tmp_path):
    root = _fake_div2k(tmp_path, hr_size=(26, 37), scales=(2, 3))
    # 37 // 3 = 12 columns; an LR made without the crop-to-multiple rule would round up to 13.
    write_png(root / "DIV2K_train_LR_bicubic" / "X3" / "0001x3.png", _img(9, 13))
    with pytest.raises(DataError, match=r"0001x3\.png: LR size 13x9 is not HR size 37x26 // 3 = 12x8"):
        div2k_pairs(root, split="train", track="bicubic", scales=(2, 3))
    # without the header check the pair list is still built
    assert len(div2k_pairs(root, split="train", track="bicubic", scales=(2, 3), check=False)) == 2


def test_unreadable_file_is_named(tmp_path):
    root = _fake_div2k(tmp_path, scales=(2,))
    (root / "DIV2K_train_HR" / "0002.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"0002\.png: unreadable image"):
        div2k_pairs(root, split="train", track="bicubic", scales=(2,))


def test_bad_arguments(tmp_path):
    root = _fake_div2k(tmp_path, scales=(2,))
    with pytest.raises(DataError, match="unknown split"):
        div2k_pairs(root, split="training", track="bicubic", scales=(2,))
    with pytest.raises(DataError, match="scales"):
        div2k_pairs(root, split="train", track="bicubic", scales=(2, 2))
