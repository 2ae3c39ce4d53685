"""Errors a user can act on. The CLI prints their message and exits 2, never a stack trace."""

import sys


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


def say_on_own_line(message: str) -> None:
    """Print `message` to stderr after closing any unfinished progress bar, which would otherwise
    leave the message glued to the end of its line."""
    tqdm = sys.modules.get("tqdm")  # no bar can be open if tqdm was never imported
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()
    print(message, file=sys.stderr, flush=True)


def one_line(error: BaseException, limit: int = 300, *, first_line: bool = False) -> str:
    """An exception's message on one line, for a message that must stay one line (no traceback);
    `first_line` keeps only its first line (services such as MLflow append their server's
    traceback to the message)."""
    text = str(error).strip()
    text = text.splitlines()[0] if first_line and text else text
    text = " ".join(text.split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
