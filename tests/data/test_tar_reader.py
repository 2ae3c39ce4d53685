"""The tar reader: shards made by other tools, member selection, skipping by seeking."""

from __future__ import annotations

import io
import tarfile

import pytest

from ntire.data.tar_reader import count_samples, shard_file_name, tar_members


@pytest.mark.parametrize("fmt", ["GNU_FORMAT", "PAX_FORMAT"])
def test_tar_reader_handles_long_names_and_pax_headers(tmp_path, fmt):
    """Shards made by other tools (GNU tar, pax) read the same as with the standard library."""
    long_key = "k" * 120  # longer than ustar's 100-character name field
    members = {f"{long_key}.hr.npy": b"x" * 1000, f"{long_key}.json": b"{}", "short.txt": b"",
               "ümlaut.json": "é".encode()}
    path = tmp_path / "other.tar"
    with tarfile.open(path, "w", format=getattr(tarfile, fmt)) as tar:
        folder = tarfile.TarInfo("adir")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with open(path, "rb") as f:
        assert dict(tar_members(f, lambda name: True)) == members
    with open(path, "rb") as f:
        assert [n for n, _ in tar_members(f, lambda name: name.endswith(".json"))] == [
            f"{long_key}.json", "ümlaut.json"]


class _CountingFile(io.FileIO):
    """A seekable raw file that counts the bytes read from it."""

    bytes_read = 0

    def read(self, size=-1):
        data = super().read(size)
        self.bytes_read += len(data)
        return data


def test_unwanted_members_are_skipped_by_seeking_not_read(shard_dir):
    """What makes resuming mid-shard and counting samples cheap: only headers are read."""
    path = shard_dir / "shard-000000.tar"
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    with _CountingFile(path) as f:
        assert list(tar_members(f, lambda name: False)) == []
        assert f.bytes_read == (len(members) + 1) * tarfile.BLOCKSIZE  # + the end-of-archive block
    keys = {m.name.split(".")[0] for m in members}
    assert count_samples(str(path)) == len(keys)


def test_shard_file_name_finds_the_tar_inside_a_url():
    assert shard_file_name("/data/shards/shard-000003.tar") == "shard-000003.tar"
    assert shard_file_name("pipe:aws s3 cp s3://b/x/shard-000001.tar -") == "shard-000001.tar"
    assert shard_file_name("pipe:curl -s 'https://h/p/shard-000002.tar'") == "shard-000002.tar"
    assert shard_file_name("/data/shards/") is None
