"""Data fixtures built once per test session: the sample dataset and small shards of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from ntire.data.layout import div2k_pairs
from ntire.data.sample import build_sample_dataset
from ntire.data.shards import write_shards

SHARD_SCALES = (2, 3, 4)
SUBIMAGE = 120  # small sub-images: many samples and several shards from eight photos


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory) -> Path:
    """The sample dataset (DIV2K + benchmark layout), built once."""
    return build_sample_dataset(tmp_path_factory.mktemp("sample"))


@pytest.fixture(scope="session")
def train_pairs(sample_root):
    return div2k_pairs(sample_root, split="train", track="bicubic", scales=SHARD_SCALES)


@pytest.fixture(scope="session")
def shard_dir(sample_root, train_pairs, tmp_path_factory) -> Path:
    """Bicubic train shards of 120 px sub-images with LR x2, x3, x4; about eight shards."""
    out = tmp_path_factory.mktemp("shards")
    write_shards(train_pairs, out, track="bicubic", scales=SHARD_SCALES, subimage=SUBIMAGE,
                 step=SUBIMAGE, shard_max_bytes=1_500_000, progress=False)
    return out
