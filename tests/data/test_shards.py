"""WebDataset shards: aligned sub-images, byte-identical output, resumable atomic writing, readable
by `tar` and by the stock webdataset reader, and `ntire data shard`."""

from __future__ import annotations

import hashlib
import json
import subprocess

import numpy as np
import pytest

from ntire.__main__ import main
from ntire.data import shards as shards_module
from ntire.data.shards import verify_shards, write_shards
from ntire.data.shard_manifest import read_manifest
from ntire.errors import DataError
from ntire.images import read_image


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write(pairs, out, **kw):
    options = dict(track="bicubic", scales=(2, 3, 4), subimage=120, step=96,
                   shard_max_bytes=400_000, progress=False)
    options.update(kw)
    return write_shards(pairs, out, **options)


def test_manifest_describes_the_shards(shard_dir, train_pairs):
    m = read_manifest(shard_dir)
    assert m.complete and m.track == "bicubic" and m.scales == (2, 3, 4) and m.encoding == "npy"
    assert len(m.shards) >= 6, "the fixture should give several shards"
    assert sum(s.samples for s in m.shards) == m.total_samples
    for s in m.shards:
        assert _sha(shard_dir / s.name) == s.sha256 and (shard_dir / s.name).stat().st_size == s.bytes
    assert verify_shards(shard_dir).total_samples == m.total_samples


@pytest.mark.parametrize("change", [{"track": "blurry"}, {"scales": [2, 8]}])
def test_a_manifest_outside_the_challenge_tracks_and_scales_is_refused(shard_dir, tmp_path, change):
    data = json.loads((shard_dir / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**data, **change}))
    with pytest.raises(DataError, match=r"manifest.json: track .* are not among the challenge's \(bicubic, unknown; 2, 3, 4\)"):
        read_manifest(tmp_path)


