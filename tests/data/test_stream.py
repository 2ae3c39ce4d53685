"""The training stream: alignment, reproducibility and skip-ahead, rank/worker splits, MDSR
batches, bad samples and `pipe:` URLs."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest
import torch

from ntire.data.degrade import bicubic_downscale
from ntire.data.shard_manifest import read_manifest
from ntire.data.stream import train_batches
from ntire.data.tar_reader import ShardReader
from ntire.errors import DataError


def _take(stream, n):
    return list(itertools.islice(stream, n))


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        x.scale == y.scale and torch.equal(x.lr, y.lr) and torch.equal(x.hr, y.hr) for x, y in zip(a, b)
    )


def _urls(shard_dir, n=None):
    names = [s.name for s in read_manifest(shard_dir).shards]
    return [str(shard_dir / name) for name in names[:n]]


def _all_keys(urls):
    keys = []
    for url in urls:
        keys.extend(raw["__key__"] for _, raw in ShardReader(url))
    return keys


SMALL = dict(batch_size=4, patch_size=12, patches_per_sample=4, shuffle_buffer=16, num_workers=0)


def _downscale_both_orders(hr: np.ndarray, s: int) -> list[np.ndarray]:
    """MATLAB-style downscaling of `hr`, and of its transpose transposed back. MATLAB rounds and
    clips to uint8 between the row and the column pass, so for a patch the loader transposed
    only the second matches the LR image exactly near saturated pixels."""
    direct = bicubic_downscale(np.ascontiguousarray(hr), s)
    swapped = bicubic_downscale(np.ascontiguousarray(hr.transpose(1, 0, 2)), s).transpose(1, 0, 2)
    return [direct.astype(int), swapped.astype(int)]


@pytest.mark.parametrize("augment", [False, True])
def test_patches_are_aligned_and_identically_augmented(shard_dir, augment):
    stream = train_batches(_urls(shard_dir), scales=(2, 3, 4), batch_size=8, patch_size=16,
                           num_workers=0, seed=3, augment=augment)
    inner = (slice(3, -3), slice(3, -3))  # the kernel reaches 2 LR pixels past a patch's edge
    checked, shifted_error = 0, 0.0
    for batch in _take(stream, 6):
        s = batch.scale
        assert batch.lr.dtype == torch.uint8 and batch.lr.shape == (8, 3, 16, 16)
        assert batch.hr.dtype == torch.uint8 and batch.hr.shape == (8, 3, 16 * s, 16 * s)
        for lr, hr in zip(batch.lr, batch.hr):
            lr = lr.permute(1, 2, 0).numpy().astype(int)[inner]
            hr = hr.permute(1, 2, 0).numpy()
            errors = [np.abs(d[inner] - lr).max() for d in _downscale_both_orders(hr, s)]
            assert min(errors) <= (1 if augment else 0)
            if not augment:
                assert errors[0] == 0
            # the test can fail: HR patches one LR pixel off are far from their partners
            shifted = bicubic_downscale(np.ascontiguousarray(np.roll(hr, s, axis=1)), s)
            shifted_error += np.abs(shifted.astype(int)[inner] - lr).mean()
            checked += 1
    assert checked == 48 and shifted_error / checked > 2


def test_augmentation_covers_flips_and_rotations(shard_dir):
    """With augment=False patches match their source orientation; with it, all 8 appear."""
    plain = _take(train_batches(_urls(shard_dir), scales=(2,), augment=False, seed=5, **SMALL), 1)[0]
    aug = _take(train_batches(_urls(shard_dir), scales=(2,), augment=True, seed=5, **SMALL), 1)[0]
    found = set()
    for a, p in zip(aug.hr, plain.hr):
        for op in range(8):
            x = p
            if op & 4:
                x = x.transpose(1, 2)
            if op & 1:
                x = x.flip(2)
            if op & 2:
                x = x.flip(1)
            if torch.equal(a, x):
                found.add(op)
                break
        else:
            raise AssertionError("augmented patch is no flip/rotation of the plain one")
    assert len(found) >= 2


@pytest.mark.parametrize("n_shards, rank, world", [(2, 0, 1), (1, 1, 2)])
def test_resume_skip_ahead_equals_uninterrupted_run(shard_dir, n_shards, rank, world):
    # 2 shards (46 samples) on one rank: an epoch is ~12 rounds, so 60 batches cross epochs;
    # 1 shard on rank 1 of 2: each rank keeps every other sample of it
    urls = _urls(shard_dir, n_shards)
    kw = dict(SMALL, scales=(2, 3), seed=7, rank=rank, world_size=world)
    fresh = _take(train_batches(urls, **kw), 60)
    for start in (7, 50):  # mid-round in epoch 0; a later epoch
        resumed = _take(train_batches(urls, start_step=start, **kw), 60 - start)
        assert _same(resumed, fresh[start:]), f"start_step={start}"
    other_seed = _take(train_batches(urls, **dict(kw, seed=8)), 4)
    assert not _same(other_seed, fresh[:4])


def test_two_workers_resume_exactly(shard_dir):
    urls = _urls(shard_dir, 4)
    kw = dict(SMALL, num_workers=2)
    fresh = _take(train_batches(urls, scales=(2, 3, 4), seed=1, **kw), 16)
    resumed = _take(train_batches(urls, scales=(2, 3, 4), seed=1, start_step=5, **kw), 11)
    assert _same(resumed, fresh[5:])


def test_close_stops_the_worker_processes_at_once(shard_dir):
    import multiprocessing

    stream = train_batches(_urls(shard_dir, 4), scales=(2,), seed=1, **dict(SMALL, num_workers=2))
    next(stream)
    assert len(multiprocessing.active_children()) >= 2
    stream.close()
    assert multiprocessing.active_children() == []  # joined, not left to a later collection


@pytest.mark.parametrize("n_shards", [None, 1])  # shard-level split; one shard: sample-level split
def test_ranks_read_disjoint_complete_sets_each_epoch(shard_dir, n_shards):
    urls = _urls(shard_dir, n_shards)
    everything = _all_keys(urls)
    datasets = [train_batches(urls, scales=(2,), rank=r, world_size=2, **SMALL).dataset for r in (0, 1)]
    orders = []
    for epoch in (0, 1):
        keys = [[s.key for s in ds.epoch_samples(epoch, worker=0)] for ds in datasets]
        assert keys[0] and keys[1] and not set(keys[0]) & set(keys[1])
        assert sorted(keys[0] + keys[1]) == sorted(everything)
        orders.append(keys[0])
    if n_shards is None:
        assert orders[0] != orders[1], "shard order is reshuffled every epoch"


def test_ranks_get_different_patches_but_the_same_scale_each_step(shard_dir):
    urls = _urls(shard_dir)
    r0, r1 = (_take(train_batches(urls, scales=(2, 3, 4), rank=r, world_size=2, **SMALL), 12) for r in (0, 1))
    assert [b.scale for b in r0] == [b.scale for b in r1]
    assert not any(torch.equal(a.lr, b.lr) for a, b in zip(r0, r1))


def test_mdsr_batches_hold_one_scale_and_all_scales_appear(shard_dir):
    batches = _take(train_batches(_urls(shard_dir), scales=(2, 3, 4), **SMALL), 30)
    for b in batches:
        assert b.hr.shape[-2:] == (12 * b.scale, 12 * b.scale) and b.lr.shape[-2:] == (12, 12)
    assert {b.scale for b in batches} == {2, 3, 4}
    single = _take(train_batches(_urls(shard_dir), scales=(3,), **SMALL), 10)
    assert {b.scale for b in single} == {3}


def test_pipe_urls_stream_the_same_batches(shard_dir):
    local = _urls(shard_dir, 2)
    piped = [f"pipe:cat {u}" for u in local]
    a = _take(train_batches(local, scales=(4,), **SMALL), 6)
    b = _take(train_batches(piped, scales=(4,), **SMALL), 6)
    assert _same(a, b)
    # resuming a piped stream takes sample counts from the manifest
    c = _take(train_batches(piped, scales=(4,), start_step=3, manifest=shard_dir, **SMALL), 3)
    assert _same(c, a[3:])


def _craft(shard_dir, out, fault: str | None, at: int = 2):
    """A copy of the first shard with one sample broken (or several with fault='all')."""
    from webdataset import TarWriter

    faults = ["corrupt", "missing", "mismatch"] if fault == "all" else [fault]
    with open(out, "wb") as f, TarWriter(f, encoder=False) as writer:
        bad_keys = {}
        for i, raw in ShardReader(str(shard_dir / "shard-000000.tar")):
            sample = {k: v for k, v in raw.items() if k != "__url__"}
            kind = faults[(i - at) // 3] if i >= at and (i - at) % 3 == 0 and (i - at) // 3 < len(faults) else None
            if kind == "corrupt":
                sample["hr.npy"] = b"\x93NUMPY garbage"
            elif kind == "missing":
                del sample["lr3.npy"]
            elif kind == "mismatch":
                sample["lr2.npy"] = sample["lr4.npy"]
            if kind:
                bad_keys[kind] = sample["__key__"]
            writer.write(sample)
    return bad_keys


@pytest.mark.parametrize(
    "fault, message",
    [("corrupt", "corrupt member hr.npy"), ("missing", "no LR image for scale x3"),
     ("mismatch", "size mismatch: LR x2")],
)
def test_bad_sample_names_shard_and_key(shard_dir, tmp_path, fault, message):
    bad = tmp_path / "bad.tar"
    key = _craft(shard_dir, bad, fault)[fault]
    with pytest.raises(DataError, match=rf"bad\.tar: sample {key}: {message}"):
        _take(train_batches(str(bad), scales=(2, 3, 4), **SMALL), 20)


def test_skip_bad_samples_logs_and_counts(shard_dir, tmp_path, caplog):
    bad = tmp_path / "bad.tar"
    keys = _craft(shard_dir, bad, "all")
    stream = train_batches(str(bad), scales=(2, 3, 4), skip_bad_samples=True, **SMALL)
    with caplog.at_level(logging.WARNING, logger="ntire.data.stream"):
        batches = _take(stream, 20)  # 5 rounds of 4 batches from 4 samples: 20 samples, 3 bad
    assert stream.bad_samples == 3 and len(batches) == 20
    assert all(b.hr.shape[-1] == 12 * b.scale for b in batches)
    for key in keys.values():
        assert key in caplog.text


def test_truncated_shard_is_named(shard_dir, tmp_path):
    data = (shard_dir / "shard-000000.tar").read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(DataError, match=r"cut\.tar: unreadable tar data after key"):
        _take(train_batches(str(cut), scales=(2,), **SMALL), 30)
    with pytest.raises(DataError, match="missing.tar: cannot open shard"):
        _take(train_batches(str(tmp_path / "missing.tar"), scales=(2,), **SMALL), 1)


def test_few_shards_warn_only_when_the_extra_reading_counts(shard_dir, caplog, monkeypatch):
    """One small local shard for 4 ranks is read 4 times: cheap, so no warning; when it counts,
    the warning says what to run (`ntire data shard --shard-size`) and how many shards."""
    import ntire.data.stream as stream

    one = _urls(shard_dir, 1)
    with caplog.at_level(logging.DEBUG, logger="ntire.data.stream"):
        train_batches(one, scales=(2,), rank=0, world_size=4, **SMALL)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    caplog.clear()
    monkeypatch.setattr(stream, "FEW_SHARDS_WARN_BYTES", 0)
    with caplog.at_level(logging.WARNING, logger="ntire.data.stream"):
        train_batches(one, scales=(2,), rank=0, world_size=4, **SMALL)
    assert "Write at least 4 shards" in caplog.text
    assert "ntire data shard" in caplog.text and "--shard-size" in caplog.text
    assert "--data SHARDS --valid-data DATA" in caplog.text
