"""benchmarks/submissions.py, the end-to-end time of all six submissions: its CPU smoke run, on a
Python without the packages the GPU machine lacks (mlflow, ray, deepspeed, webdataset)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "submissions.py"
ABSENT = ("mlflow", "ray", "deepspeed", "webdataset", "braceexpand")

# Imported at start-up by every Python whose path holds it (the benchmark's `ntire submit` child too).
BLOCKER = f"""
import importlib.abc, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {ABSENT!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (absent on the GPU machine)")
sys.meta_path.insert(0, Absent())
"""


@pytest.mark.slow
def test_smoke_makes_six_valid_zips_equal_to_the_old_path_without_the_absent_packages(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(BLOCKER))
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{site}", "OMP_NUM_THREADS": "1"}
    probe = subprocess.run([sys.executable, "-c", "import mlflow"], env=env, capture_output=True, text=True)
    assert "absent on the GPU machine" in probe.stderr  # the blocker works, so the run below proves something
    run = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path / "work")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    row = json.loads(run.stdout)
    assert "six submissions" in row["item"] and "end to end" in row["item"]
    assert row["ok"] and row["problems"] == [] and row["images_per_zip"] == 2
    assert sorted(row["max_diff_vs_old_path"]) == sorted(
        f"{t}_x{s}.zip" for t in ("bicubic", "unknown") for s in (2, 3, 4))
    assert max(row["max_diff_vs_old_path"].values()) <= 1
    assert row["seconds"] >= row["fixed_run_s"] > 0 and "2 images per zip actually run" in row["note"]
    assert len(list((tmp_path / "work" / "out").glob("*.zip"))) == 6


def test_six_submissions_is_importable_and_callable_by_the_gpu_script():
    sys.path.insert(0, str(REPO))
    try:
        from benchmarks.submissions import ITEM, six_submissions
    finally:
        sys.path.remove(str(REPO))
    assert "six submissions" in ITEM and "end to end" in ITEM
    with pytest.raises(ValueError, match="images_per_zip must be at least 1"):
        six_submissions("unused", "cpu", 0)
