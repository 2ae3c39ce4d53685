"""One writer per folder: an OS lock that a second run on the same folder is refused by.

`hold_folder(folder, what)` takes an exclusive `flock` on `folder/.ntire.lock` for as long as the
`with` block runs and records in that file who holds it (pid, host, command, start time), so a
second process is refused in one line naming the holder. The kernel releases a flock when its
holder dies, however it dies (SIGKILL included), so a lock left by a killed run never blocks the
next one; the file itself stays, as flock files must (deleting one while another process waits on
it would let a third lock a new file beside it).

Hand-written because the libraries that offer file locks (filelock, portalocker) either delete
the lock file on release, which has exactly that race, or do not record a holder to name.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ntire.errors import FolderBusyError, write_error

LOCK_NAME = ".ntire.lock"
"""The lock file inside a locked folder."""


def describe_holder(lock_file: str | os.PathLike) -> str:
    """Who holds (or last held) `lock_file`, in words: command, pid, host and since when."""
    try:
        info = json.loads(Path(lock_file).read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another process (its pid is not recorded yet)"
    since = f", since {info['since']}" if info.get("since") else ""
    return f"{info.get('command', 'another process')} (pid {info['pid']} on host {info.get('host', '?')}{since})"


@contextlib.contextmanager
def hold_folder(folder: str | os.PathLike, what: str, *, wait: bool = False,
                say: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold the lock of `folder` (created if missing) while the block runs; yield the lock file.

    `what` names this holder's job in the refusal another process gets (e.g. `ntire train`). With
    `wait`, block until the holder is done (saying so once through `say`) instead of raising
    FolderBusyError. A folder this call created is removed again if the block fails and left it
    holding nothing but the lock file, so a refused or failed run leaves no empty folder behind.
    """
    folder = Path(folder)
    created = not folder.exists()
    lock_file = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        if e.errno != errno.EROFS or not folder.is_dir():
            raise write_error(e, folder, "cannot lock the folder") from None
        fd = None  # a read-only folder has no writer to keep out
    if fd is None:
        yield lock_file
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = describe_holder(lock_file)
            if not wait:
                raise FolderBusyError(
                    f"{folder}: in use by {holder}; wait for it to finish, or use another folder"
                ) from None
            if say is not None:
                say(f"{folder}: waiting for {holder} to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": what,
                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        # Rewritten in place: replacing the file would swap the inode the lock lives on.
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        try:
            yield lock_file
        except BaseException:
            if created and [p.name for p in folder.iterdir()] == [LOCK_NAME]:
                lock_file.unlink(missing_ok=True)
                folder.rmdir()
            raise
    finally:
        os.close(fd)  # releases the flock


__all__ = ["LOCK_NAME", "describe_holder", "hold_folder"]