def test_samples_are_aligned_crops_of_the_source(shard_dir, train_pairs):
    import webdataset as wds

    by_name = {p.name: p for p in train_pairs}
    ds = wds.WebDataset(str(shard_dir / "shard-000002.tar"), shardshuffle=False).decode()
    seen = 0
    for sample in ds:
        meta = sample["json"]
        top, left = meta["crop"]
        assert top % 12 == 0 and left % 12 == 0, "origins must be multiples of lcm(2, 3, 4)"
        assert sample["__key__"] == f"{meta['name']}_{top:04d}_{left:04d}"
        pair = by_name[meta["name"]]
        hr = sample["hr.npy"]
        h, w = hr.shape[:2]
        assert [h, w] == meta["hr_size"] and h % 12 == 0 and w % 12 == 0
        assert np.array_equal(hr, read_image(pair.hr)[top : top + h, left : left + w])
        for s in (2, 3, 4):
            lr = sample[f"lr{s}.npy"]
            assert lr.shape == (h // s, w // s, 3)
            full = read_image(pair.lr[s])
            assert np.array_equal(lr, full[top // s : (top + h) // s, left // s : (left + w) // s])
        seen += 1
        if seen == 4:
            break
    assert seen == 4


def test_plain_tar_lists_members(shard_dir):
    out = subprocess.run(["tar", "tf", str(shard_dir / "shard-000000.tar")],
                         capture_output=True, text=True, check=True)
    names = out.stdout.split()
    key = names[0].split(".")[0]
    assert names[:5] == [f"{key}.hr.npy", f"{key}.json", f"{key}.lr2.npy", f"{key}.lr3.npy",
                         f"{key}.lr4.npy"]
    assert len(names) == 5 * read_manifest(shard_dir).shards[0].samples


def test_output_is_byte_identical(train_pairs, tmp_path):
    a = _write(train_pairs[:2], tmp_path / "a")
    b = _write(train_pairs[:2], tmp_path / "b")
    assert len(a.shards) >= 3
    assert [s.sha256 for s in a.shards] == [s.sha256 for s in b.shards]
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()


def test_a_rerun_clears_the_debris_of_a_killed_manifest_write(train_pairs, tmp_path):
    # A SIGKILL between an atomic write's temporary file and its rename leaves `.manifest.json.*.tmp`
    # (the fault soak caught it): the next writer of the folder removes it, and nothing else.
    out = tmp_path / "shards"
    _write(train_pairs[:1], out)
    debris = [out / ".manifest.json.k1ll3d.tmp", out / "..verified.json.k1ll3d.tmp"]  # as atomic_path names them
    for path in debris:
        path.write_text("{half")
    keep = out / "notes.txt"
    keep.write_text("mine")
    _write(train_pairs[:1], out)
    assert [p.name for p in debris if p.exists()] == [] and keep.read_text() == "mine"


def test_interrupted_run_resumes_without_touching_finished_shards(train_pairs, tmp_path, monkeypatch):
    pairs = train_pairs[:2]
    full = _write(pairs, tmp_path / "full")
    out = tmp_path / "part"

    calls = {"n": 0}
    real_cut = shards_module._cut

    def dying_cut(*args, **kw):
        calls["n"] += 1
        if calls["n"] == full.shards[0].samples + full.shards[1].samples + 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C in the third shard
        return real_cut(*args, **kw)

    monkeypatch.setattr(shards_module, "_cut", dying_cut)
    with pytest.raises(KeyboardInterrupt):
        _write(pairs, out)
    monkeypatch.setattr(shards_module, "_cut", real_cut)

    partial = read_manifest(out)
    assert not partial.complete and [s.name for s in partial.shards] == ["shard-000000.tar", "shard-000001.tar"]
    assert not list(out.glob(".*.tmp")), "the open shard's temporary file is removed"
    assert not (out / "shard-000002.tar").exists()
    # a hard kill leaves a temporary file behind; the next run must clean it up
    (out / ".shard-000002.tar.abc123.tmp").write_bytes(b"half a shard")
    before = {s.name: (out / s.name).stat() for s in partial.shards}

    resumed = _write(pairs, out)
    assert resumed.complete
    for name, st in before.items():
        now = (out / name).stat()
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns), f"{name} was rewritten"
    assert [s.sha256 for s in resumed.shards] == [s.sha256 for s in full.shards]
    assert not list(out.glob(".*.tmp"))
    for s in resumed.shards:
        assert _sha(out / s.name) == s.sha256


def test_changed_options_refuse_to_resume(train_pairs, tmp_path):
    _write(train_pairs[:1], tmp_path)
    with pytest.raises(DataError, match="other input or options"):
        _write(train_pairs[:1], tmp_path, step=120)
    m = _write(train_pairs[:1], tmp_path, step=120, resume=False)
    assert m.complete and m.step == 120


def test_misaligned_subimage_is_refused(train_pairs, tmp_path):
    with pytest.raises(DataError, match="subimage 100 must be a positive multiple of 12"):
        _write(train_pairs[:1], tmp_path, subimage=100)
    with pytest.raises(DataError, match="step 100 must be a positive multiple of 6"):
        _write(train_pairs[:1], tmp_path, scales=(2, 3), subimage=120, step=100)


def test_verify_detects_a_corrupt_shard(train_pairs, tmp_path):
    m = _write(train_pairs[:1], tmp_path)
    path = tmp_path / m.shards[0].name
    data = bytearray(path.read_bytes())
    data[2000] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="shard-000000.tar: sha256 differs"):
        verify_shards(tmp_path)


def test_png_encoding_and_whole_images(train_pairs, tmp_path):
    import webdataset as wds

    m = _write(train_pairs[:2], tmp_path, encoding="png", subimage=None, step=None)
    assert m.total_samples == 2
    sample = next(iter(wds.WebDataset(m.urls(tmp_path), shardshuffle=False).decode("rgb8")))
    assert sample["hr.png"].shape == read_image(train_pairs[0].hr).shape
    assert json.loads(json.dumps(sample["json"]))["crop"] == [0, 0]


def test_cli_shard(sample_root, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["data", "shard", "--root", str(sample_root), "--out", str(out), "--scales", "2", "4",
            "--subimage", "240", "--step", "240", "--shard-size", "1MB", "--indices", "1-2", "--quiet"]
    assert main(args) == 0
    m = read_manifest(out)
    assert m.scales == (2, 4) and m.subimage == 240 and len(m.shards) > 1
    assert "urls:" in capsys.readouterr().out
    # the second run resumes and finds everything done
    stat = (out / "shard-000000.tar").stat()
    assert main(args) == 0
    assert (out / "shard-000000.tar").stat().st_mtime_ns == stat.st_mtime_ns
    assert main(["data", "check", "--shards", str(out)]) == 0
    assert main(["data", "shard", "--root", str(tmp_path / "nowhere"), "--out", str(out)]) == 2


def test_a_second_writer_of_a_shard_folder_is_refused_or_waits(train_pairs, tmp_path):
    import os
    import sys
    import threading
    from pathlib import Path

    from ntire.errors import FolderBusyError

    repo = Path(__file__).resolve().parents[2]
    code = ("from ntire.locks import hold_folder\n"
            f"with hold_folder({str(tmp_path / 'shards')!r}, 'ntire shard writing'):\n"
            "    print('held', flush=True)\n    import sys; sys.stdin.read()\n")  # until told to go
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(repo)})
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(FolderBusyError, match=f"pid {holder.pid}"):
        _write(train_pairs, tmp_path / "shards")
    assert not list((tmp_path / "shards").glob("shard-*"))  # the holder's folder untouched
    said: list[str] = []
    threading.Timer(1.0, holder.stdin.close).start()
    manifest = _write(train_pairs, tmp_path / "shards", lock_wait=True, say=said.append)  # a shared cache
    assert holder.wait() == 0 and manifest.complete and any("waiting" in s for s in said)


def test_a_read_only_shard_cache_is_still_reused(train_pairs, tmp_path, monkeypatch):
    import errno

    from ntire.errors import write_error

    _write(train_pairs, tmp_path / "shards")
    (tmp_path / "shards" / shards_module.VERIFIED_NAME).unlink(missing_ok=True)
    os_error = OSError(errno.EROFS, "Read-only file system", str(tmp_path / "shards" / "x"))

    def read_only(path, text):
        raise write_error(os_error, path)

    monkeypatch.setattr(shards_module, "atomic_write_text", read_only)
    manifest = _write(train_pairs, tmp_path / "shards")
    assert manifest.complete and not (tmp_path / "shards" / shards_module.VERIFIED_NAME).exists()
