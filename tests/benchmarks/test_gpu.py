"""benchmarks/gpu, the GPU proof: its CPU smoke run, its refusal without a GPU, and ntire's training
on a Python like the GPU machine's (no mlflow, ray or deepspeed; webdataset only from wheels)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import textwrap
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu"
"""Run as a folder: python3 benchmarks/gpu (its __main__.py)."""
SECTIONS = ["environment", "correctness", "training", "mdsr", "inference", "submissions", "accelerate"]
ABSENT = ("mlflow", "ray", "deepspeed")
"""Not installed on the GPU machine."""
FROM_WHEELS = ("webdataset", "braceexpand")
"""Not installed there either; given to benchmarks/gpu as wheels (--wheels)."""


def _hidden(name: str) -> bool:
    top = re.split(r"[-.]", name, maxsplit=1)[0].lower()
    if name.startswith("__editable__") and "ntire" in name:
        return True  # the GPU machine runs from a checkout with PYTHONPATH=.
    return top in ("ray", "deepspeed", *FROM_WHEELS) or top.startswith("mlflow")


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> tuple[str, Path, dict[str, str]]:
    """(python, wheels folder, environment): a virtual environment holding this one's packages
    except mlflow, ray, deepspeed, webdataset and braceexpand (and the editable ntire install), their
    metadata included, so that they are absent for the processes it starts too; webdataset and
    braceexpand as wheels made by `benchmarks/gpu --make-wheels`."""
    pytest.importorskip("webdataset")
    root = tmp_path_factory.mktemp("bare")
    venv.EnvBuilder(with_pip=False, symlinks=True).create(root / "env")
    site = next((root / "env" / "lib").glob("python*/site-packages"))
    paths = sysconfig.get_paths()
    for source in dict.fromkeys(Path(paths[key]) for key in ("purelib", "platlib")):
        for entry in source.iterdir():
            if not _hidden(entry.name) and not (site / entry.name).exists():
                (site / entry.name).symlink_to(entry)
    wheels = root / "wheels"
    made = subprocess.run([sys.executable, str(SCRIPT), "--make-wheels", str(wheels)], capture_output=True, text=True,
                          timeout=120)
    assert made.returncode == 0, made.stdout + made.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "MLFLOW_TRACKING_URI")}
    env["PYTHONPATH"] = str(REPO)
    return str(root / "env" / "bin" / "python"), wheels, env


def test_the_bare_python_lacks_what_the_gpu_machine_lacks(bare_python):
    python, wheels, env = bare_python
    code = ("import importlib.util, importlib.metadata as md\n"
            f"for name in {ABSENT + FROM_WHEELS!r}:\n"
            "    assert importlib.util.find_spec(name) is None, name\n"
            "    try: md.version(name)\n"
            "    except md.PackageNotFoundError: pass\n"
            "    else: raise AssertionError(name + ' metadata')\n"
            "import torch, accelerate, safetensors, numpy, scipy, PIL, skimage, yaml, tqdm\n")
    proc = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name.split("-")[0] for p in wheels.glob("*.whl")) == sorted(FROM_WHEELS)


@pytest.mark.slow
def test_smoke_run_reports_every_section_without_error(bare_python, tmp_path):
    python, wheels, env = bare_python
    out = tmp_path / "out"
    proc = subprocess.run([python, str(SCRIPT), "--smoke", "--out", str(out), "--wheels", str(wheels)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    log = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, log
    report = json.loads((out / "report.json").read_text())
    markdown = (out / "report.md").read_text()
    sections = {s["name"]: s for s in report["sections"]}
    assert list(sections) == SECTIONS
    for i, (name, section) in enumerate(sections.items(), 1):
        assert section["status"] == "ok", (name, section["error"], section["traceback"])
        assert section["error"] is None, name
        assert section["rows"], name
        assert f"## {i}. {name}: ok" in markdown
        assert all(row["figure"] in ("measured", "projected", "datasheet") for row in section["rows"]), name
    assert report["summary"]["failed_checks"] == 0, markdown
    assert report["summary"]["elapsed_s"] < report["budget_s"]
    assert "smoke" in report["mode"] and "CPU" in report["device"]
    assert "webdataset-" in markdown and "braceexpand-" in markdown  # imported from the wheels
    assert {p.name for p in (out / "logs").iterdir()} == {"make-data.log", "accelerate-launch.log", "upscale.log"}

    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value

    env_rows = {row["item"]: row for row in sections["environment"]["rows"]}
    matmul = [row for item, row in env_rows.items() if "matmul" in item]
    assert len(matmul) == 2 and all(number(r["value"]) and r["value"] > 0 and r["unit"] == "TFLOP/s" for r in matmul)
    training = [row for row in sections["training"]["rows"] if "fit_patches_s" in row]
    options = [row["option"] for row in training]
    # default (fp32 eager on this CPU, so the fp32 eager case is not run twice), bf16, bf16 +
    # channels_last, + compile; no captured row: CUDA graphs need a GPU.
    assert len(training) == 4 and options[0].startswith("default: ") and options[0].endswith(", eager"), options
    assert any("compile" in o for o in options) and not any("captured" in o for o in options), options
    assert all(row["fit_setup"] for row in training)
    assert any("captured rows: skipped on the CPU" in n for n in sections["training"]["notes"])
    for row in training:
        for key in ("plain_patches_s", "fit_patches_s", "fit_over_plain", "fit_step_ms", "fit_tflops", "fit_mfu_pct",
                    "loader_wait_ms_step"):
            assert number(row[key]) and row[key] >= 0, (row["option"], key)
    inference = sections["inference"]["rows"]
    assert any(number(r.get("mp_per_s")) and r["mp_per_s"] > 0 for r in inference)
    projected = [r for r in inference if r["figure"] == "projected"]
    assert len(projected) == 9 and all(number(r["seconds"]) for r in projected)
    (six,) = sections["submissions"]["rows"]
    assert "six submissions" in six["item"] and "end to end" in six["item"] and six["check"] == "pass", six
    assert number(six["seconds"]) and six["images_per_zip"] == 2
    launch = {row["item"]: row for row in sections["accelerate"]["rows"]}
    assert launch["accelerate launch ntire/train.py exits 0"]["check"] == "pass"
    assert number(launch["accelerate launch ntire/train.py exits 0"]["seconds"])


def test_without_smoke_or_a_cuda_device_it_says_so_in_one_line(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0], lines
    assert not (tmp_path / "out").exists()


FIT_WITHOUT_OPTIONAL_PACKAGES = textwrap.dedent("""
    import sys
    from pathlib import Path

    import ntire.training.fit as fit_module  # the import under test

    for name in ("mlflow", "ray", "deepspeed"):
        try:
            __import__(name)
        except ImportError:
            continue
        raise SystemExit(f"{name} is importable: the test environment leaks it")

    import numpy as np

    from ntire.config import build_config
    from ntire.data.degrade import bicubic_downscale
    from ntire.data.layout import div2k_pairs
    from ntire.data.shards import write_shards
    from ntire.images import write_png

    root = Path(sys.argv[1])
    rng = np.random.default_rng(0)
    for i in (1, 2):
        hr = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
        write_png(root / f"data/DIV2K/DIV2K_train_HR/{i:04d}.png", hr)
        write_png(root / f"data/DIV2K/DIV2K_train_LR_bicubic/X2/{i:04d}x2.png", bicubic_downscale(hr, 2))
    pairs = div2k_pairs(root / "data", split="train", track="bicubic", scales=(2,))
    write_shards(pairs, root / "shards", track="bicubic", scales=(2,), progress=False, say=lambda _: None)
    for tracking in (False, True):
        config = build_config(overrides={
            "model": {"preset": "edsr-baseline", "scales": [2], "n_blocks": 1, "n_feats": 8},
            "data": {"source": str(root / "shards"), "batch_size": 2, "patch_size": 8, "num_workers": 0},
            "max_steps": 2, "log_every": 1, "save_every": 2, "eval_every": 0, "progress": False,
            "output_dir": str(root / f"run-tracking-{tracking}"), "tracking": {"enabled": tracking},
        })
        result = fit_module.fit(config)
        assert result.step == 2 and (result.model_dir / "model.safetensors").is_file()
        assert result.tracking_run_id is None
    loaded = sorted({m.split(".")[0] for m in sys.modules} & {"mlflow", "ray", "deepspeed"})
    print("FIT OK", loaded)
