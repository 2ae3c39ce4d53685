"""`ntire submit` as real processes: SIGKILLed mid-run and run again, and split over 2 CPU processes
by `accelerate launch`; both must give the zip an uninterrupted single process gives."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from ntire.files import is_temp_file
from ntire.images import write_png
from ntire.submission.package import Expected, check_zip, expected_record_path

REPO = Path(__file__).resolve().parents[2]
IMAGES = 8
TIMEOUT_S = 240

# Runs `ntire submit` with every image's inference slowed by argv[1] seconds, so a kill lands
# mid-run whatever the machine's speed (the pool's reads and writes keep going meanwhile).
SLOW_SUBMIT = """
import sys, time
import ntire.inference
from ntire.__main__ import main
real = ntire.inference.upscale_image
def slow(*args, **kwargs):
    time.sleep(float(sys.argv[1]))
    return real(*args, **kwargs)
ntire.inference.upscale_image = slow
sys.exit(main(sys.argv[2:]))
"""

_LAUNCH_ENV = ("ACCELERATE_", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
               "MASTER_PORT", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_", "TORCHELASTIC_", "MLFLOW_TRACKING_URI")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LAUNCH_ENV)}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, checkpoints) -> Path:
    """8 test-split LR images for bicubic x2, served by the conftest's tiny EDSR, self-ensemble on."""
    root = tmp_path_factory.mktemp("eight")
    rng = np.random.default_rng(0)
    for i in range(IMAGES):
        h, w = 20 + 2 * (i % 3), 28 - 2 * (i % 2)  # a few sizes, like the real test set
        lr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        write_png(root / "DIV2K" / "DIV2K_test_LR_bicubic" / "X2" / f"{901 + i:04d}x2.png", lr)
    path = root / "manifest.yaml"
    path.write_text(yaml.safe_dump({
        "name": "eight", "data": str(root), "split": "test", "tile": "auto", "batch_size": 4,
        "bicubic": {"models": [{"checkpoint": str(checkpoints["edsr"]), "scales": [2]}]},
    }))
    return path


def _submit_argv(manifest: Path, out: Path) -> list[str]:
    return ["submit", "--manifest", str(manifest), "--track", "bicubic", "--scales", "2", "--out", str(out),
            "--device", "cpu", "--no-progress", "--no-mlflow", "--io-workers", "2"]


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    run = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert run.returncode == 0, run.stdout + run.stderr
    return run


@pytest.fixture(scope="module")
def reference(manifest, tmp_path_factory) -> Path:
    """The zip of one uninterrupted process."""
    out = tmp_path_factory.mktemp("reference") / "out"
    _run([sys.executable, "-m", "ntire", *_submit_argv(manifest, out)], out.parent)
    return out / "bicubic_x2.zip"


def _same_submission(zip_path: Path, reference: Path) -> None:
    """Same members, byte-identical PNGs, the same readme but for the measured runtime; valid."""
    got, want = zipfile.ZipFile(zip_path), zipfile.ZipFile(reference)
    assert got.namelist() == want.namelist() and len(got.namelist()) == IMAGES + 1
    for name in want.namelist():
        if name == "readme.txt":
            strip = lambda text: [l for l in text.decode().splitlines() if not l.startswith("runtime")]  # noqa: E731,E741
            assert strip(got.read(name)) == strip(want.read(name))
        else:
            assert got.read(name) == want.read(name), name
    assert check_zip(zip_path, Expected.from_json(expected_record_path(zip_path).read_text())) == []


