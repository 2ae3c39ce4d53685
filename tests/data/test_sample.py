"""The bundled sample dataset: DIV2K layout, real LR degradations, held-out validation photos,
byte-identical rebuilds, and `ntire data sample`."""

from __future__ import annotations

import hashlib

import numpy as np

from ntire.__main__ import main
from ntire.data.degrade import bicubic_downscale, unknown_downscale
from ntire.data.layout import benchmark_pairs, check_pair, div2k_pairs
from ntire.data.sample import build_sample_dataset, is_complete
from ntire.images import read_image


def _digests(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_layout_is_div2k_and_sizes_agree(sample_root):
    for split in ("train", "valid"):
        for track in ("bicubic", "unknown"):
            pairs = div2k_pairs(sample_root, split=split, track=track, scales=(2, 3, 4))
            for pair in pairs:
                for s in (2, 3, 4):
                    check_pair(pair, s)
    assert len(div2k_pairs(sample_root, split="train", track="bicubic", scales=(2,))) == 8
    assert len(benchmark_pairs(sample_root, "Sample5", (2, 3, 4))) == 5
    readme = (sample_root / "README.txt").read_text()
    assert "skimage.data.astronaut()" in readme and "stand-in" in readme


def test_lr_images_are_the_documented_degradations(sample_root):
    pair = div2k_pairs(sample_root, split="train", track="bicubic", scales=(3,))[1]
    hr = read_image(pair.hr)
    assert np.array_equal(read_image(pair.lr[3]), bicubic_downscale(hr, 3))
    unknown = div2k_pairs(sample_root, split="train", track="unknown", scales=(4,))[1]
    assert np.array_equal(read_image(unknown.lr[4]), unknown_downscale(hr, 4))


def test_valid_photos_are_not_training_photos(sample_root):
    def fingerprints(split):
        pairs = div2k_pairs(sample_root, split=split, track="bicubic", scales=(4,))
        # LR x4 thumbnails: cheap to compare and different for different photos
        return [read_image(p.lr[4]) for p in pairs]

    train, valid = fingerprints("train"), fingerprints("valid")
    assert len(valid) == 2
    for v in valid:
        assert not any(t.shape == v.shape and np.array_equal(t, v) for t in train)
    # and the photos really are RGB photographs, not flat placeholders
    assert all(v.std() > 20 for v in valid)


def test_rebuild_is_byte_identical_and_idempotent(sample_root, tmp_path):
    second = build_sample_dataset(tmp_path / "again")
    assert _digests(second) == _digests(sample_root)
    marker_time = (second / ".ntire-sample-complete").stat().st_mtime_ns
    hr = second / "DIV2K" / "DIV2K_train_HR" / "0001.png"
    hr_time = hr.stat().st_mtime_ns
    build_sample_dataset(second)  # complete: nothing is rewritten
    assert hr.stat().st_mtime_ns == hr_time
    assert (second / ".ntire-sample-complete").stat().st_mtime_ns == marker_time
    assert is_complete(second)


def test_cli_keeps_a_complete_dataset(sample_root, capsys):
    assert main(["data", "sample", "--out", str(sample_root)]) == 0
    assert "kept sample dataset" in capsys.readouterr().out
