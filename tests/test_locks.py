"""Folder locks: a second holder is refused naming the first; a killed holder never blocks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ntire.errors import FolderBusyError
from ntire.locks import LOCK_NAME, hold_folder

REPO = Path(__file__).resolve().parents[1]


def hold_in_child(folder: Path, what: str = "ntire test") -> subprocess.Popen:
    """A child process holding `folder`'s lock until killed; returns once it holds it."""
    code = (
        "import sys, time\n"
        "from ntire.locks import hold_folder\n"
        f"with hold_folder({str(folder)!r}, {what!r}):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(600)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    child = hold_in_child(tmp_path / "run", "ntire train")
    try:
        with pytest.raises(FolderBusyError) as refused:
            with hold_folder(tmp_path / "run", "ntire submit"):
                pytest.fail("the lock was granted twice")
        message = str(refused.value)
        assert "\n" not in message
        assert f"pid {child.pid}" in message and socket.gethostname() in message and "ntire train" in message
    finally:
        child.kill()
        child.wait()


def test_a_lock_left_by_a_killed_process_never_blocks(tmp_path):
    child = hold_in_child(tmp_path / "run")
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert (tmp_path / "run" / LOCK_NAME).is_file()  # the file stays; the kernel dropped the lock
    with hold_folder(tmp_path / "run", "next") as lock_file:
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()


def test_waiting_takes_the_lock_once_the_holder_is_done(tmp_path):
    child = hold_in_child(tmp_path / "run")
    said: list[str] = []
    killer = subprocess.Popen([sys.executable, "-c", f"import os, time; time.sleep(1); os.kill({child.pid}, 9)"])
    with hold_folder(tmp_path / "run", "next", wait=True, say=said.append) as lock_file:
        assert child.wait() == -signal.SIGKILL  # granted only once the holder was gone
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    killer.wait()
    assert len(said) == 1 and f"pid {child.pid}" in said[0] and "waiting" in said[0]


def test_a_failed_job_leaves_no_folder_it_created(tmp_path):
    with pytest.raises(RuntimeError):
        with hold_folder(tmp_path / "new", "job"):
            raise RuntimeError("checks failed")
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    with pytest.raises(RuntimeError):
        with hold_folder(tmp_path / "old", "job"):
            raise RuntimeError("checks failed")
    assert (tmp_path / "old").is_dir()  # not ours to remove


def test_a_folder_under_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    from ntire.errors import WriteError

    with pytest.raises(WriteError, match=r"file/run: cannot lock the folder \(Not a directory: .*/file is a file\)"):
        with hold_folder(tmp_path / "file" / "run", "job"):
            pass