@pytest.mark.slow
def test_sigkill_mid_run_then_a_rerun_gives_the_same_zip(manifest, reference, tmp_path):
    out = tmp_path / "out"
    state = out / "bicubic" / "x2" / "state-sr.json"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SUBMIT, "0.4", *_submit_argv(manifest, out)], cwd=tmp_path,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    recorded: dict = {}
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while len(recorded) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            try:
                recorded = json.loads(state.read_text())["images"]
            except (OSError, ValueError):
                pass
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert 3 <= len(recorded) < IMAGES, proc.stderr.read() if proc.stderr else ""
    assert not (out / "bicubic_x2.zip").exists()
    rerun = _run([sys.executable, "-m", "ntire", *_submit_argv(manifest, out)], tmp_path)
    kept = json.loads(state.read_text())["images"]
    assert all(kept[name] == recorded[name] for name in recorded)  # finished images were not redone
    _same_submission(out / "bicubic_x2.zip", reference)
    leftovers = [str(p.relative_to(out)) for p in out.rglob("*") if is_temp_file(p)]
    assert leftovers == [], rerun.stdout  # no half-written PNG, state, readme or zip is left behind


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_two(*args: str) -> list[str]:
    """`accelerate launch` of 2 CPU processes over gloo: --multi_gpu with ACCELERATE_USE_CPU=1 (see
    STACK-NOTES: `--cpu --num_processes 2` silently starts one)."""
    accelerate = Path(sys.executable).with_name("accelerate")
    accelerate = str(accelerate) if accelerate.exists() else shutil.which("accelerate") or "accelerate"
    return [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), *args]


@pytest.mark.slow
def test_two_processes_split_the_images_and_one_writes_the_zip(manifest, reference, tmp_path):
    out = tmp_path / "out"
    env = {**_env(), "ACCELERATE_USE_CPU": "1"}
    launch = _launch_two("-m", "ntire", *_submit_argv(manifest, out))
    run = subprocess.run(launch, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 processes (cpu)" in run.stdout
    assert run.stdout.count("bicubic_x2.zip") == 1  # one table, from the first process only
    state = out / "bicubic" / "x2" / "state-sr.json"
    images = json.loads(state.read_text())["images"]
    assert sorted(images) == [f"{901 + i:04d}x2.png" for i in range(IMAGES)]
    assert {name: v["process"] for name, v in images.items()} == {
        f"{901 + i:04d}x2.png": i % 2 for i in range(IMAGES)}  # each made half, interleaved
    assert not list(state.parent.glob("state-sr.part-*.json"))  # merged into one record
    _same_submission(out / "bicubic_x2.zip", reference)


@pytest.mark.slow
def test_an_interrupted_two_process_run_resumes_and_gives_the_same_zip(manifest, reference, tmp_path):
    psutil = pytest.importorskip("psutil")
    out = tmp_path / "out"
    work = out / "bicubic" / "x2"
    driver = tmp_path / "slow_submit.py"
    driver.write_text(SLOW_SUBMIT)
    env = {**_env(), "ACCELERATE_USE_CPU": "1"}
    launcher = subprocess.Popen(_launch_two(str(driver), "0.4", *_submit_argv(manifest, out)), cwd=tmp_path,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    recorded: dict = {}
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while len(recorded) < 3 and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            recorded = {}
            for part in work.glob("state-sr.part-*.json"):
                try:
                    recorded.update(json.loads(part.read_text())["images"])
                except (OSError, ValueError):
                    pass
    finally:
        # Like a lost machine: every process at once (torchrun puts each worker in its own session).
        family = [launcher.pid, *(c.pid for c in psutil.Process(launcher.pid).children(recursive=True))]
        for pid in family:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        launcher.wait()
    assert 3 <= len(recorded) < IMAGES
    assert not (out / "bicubic_x2.zip").exists()
    # Resumed by two processes again: what either made before is kept, whichever process now owns it.
    run = subprocess.run(_launch_two("-m", "ntire", *_submit_argv(manifest, out)), cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=TIMEOUT_S)
    assert run.returncode == 0, run.stdout + run.stderr
    images = json.loads((work / "state-sr.json").read_text())["images"]
    assert all(images[name] == recorded[name] for name in recorded)
    _same_submission(out / "bicubic_x2.zip", reference)
    assert [p for p in out.rglob("*") if is_temp_file(p)] == []
