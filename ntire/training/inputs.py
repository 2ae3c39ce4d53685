"""What a training job reads: its shard URLs (a dataset folder is sharded once into a cache), its
stream of batches, and its share of the validation images."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ntire.config import TrainConfig
from ntire.errors import DataError


def _is_urls(source: str) -> bool:
    return "://" in source or "{" in source or "::" in source or source.endswith(".tar")


def shard_cache_dir(config: TrainConfig) -> Path:
    """Where a dataset folder given as `data.source` is sharded to for this config."""
    return Path(config.data.shard_dir or Path(config.output_dir) / "shards") / shard_cache_name(config)


def prepare_training_shards(config: TrainConfig, *, say: Callable[[str], None] = print,
                            progress: bool = False) -> list[str] | str:
    """Bring a dataset folder's shard cache up to date with its files; return the shard URLs.

    The cache is reused only while it matches its source: the manifest records the source files'
    names, sizes and modification times and the options, so added, removed or changed images
    rebuild it (saying why), and a truncated or corrupt shard is rewritten, not fatal. Call it on
    one process per machine, then `training_urls` on every process after a barrier. A shard
    folder (with manifest.json) or shard URLs need no preparation and are returned as they are.
    """
    source = config.data.source
    if _source_kind(source) == "dataset":
        from ntire.data.layout import div2k_pairs
        from ntire.data.shards import write_shards

        shard_dir = shard_cache_dir(config)
        pairs = div2k_pairs(source, split="train", track=config.data.track, scales=config.scales,
                            indices=span(config.data.train_indices))
        if not _complete(shard_dir):
            say(f"sharding {source} into {shard_dir} (once; reused while the data is unchanged)")
        write_shards(pairs, shard_dir, track=config.data.track, scales=config.scales,
                     subimage=config.data.subimage, step=config.data.subimage_step,
                     replace_stale=True, progress=progress, say=say, lock_wait=True)
    return training_urls(config)


def training_urls(config: TrainConfig) -> list[str] | str:
    """The shard URLs to stream: a dataset folder's shard cache (see `prepare_training_shards`),
    a shard folder's shards (it holds manifest.json), or `data.source` itself taken as URLs."""
    from ntire.data.shard_manifest import read_manifest

    source = config.data.source
    kind = _source_kind(source)
    if kind == "urls":
        return source
    folder = Path(source) if kind == "shards" else shard_cache_dir(config)
    if kind == "dataset" and not _complete(folder):
        raise DataError(f"{folder}: the shard cache of {source} is not built (prepare_training_shards first)")
    return read_manifest(folder).urls(folder)


def _source_kind(source: str) -> str:
    from ntire.data.shard_manifest import MANIFEST_NAME

    path = Path(source)
    if path.is_dir():
        return "shards" if (path / MANIFEST_NAME).is_file() else "dataset"
    if _is_urls(source):
        return "urls"
    raise DataError(f"{source}: no such dataset folder (--data takes a DIV2K-layout folder or shard URLs)")


def shard_cache_name(config: TrainConfig) -> str:
    """Folder name of a shard cache, from what decides its content (the source folder included,
    so that a shared --shard-dir never serves one dataset's shards for another)."""
    d = config.data
    source = Path(d.source).resolve()
    tag = hashlib.sha256(str(source).encode()).hexdigest()[:8]
    parts = [f"{source.name}-{tag}", f"train_{d.track}_x{''.join(map(str, config.scales))}"]
    if d.train_indices:
        parts.append(f"{d.train_indices[0]:04d}-{d.train_indices[1]:04d}")
    if d.subimage:
        parts.append(f"sub{d.subimage}s{d.subimage_step or d.subimage}")
    return "_".join(parts)


def _complete(shard_dir: Path) -> bool:
    from ntire.data.shard_manifest import read_manifest

    try:
        return read_manifest(shard_dir).complete
    except DataError:
        return False


def span(indices: tuple[int, int] | None) -> range | None:
    """A config's inclusive [first, last] image numbers as a range (None: all)."""
    return None if indices is None else range(indices[0], indices[1] + 1)


def training_batches(config: TrainConfig, urls: list[str] | str, *, start: int,
                     pin_memory: bool = False) -> Iterator[Any]:
    """The endless stream of training batches of this process, from micro-batch `start` on;
    `pin_memory`: in page-locked memory, for copies to a GPU that do not block."""
    from ntire.data.stream import train_batches

    d = config.data
    return train_batches(
        urls,
        scales=config.scales,
        batch_size=d.batch_size,
        patch_size=d.patch_size,
        patches_per_sample=d.patches_per_sample,
        shuffle_buffer=d.shuffle_buffer,
        seed=config.seed,
        num_workers=d.num_workers,
        start_step=start,
        skip_bad_samples=d.skip_bad_samples,
        augment=d.augment,
        pin_memory=pin_memory,
    )


def default_batches(*, pin_memory: bool) -> Callable[[TrainConfig, int], Iterator[Any]]:
    """What `fit` streams by default: `batches(config, start)`, this process's batches over the
    config's shards from micro-batch `start` on; in pinned memory for a GPU (copies that do not
    block the training loop)."""

    def batches(config: TrainConfig, start: int) -> Iterator[Any]:
        return training_batches(config, training_urls(config), start=start, pin_memory=pin_memory)

    return batches


def validation_root(config: TrainConfig) -> str | None:
    """The dataset folder validated on: `data.valid_root`, else `data.source` when that is a
    dataset folder (not shards); None when there is none."""
    if config.data.valid_root is not None:
        return config.data.valid_root
    try:
        return config.data.source if _source_kind(config.data.source) == "dataset" else None
    except DataError:
        return None


def validation_set(config: TrainConfig, *, process_index: int = 0, num_processes: int = 1) -> list[Any] | None:
    """This process's share of the validation images (None: no validation data for this run)."""
    from ntire.training.validate import load_validation

    root = validation_root(config)
    if root is None:
        return None
    return load_validation(
        root,
        track=config.data.track,
        scales=config.scales,
        indices=span(config.data.valid_indices),
        protocol="div2k",
        process_index=process_index,
        num_processes=num_processes,
    )