""")


@pytest.mark.slow
def test_fit_imports_and_trains_without_mlflow_ray_or_deepspeed(bare_python, tmp_path):
    python, wheels, env = bare_python
    env = {**env, "PYTHONPATH": os.pathsep.join([str(REPO), *map(str, sorted(wheels.glob("*.whl")))])}
    proc = subprocess.run([python, "-c", FIT_WITHOUT_OPTIONAL_PACKAGES, str(tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    # On failure the child's traceback names the import that breaks.
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "FIT OK []" in proc.stdout
    # With tracking left on, the run says mlflow is missing and trains on.
    assert "mlflow is not installed" in proc.stdout + proc.stderr


def test_a_compile_that_runs_too_long_is_stopped_and_the_outer_time_limit_kept(monkeypatch):
    # What keeps a GPU run inside its 6 minutes when torch.compile stalls (the alarm reaches the
    # compiler inside dynamo); the smoke run cannot show it: its compile takes well under a second.
    import argparse
    import functools
    import signal
    import time

    import torch

    monkeypatch.syspath_prepend(str(REPO))
    from benchmarks.gpu.clock import Clock, DeadlineExceeded, alarm
    from benchmarks.gpu.context import SECTIONS, Run
    from benchmarks.gpu.plain import Setup, plain_loop
    from benchmarks.gpu.sizes import SMOKE
    from ntire.config import OptimConfig

    def slow_backend(graph, _example_inputs):  # a compiler that takes 30 s
        time.sleep(30)
        return graph

    def on_alarm(*_):
        raise DeadlineExceeded("alarm")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=slow_backend))
    args = argparse.Namespace(smoke=True, compile_limit_s=1.0, sections=list(SECTIONS))
    run = Run(args=args, sizes=SMOKE, device=torch.device("cpu"), clock=Clock(False), report=None,
              work=None, deadline=time.monotonic() + 100, wheels=[])
    outer, _ = signal.getitimer(signal.ITIMER_REAL)  # pytest-timeout's, if it uses SIGALRM
    try:
        started = time.monotonic()
        with alarm(20):
            setup = Setup(bf16=True, channels_last=True, compiled=True)
            result = plain_loop(run, "edsr-baseline", setup, OptimConfig(), 1, 2, compile_limit=1.0)
            left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert "stopped after 1 s" in result["skipped"]
        assert time.monotonic() - started < 10
        assert 10 < left < 20  # the enclosing limit is re-armed with what was left of it
        after, _ = signal.getitimer(signal.ITIMER_REAL)
        assert (after == 0) if not outer else (0 < outer - after < 15)
    finally:
        torch._dynamo.reset()
        signal.signal(signal.SIGALRM, previous)
        signal.setitimer(signal.ITIMER_REAL, max(0.0, outer - (time.monotonic() - started)) if outer else 0)


def _isolation_case():
    """An x3-like update by hand: weights and Adam state before and after, branch 0 untouched."""
    import torch

    before = {"pre_process.0.w": torch.ones(3), "pre_process.1.w": torch.ones(3), "body.w": torch.ones(3)}
    states = {n: {"step": torch.tensor(4.0), "exp_avg": torch.zeros(3), "exp_avg_sq": torch.ones(3)} for n in before}
    after = {n: t.clone() if n == "pre_process.0.w" else t + 0.1 for n, t in before.items()}
    after_states = {n: {k: v.clone() for k, v in s.items()} for n, s in states.items()}
    for n in ("pre_process.1.w", "body.w"):
        after_states[n]["step"] += 1
    return before, states, after, after_states


def test_mdsr_isolation_passes_untouched_branches_and_fails_any_change_or_nan(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    import torch

    from benchmarks.gpu.mdsr import branch, isolation

    def untouched(name):
        return branch(name) == 0

    before, states, after, after_states = _isolation_case()
    assert [ok for _, ok, _ in isolation(before, states, after, after_states, untouched)] == [True, True]

    # One ulp on an untouched weight fails: the comparison is exact.
    before, states, after, after_states = _isolation_case()
    after["pre_process.0.w"][0] = torch.nextafter(torch.tensor(1.0), torch.tensor(2.0))
    (item, ok, note), (_, moved_ok, _) = isolation(before, states, after, after_states, untouched)
    assert not ok and "pre_process.0.w" in note and moved_ok

    # A NaN anywhere fails both checks by name, even where NaN would "equal" NaN for the moved check.
    for where in ("after", "state"):
        before, states, after, after_states = _isolation_case()
        if where == "after":
            after["body.w"][1] = float("nan")
        else:
            after_states["pre_process.0.w"]["exp_avg_sq"][0] = float("inf")
        checks = isolation(before, states, after, after_states, untouched)
        assert [ok for _, ok, _ in checks] == [False, False], where
        assert all("non-finite" in note and "nothing compared" in note for _, _, note in checks), checks


def test_the_captured_plain_loop_is_skipped_on_the_cpu(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    import argparse
    import time

    import torch

    from benchmarks.gpu.clock import Clock
    from benchmarks.gpu.context import SECTIONS, Run
    from benchmarks.gpu.plain import Setup, plain_loop
    from benchmarks.gpu.sizes import SMOKE
    from ntire.config import OptimConfig

    args = argparse.Namespace(smoke=True, compile_limit_s=1.0, sections=list(SECTIONS))
    run = Run(args=args, sizes=SMOKE, device=torch.device("cpu"), clock=Clock(False), report=None,
              work=None, deadline=time.monotonic() + 100, wheels=[])
    setup = Setup(bf16=False, channels_last=False, captured=True)
    assert plain_loop(run, "edsr-baseline", setup, OptimConfig(), 1, 2, compile_limit=1.0) == {
        "skipped": "CUDA graphs need a CUDA device"}
    eager = plain_loop(run, "edsr-baseline", Setup(bf16=False, channels_last=False), OptimConfig(grad_clip=1.0), 1, 2,
                       compile_limit=1.0)
    assert eager["patches_per_s"] > 0 and torch.backends.cudnn.benchmark is False  # restored after the loop
