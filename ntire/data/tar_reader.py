"""Reading WebDataset tar shards: URL expansion, tar member framing, samples grouped by key.

Why a hand-written tar reader beside WebDataset's `tar_file_expander` (which uses tarfile's
stream mode, `r|*`):

- Members that are not wanted are skipped with a seek where the stream allows it (local shards:
  `gopen` opens them as plain files), so their bytes are never read. That is what makes an exact
  resume cheap: a worker resuming mid-shard reads only the 512-byte headers of the samples before
  its start, and `count_samples` (sample counts of shards missing from the manifest) reads only
  headers. tarfile's stream mode cannot seek: it reads and discards every skipped byte
  (`tarfile._Stream.seek`), and so does `tar_file_expander` for members its `select_files`
  rejects.
- A wanted member is read with one `read` call; tarfile's stream mode reads it in 10 KiB pieces
  and joins them into a new buffer.

`benchmarks/loader.py` measures both readers on the same shards: on the 2-core development VM
this reader gave 2.0x the samples/s of `tar_file_expander` + `group_by_keys` reading every member
of 480 px .npy sub-image shards, and 6-8x when skipping every member while counting samples.
Non-seekable streams (`pipe:`, http) are read through by either reader; only the second reason
holds for them.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ntire.errors import DataError


def expand_urls(urls: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Shard URLs with brace patterns expanded (`shard-{000000..000009}.tar`), in order."""
    from webdataset.shardlists import expand_urls as wds_expand

    if isinstance(urls, (str, os.PathLike)):
        urls = [urls]
    out: list[str] = []
    for url in urls:
        out.extend(wds_expand(str(url)))
    if not out:
        raise DataError("no shard URLs given")
    return out


def shard_file_name(url: str) -> str | None:
    """The `*.tar` file name a URL refers to (also inside a `pipe:` command), or None."""
    names = re.findall(r"[^/\s'\"]+\.tar\b", url)
    return names[-1] if names else None


def _read_exact(stream, n: int) -> bytes:
    data = stream.read(n)
    if len(data) == n or not data:
        return data
    parts = [data]  # pipes may return short reads
    got = len(data)
    while got < n:
        more = stream.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _skip(stream, n: int) -> None:
    if n <= 0:
        return
    if getattr(stream, "seekable", lambda: False)():
        stream.seek(n, io.SEEK_CUR)
    else:
        _read_exact(stream, n)


def _pax_records(buf: bytes) -> dict[str, str]:
    out, pos = {}, 0
    while pos < len(buf):
        space = buf.index(b" ", pos)
        length = int(buf[pos:space])
        key, _, value = buf[space + 1 : pos + length - 1].partition(b"=")
        out[key.decode()] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def tar_members(stream, want: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    """(name, data) of the regular files of an uncompressed tar stream, for names `want` accepts.

    Reads each header with the standard library's parser and each wanted member with one read;
    unwanted ones are skipped by seeking where the stream allows (see the module docstring for
    why). Handles ustar, GNU long names and pax headers.
    """
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        header = _read_exact(stream, tarfile.BLOCKSIZE)
        if not header or header == _ZERO_BLOCK:
            return  # end of archive
        if len(header) < tarfile.BLOCKSIZE:
            raise ValueError("truncated tar header")
        try:
            info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        except tarfile.HeaderError as e:
            raise ValueError(f"invalid tar header ({e})") from None
        size = int(pax.get("size", info.size)) if info.type not in _META_TYPES else info.size
        padding = -size % tarfile.BLOCKSIZE
        if info.type in _META_TYPES:
            data = _read_exact(stream, size + padding)[:size]
            if info.type == tarfile.GNUTYPE_LONGNAME:
                long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            elif info.type == tarfile.XHDTYPE:
                pax = _pax_records(data)
            continue
        name = pax.get("path", long_name or info.name)
        long_name, pax = None, {}
        if info.type not in tarfile.REGULAR_TYPES or not want(name):
            _skip(stream, size + padding)
            continue
        data = _read_exact(stream, size)
        if len(data) < size:
            raise ValueError(f"truncated member {name}")
        _skip(stream, padding)
        yield name, data


_ZERO_BLOCK = bytes(tarfile.BLOCKSIZE)
_META_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
               tarfile.SOLARIS_XHDTYPE)


class ShardReader:
    """Iterates the samples of one shard URL as (index, raw sample dict), reading only the
    members of samples for which `keep(index)` is true; `count` is the number of samples seen
    (all of them once the iteration finished).

    URLs are opened with WebDataset's `gopen` (local paths, `pipe:` commands, http, ...); members
    are grouped into samples by WebDataset's key convention (`<key>.<ext>`).
    """

    def __init__(self, url: str, keep: Callable[[int], bool] = lambda i: True):
        self.url = url
        self.keep = keep
        self.count = 0

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any]]]:
        from webdataset.gopen import gopen
        from webdataset.tariterators import base_plus_ext

        state = {"prefix": None, "index": -1}

        def want(name: str) -> bool:
            prefix, _ = base_plus_ext(name)
            if prefix is None:
                return False
            if prefix != state["prefix"]:
                state["prefix"] = prefix
                state["index"] += 1
                self.count = state["index"] + 1
            return self.keep(state["index"])

        try:
            stream = gopen(self.url, "rb")
        except Exception as e:  # gopen raises whatever the scheme's opener raises
            raise DataError(f"{self.url}: cannot open shard ({e})") from None
        current: dict[str, Any] | None = None
        last_key: str | None = None
        try:
            for name, data in tar_members(stream, want):
                prefix, suffix = base_plus_ext(name)
                if current is not None and prefix != current["__key__"]:
                    yield current.pop("__index__"), current
                    current = None
                if current is None:
                    current = {"__key__": prefix, "__url__": self.url, "__index__": state["index"]}
                    last_key = prefix
                current[suffix.lower()] = data
        except DataError:
            raise
        except Exception as e:
            where = f"after key {last_key!r}" if last_key else "at the start"
            raise DataError(f"{self.url}: unreadable tar data {where} ({e})") from None
        finally:
            try:
                stream.close()
            except Exception:
                pass
        if current is not None:
            yield current.pop("__index__"), current


def count_samples(url: str) -> int:
    """Number of samples in a shard, reading tar headers only (data is skipped, not decoded)."""
    reader = ShardReader(url, keep=lambda i: False)
    for _ in reader:
        pass
    return reader.count
