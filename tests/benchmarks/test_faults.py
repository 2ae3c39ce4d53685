"""The fault-injection soak, short: one SIGKILL per job, and nothing lost, corrupt or stale."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_short_soak_loses_nothing(tmp_path):
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "faults.py"), "--kills", "1", "--seed", "1",
                          "--concurrent", "1",
                          "--work", str(tmp_path)], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert run.returncode == 0, run.stdout + run.stderr
    last = run.stdout.strip().splitlines()[-1]
    assert last.startswith("4 kills, 4 jobs, 0 lost/corrupt/stale"), run.stdout


def test_the_soak_sees_a_leftover_and_a_difference(tmp_path):
    # Negative control: the checks it ends with do fail on debris and on changed bytes.
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import faults
    finally:
        sys.path.pop(0)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"1")
    (tmp_path / "b" / "x.png").write_bytes(b"2")
    (tmp_path / "b" / ".y.png.k2j3.tmp").write_bytes(b"")
    assert faults.same_files(tmp_path / "a", tmp_path / "b", "*.png") == ["differs x.png"]
    assert faults.leftovers(tmp_path / "b") == [".y.png.k2j3.tmp"]
