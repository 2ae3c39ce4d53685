"""A training job's inputs: the shard cache follows its source's content, and mends itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ntire.config import build_config


def add_image(root: Path, index: int, seed: int) -> None:
    from ntire.data.degrade import bicubic_downscale
    from ntire.images import write_png

    hr = np.random.default_rng(seed).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    name = f"{index:04d}"
    write_png(root / "DIV2K" / "DIV2K_train_HR" / f"{name}.png", hr)
    write_png(root / "DIV2K" / "DIV2K_train_LR_bicubic" / "X2" / f"{name}x2.png", bicubic_downscale(hr, 2))


@pytest.fixture
def config(tmp_path):
    for i in (1, 2):
        add_image(tmp_path / "data", i, seed=i)
    return build_config(None, {"data": {"source": str(tmp_path / "data")}, "output_dir": str(tmp_path / "run")})


def samples(urls) -> int:
    from ntire.data.shard_manifest import read_manifest

    return read_manifest(Path(urls[0]).parent).total_samples


def test_the_cache_is_reused_while_the_source_is_unchanged(config):
    from ntire.training.inputs import prepare_training_shards

    said: list[str] = []
    urls = prepare_training_shards(config, say=said.append)
    shard = Path(urls[0])
    manifest = shard.parent / "manifest.json"
    prepare_training_shards(config, say=said.append)  # the first reuse hashes the shards once
    before = shard.stat().st_mtime_ns, manifest.stat().st_mtime_ns
    said.clear()
    assert prepare_training_shards(config, say=said.append) == urls
    assert said == [] and (shard.stat().st_mtime_ns, manifest.stat().st_mtime_ns) == before  # nothing rewritten


def test_added_or_changed_images_rebuild_the_cache_saying_why(config, tmp_path):
    from ntire.training.inputs import prepare_training_shards

    assert samples(prepare_training_shards(config, say=lambda m: None)) == 2
    add_image(tmp_path / "data", 3, seed=3)
    said: list[str] = []
    assert samples(prepare_training_shards(config, say=said.append)) == 3
    assert any("built from 4 source files, the source now has 6" in m for m in said), said
    # Same file count, other content (an image re-saved): rebuilt too.
    add_image(tmp_path / "data", 3, seed=4)
    said.clear()
    prepare_training_shards(config, say=said.append)
    assert any("source files changed" in m for m in said), said


def test_a_truncated_or_corrupt_cache_shard_is_rewritten_not_fatal(config):
    from ntire.training.inputs import prepare_training_shards

    urls = prepare_training_shards(config, say=lambda m: None)
    shard = Path(urls[0])
    good = shard.read_bytes()
    shard.write_bytes(good[: len(good) // 2])
    said: list[str] = []
    assert prepare_training_shards(config, say=said.append) == urls
    assert shard.read_bytes() == good and any("truncated" in m for m in said), said
    # Same size, flipped bytes: the sha256 tells (the file's time changed since it was checked).
    shard.write_bytes(good[:1000] + bytes(255 - b for b in good[1000:1010]) + good[1010:])
    said.clear()
    prepare_training_shards(config, say=said.append)
    assert shard.read_bytes() == good and any("sha256 differs" in m for m in said), said
