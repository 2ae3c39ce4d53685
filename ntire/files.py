"""Atomic file writes: a reader never sees a half-written file, and a crash leaves the old one."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

TEMP_SUFFIX = ".tmp"
"""Suffix of the temporary files `atomic_path` writes (named `.<target name>.<random>.tmp`)."""


def is_temp_file(path: str | os.PathLike) -> bool:
    """Whether `path` is named as one of ntire's temporary files (`.NAME.xxxx.tmp`): debris of a
    write that was killed, which no reader takes as input."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def remove_stale_temp_files(folder: str | os.PathLike, targets: Iterable[str] | None = None) -> list[Path]:
    """Delete ntire's temporary files directly inside `folder` (left by a killed writer), only
    those for the file names in `targets` if given; return them. Call only where this process
    owns those writes (one writer at a time)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    wanted = None if targets is None else {f".{name}." for name in targets}
    stale = [p for p in folder.iterdir() if p.is_file() and is_temp_file(p)
             and (wanted is None or any(p.name.startswith(w) for w in wanted))]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def default_file_mode() -> int:
    """The mode a plain `open(path, "w")` gives a new file: 0666 minus the umask (0644 under 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def apply_default_modes(folder: str | os.PathLike) -> None:
    """Give every file under `folder` the default mode (writers such as safetensors create 0600)."""
    mode = default_file_mode()
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, mode)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed over `path` in one step.

    Writing beside the target (same folder, same filesystem) is what makes `os.replace` atomic.
    On error the temporary file is removed and `path` is left as it was.
    """
    from ntire.errors import os_reason, write_error

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as e:  # a read-only place, a parent that is a file, a full disk
        raise write_error(e, path) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600, and a writer may replace the file (safetensors does): give what
        # is there now the mode a plain open() would (0666 minus the umask).
        os.chmod(tmp_path, default_file_mode())
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except Exception as e:
        if os_reason(e) is None:
            raise
        # The OS refused a write (full disk, quota, I/O error): one line naming the target.
        raise write_error(e, path) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (shards and weights run to GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
