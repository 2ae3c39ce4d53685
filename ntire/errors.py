"""Errors a user can act on. The CLI prints their message and exits 2, never a stack trace."""

import sys
from collections.abc import Callable


class NtireError(Exception):
    """Base class: a problem with the user's input, files or options, described in the message."""


class ImageError(NtireError):
    """An image file that cannot be read, or is of a kind ntire does not accept."""


class DataError(NtireError):
    """A dataset folder, shard or sample that is missing, malformed or inconsistent."""


class CheckpointError(NtireError):
    """A checkpoint file or folder that is missing, unsafe or not of a known layout."""


class ConfigError(NtireError):
    """A configuration file or option with an unknown key or an invalid value."""


class TrainingDiverged(NtireError):
    """A training run whose loss or weights stopped being finite (stopped before saving them)."""


class WriteError(NtireError):
    """An output that cannot be written: a full disk, a read-only place, a path under a file."""


class FolderBusyError(NtireError):
    """A folder another live process is writing to (it holds the folder's lock, ntire.locks)."""


def say_on_own_line(message: str) -> None:
    """Print `message` to stderr after closing any unfinished progress bar, which would otherwise
    leave the message glued to the end of its line."""
    tqdm = sys.modules.get("tqdm")  # no bar can be open if tqdm was never imported
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()
    print(message, file=sys.stderr, flush=True)


def write_error(error: BaseException, path: object, doing: str = "cannot write") -> WriteError:
    """A WriteError for a failed write of `path`: one line naming the path (the file the OS names,
    if it names one) and the OS's reason (`No space left on device`, `Read-only file system`,
    `Not a directory`, ...). Writers that are not Python's own (safetensors, torch's zip writer)
    report the OS error inside their message; its errno is read from there."""
    import errno
    from pathlib import Path

    where = path if getattr(error, "filename", None) is None or _is_temp(error.filename) else error.filename
    if isinstance(error, OSError) and error.errno in (errno.EEXIST, errno.ENOTDIR):
        # mkdir says "File exists" of a file in the way: say which file, and that it is one.
        for p in (Path(str(path)), *Path(str(path)).parents):
            if p.exists():
                if not p.is_dir():
                    return WriteError(f"{path}: {doing} (Not a directory: {p} is a file)")
                break
    return WriteError(f"{where}: {doing} ({os_reason(error) or one_line(error)})")


def _is_temp(name: object) -> bool:
    # ntire's temporary files (ntire.files.atomic_path) are no name a user knows: name the target.
    import os

    base = os.path.basename(str(name))
    return base.startswith(".") and base.endswith(".tmp")


def os_reason(error: BaseException) -> str | None:
    """The OS's reason for a failed file operation, if `error` is one: an OSError's strerror, or the
    errno a writer's own exception quotes (`os error 28`, `code: 28`); None otherwise."""
    import errno
    import os
    import re

    if isinstance(error, OSError) and error.errno:
        return error.strerror or os.strerror(error.errno)
    m = re.search(r"(?:os error|code:)\s*(\d+)", str(error))
    if m and int(m.group(1)) in errno.errorcode:
        return os.strerror(int(m.group(1)))
    for code in (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO, errno.EACCES, errno.ENOTDIR, errno.EEXIST):
        if os.strerror(code) in str(error):
            return os.strerror(code)
    return None


_FILE_ERRNOS = ("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "ENOTDIR", "EEXIST", "EISDIR", "ENAMETOOLONG",
                "EIO", "ENOENT", "EFBIG")


def failed_file_operation(error: BaseException) -> WriteError | None:
    """The one-line error for an exception that is a file operation the OS refused (an OSError
    naming its file, or a writer's own error quoting the OS's errno); None for anything else,
    which is a bug and keeps its traceback."""
    import errno

    codes = {getattr(errno, name) for name in _FILE_ERRNOS if hasattr(errno, name)}
    if isinstance(error, OSError):
        if error.errno in codes and error.filename is not None:
            return write_error(error, error.filename, "cannot write" if error.errno != errno.ENOENT else "cannot open")
        return None
    if type(error).__name__ == "SafetensorError" and os_reason(error):
        return WriteError(f"cannot write safetensors file ({os_reason(error)})")
    return None


def one_line(error: BaseException, limit: int = 300, *, first_line: bool = False) -> str:
    """An exception's message on one line, for a message that must stay one line (no traceback);
    `first_line` keeps only its first line (services such as MLflow append their server's
    traceback to the message)."""
    text = str(error).strip()
    text = text.splitlines()[0] if first_line and text else text
    text = " ".join(text.split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_command(name: str, command: Callable[[], int | None]) -> int:
    """Run a command's body and turn what a user can act on into one line on stderr and an exit
    status: NtireError and refused file operations 2, an interrupt 130. Anything else is a bug and
    keeps its traceback."""
    try:
        return int(command() or 0)
    except NtireError as e:
        say_on_own_line(f"{name}: error: {e}")
        return 2
    except KeyboardInterrupt:
        say_on_own_line(f"{name}: interrupted")
        return 130
    except Exception as e:
        error = failed_file_operation(e)  # a full disk, a read-only folder, a path under a file
        if error is None:
            raise
        say_on_own_line(f"{name}: error: {error}")
        return 2
