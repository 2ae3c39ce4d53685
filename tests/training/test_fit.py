"""The training entry point: fit() learns, MDSR leaves other scales alone, SIGKILL + resume is exact."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ntire.config import ModelConfig, TrainConfig, build_config
from ntire.config_io import merge

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = {"n_blocks": 1, "n_feats": 8}


def tiny_config(dataset: Path, out: Path, **overrides) -> TrainConfig:
    base = {
        "model": TINY_MODEL,
        "data": {"source": str(dataset), "batch_size": 4, "patch_size": 16, "num_workers": 0,
                 "patches_per_sample": 4, "shuffle_buffer": 16},
        "max_steps": 6, "save_every": 3, "eval_every": 3, "log_every": 1, "keep_last": 1,
        "output_dir": str(out), "tracking": {"enabled": False}, "progress": False,
    }
    return build_config(None, merge(base, overrides))


def read_metrics(out: Path) -> dict[int, dict[str, float]]:
    """metrics.jsonl as step -> metrics, later lines winning (a resumed run repeats steps)."""
    merged: dict[int, dict[str, float]] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        step = record.pop("step")
        record.pop("train/patches_per_s", None)  # a timing, not a result
        merged.setdefault(step, {}).update(record)
    return merged


def test_fit_learns_validates_checkpoints_and_exports(dataset, tmp_path, capsys):
    from accelerate.utils import set_seed

    from ntire.data.stream import train_batches
    from ntire.models.build import build_model
    from ntire.models.checkpoint import load_model
    from ntire.training.fit import fit
    from ntire.training.inputs import training_urls

    config = tiny_config(dataset, tmp_path / "run", max_steps=30, save_every=10, eval_every=15,
                         optim={"lr": 3e-3})
    result = fit(config)
    out = capsys.readouterr().out

    # The loss on a fixed batch fell from the initial weights to the trained ones.
    set_seed(config.seed)
    initial = build_model(config.model)  # fit seeds the same way before building its model
    trained, trained_config = load_model(result.model_dir)
    assert trained_config == config.model
    (cache,) = (tmp_path / "run" / "shards").iterdir()
    assert cache.name.startswith("tiny-") and cache.name.endswith("_train_bicubic_x2")
    shards = sorted(str(p) for p in cache.glob("shard-*.tar"))
    batch = next(iter(train_batches(shards, scales=(2,), batch_size=8, patch_size=16, seed=123, num_workers=0)))
    lr, hr = batch.lr.float(), batch.hr.float()
    with torch.no_grad():
        before = F.l1_loss(initial(lr, 2), hr).item()
        after = F.l1_loss(trained(lr, 2), hr).item()
    assert after < 0.7 * before, (before, after)

    # Validation at steps 15 and 30, printed per scale beside bicubic.
    assert "step 15: x2 valid PSNR" in out and "step 30: x2 valid PSNR" in out and "(bicubic " in out
    metrics = read_metrics(tmp_path / "run")
    assert sorted(s for s, m in metrics.items() if "valid/psnr_x2" in m) == [15, 30]
    assert metrics[30]["valid/bicubic_psnr_x2"] == metrics[15]["valid/bicubic_psnr_x2"]
    assert result.validation.scales[2].psnr == pytest.approx(metrics[30]["valid/psnr_x2"])
    assert result.step == 30 and metrics[30]["train/lr"] == 3e-3

    # Checkpoints at 10, 20, 30; only 30 was validated, so it is both the last and the best.
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["step-00000030"] and result.best_checkpoint.name == "step-00000030"
    assert training_urls(config) == shards  # the cache is reused


def test_init_from_x2_starts_x3_with_all_but_the_upsampler(tmp_path):
    from ntire.models.build import build_model
    from ntire.models.checkpoint import save_model
    from ntire.training.fit import build_training_model

    torch.manual_seed(1)
    x2_config = ModelConfig(scales=(2,), **TINY_MODEL)
    x2 = build_model(x2_config)
    save_model(tmp_path / "x2", x2, x2_config)
    config = build_config(None, {"model": {"scales": [3], **TINY_MODEL}, "init_from": str(tmp_path / "x2")})

    said: list[str] = []
    x3 = build_training_model(config, fresh=True, say=said.append)
    source = x2.state_dict()
    for key, value in x3.state_dict().items():
        if key.startswith("tail.0."):  # the upsampler: retrained for the new scale
            assert key not in source or not torch.equal(value, source[key])
        else:
            assert torch.equal(value, source[key]), key
    assert len(said) == 1 and str(tmp_path / "x2") in said[0] and "upsampler" in said[0]

    said.clear()
    build_training_model(config, fresh=False, say=said.append)  # resuming: the checkpoint decides
    assert said == []


def test_resume_refuses_a_checkpoint_of_another_network(dataset, tmp_path):
    from ntire.errors import CheckpointError
    from ntire.training.fit import fit

    fit(tiny_config(dataset, tmp_path / "run", max_steps=2, save_every=2, eval_every=0))
    other = tiny_config(dataset, tmp_path / "run", max_steps=4, resume="auto", model={"n_feats": 16})
    with pytest.raises(CheckpointError, match="saved for model"):
        fit(other)


# A training run that SIGKILLs itself while writing its second checkpoint: after the checkpoint
# folder is complete on disk but before it is renamed into place, i.e. mid-save and mid-run.
KILLED_RUN = """
import os, signal, sys
import ntire.training.state as train_state
real_fsync, saves = train_state._fsync_tree, []
def fsync_then_die(folder):
    real_fsync(folder)
    saves.append(folder)
    if len(saves) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
train_state._fsync_tree = fsync_then_die
from ntire.train import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigkill_then_resume_reproduces_the_uninterrupted_run_exactly(dataset, tmp_path):
    from safetensors.torch import load_file

    from ntire.options import add_train_arguments as add_arguments
    from ntire.options import config_from_args
    from ntire.training.fit import fit

    options = ["--data", str(dataset), "--model", "edsr-baseline", "--scale", "2", "--set", "model.n_blocks=1",
               "--set", "model.n_feats=8", "--batch-size", "4", "--patch-size", "16", "--num-workers", "0",
               "--set", "data.patches_per_sample=4", "--set", "data.shuffle_buffer=16",
               "--max-steps", "12", "--save-every", "4", "--eval-every", "6", "--set", "log_every=1",
               "--lr", "3e-3", "--no-tracking", "--no-progress", "--keep-last", "3"]
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    run = subprocess.run([sys.executable, "-c", KILLED_RUN, *options, "--output-dir", str(killed)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == -signal.SIGKILL, run.stderr
    root = killed / "checkpoints"
    assert (root / ".tmp-step-00000008").is_dir() and not (root / "step-00000008").exists()
    assert not (killed / "model").exists()
    killed_log = read_metrics(killed)
    assert max(killed_log) == 8

    run = subprocess.run([sys.executable, "-m", "ntire", "train", *options, "--output-dir", str(killed),
                          "--resume", "auto"], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "resuming from" in run.stdout and "step-00000004 at step 4" in run.stdout

    # The same run, uninterrupted (in this process: same code, same thread count).
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    straight = tmp_path / "straight"
    fit(config_from_args(parser.parse_args([*options, "--output-dir", str(straight)])))

    expected = read_metrics(straight)
    assert sorted(expected) == list(range(1, 13))
    assert {s: killed_log[s] for s in range(1, 9)} == {s: expected[s] for s in range(1, 9)}
    assert read_metrics(killed) == expected  # losses at every step, validation at 6 and 12
    logged = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    losses = sorted(r["step"] for r in logged if "train/loss" in r)
    assert losses == list(range(1, 13))  # the steps redone after the resume are not logged twice
    a = load_file(str(straight / "model" / "model.safetensors"))
    b = load_file(str(killed / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_demo_command_prints_psnr_beside_bicubic_and_exports(dataset, tmp_path, capsys):
    import re

    from ntire.__main__ import main

    out_dir = tmp_path / "demo"
    code = main(["demo", "--data", str(dataset), "--output-dir", str(out_dir), "--max-steps", "2",
                 "--set", "model.n_blocks=1", "--set", "model.n_feats=8", "--batch-size", "2",
                 "--patch-size", "16", "--no-tracking", "--no-progress"])
    out = capsys.readouterr().out
    line = re.search(r"^x2 valid PSNR (\d+\.\d\d) dB \(bicubic (\d+\.\d\d) dB\)$", out, re.M)
    assert line, out
    beaten = float(line.group(1)) > float(line.group(2))
    assert code == (0 if beaten else 1)
    assert beaten or "did not beat bicubic" in out  # two updates of a tiny net: honest failure
    assert (out_dir / "model" / "model.safetensors").is_file()


def test_a_fresh_run_into_a_used_folder_is_refused_before_writing_anything(dataset, tmp_path):
    from ntire.errors import CheckpointError
    from ntire.training.fit import RUN_CONFIG_NAME, fit

    out = tmp_path / "run"
    first = fit(tiny_config(dataset, out, max_steps=4, save_every=2, eval_every=0, keep_last=2))
    def run_files() -> dict[Path, bytes]:  # the lock file records each holder: not the run's
        return {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "mlflow" not in p.name
                and p.name != ".ntire.lock"}

    before = run_files()
    with pytest.raises(CheckpointError, match=r"run: holds 2 checkpoint\(s\) of an earlier run"):
        fit(tiny_config(dataset, out, max_steps=2, save_every=1, eval_every=0))
    with pytest.raises(CheckpointError, match="holds"):  # another network: refused the same way
        fit(tiny_config(dataset, out, max_steps=2, model={"n_feats": 16}))
    after = run_files()
    assert after == before  # the train config, the checkpoints and the model are as they were
    assert (out / RUN_CONFIG_NAME).read_text().count("max_steps: 4") == 1

    # Moved aside on request: the old model survives in the archive, the new run owns the folder.
    second = fit(tiny_config(dataset, out, max_steps=2, save_every=1, eval_every=0, keep_last=1,
                             archive_old_run=True))
    (archived,) = (out / "archive").iterdir()
    assert (archived / "model" / "model.safetensors").read_bytes() == before[first.model_dir / "model.safetensors"]
    assert sorted(p.name for p in (archived / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002"]
    assert second.step == 2
    # And --resume auto now continues the new run, not the archived one.
    third = fit(tiny_config(dataset, out, max_steps=3, save_every=1, eval_every=0, keep_last=1, resume="auto"))
    assert third.step == 3 and sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000003"]


def test_a_runs_files_follow_the_umask(dataset, tmp_path):
    from ntire.training.fit import fit

    old = os.umask(0o022)
    try:
        fit(tiny_config(dataset, tmp_path / "run", max_steps=2, save_every=2, eval_every=2))
    finally:
        os.umask(old)
    modes = {str(p.relative_to(tmp_path)): p.stat().st_mode & 0o777
             for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert "run/model/model.safetensors" in modes and "run/checkpoints/step-00000002/model.safetensors" in modes
    assert {k: v for k, v in modes.items() if v != 0o644} == {}


def test_channels_last_follows_native_bf16_unless_forced(dataset, tmp_path):
    import yaml

    from ntire.training.fit import RUN_CONFIG_NAME, fit
    from ntire.training.setup import resolve_channels_last

    assert resolve_channels_last(None, "bf16", lambda: True) is True
    assert resolve_channels_last(None, "bf16", lambda: False) is False  # emulated bf16: no gain measured
    assert resolve_channels_last(None, "no", lambda: True) is False
    assert resolve_channels_last(True, "no", lambda: False) is True
    assert resolve_channels_last(False, "bf16", lambda: True) is False
    fit(tiny_config(dataset, tmp_path / "run", max_steps=1, eval_every=0, save_every=1, mixed_precision="no"))
    recorded = yaml.safe_load((tmp_path / "run" / RUN_CONFIG_NAME).read_text())
    assert recorded["channels_last"] is False and recorded["mixed_precision"] == "no"  # resolved, not null


def test_a_cpu_run_says_its_step_is_eager_and_why(dataset, tmp_path, capsys):
    from ntire.training.fit import fit

    result = fit(tiny_config(dataset, tmp_path / "run", max_steps=1, eval_every=0, save_every=1))
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("training step:"))
    assert line == result.setup
    assert "eager" in line and "CUDA graphs need a CUDA device; this run is on cpu" in line


@pytest.mark.parametrize("log_every", [1, 5])  # caught at a log point, or (between them) before a save
def test_a_non_finite_loss_stops_the_run_before_anything_non_finite_is_written(dataset, tmp_path, log_every):
    from safetensors.torch import load_file

    from ntire.errors import TrainingDiverged
    from ntire.training.fit import fit
    from ntire.training.state import list_checkpoints

    out = tmp_path / "run"
    fit(tiny_config(dataset, out, max_steps=2, save_every=2, eval_every=0, mixed_precision="no"))
    # Adam moves every weight by about lr: at 1e30 step 3 leaves the weights finite (and useless)
    # and step 4's activations overflow.
    config = tiny_config(dataset, out, max_steps=6, save_every=2, eval_every=0, log_every=log_every,
                         optim={"lr": 1e30}, mixed_precision="no", resume="auto")
    with pytest.raises(TrainingDiverged) as caught:
        fit(config)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("step 4: the training loss is")
    assert "lr 1e+30" in message and "step-00000002" in message and "--resume auto" in message
    kept = list_checkpoints(out)
    assert [c.state.step for c in kept] == [2]
    weights = load_file(kept[0].path / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert (out / "model").exists()  # the first run's export, not replaced

    # --resume auto continues from the last finite checkpoint and, with a sane lr, finishes.
    resumed = fit(tiny_config(dataset, out, max_steps=4, save_every=2, eval_every=0, resume="auto",
                              mixed_precision="no"))
    assert resumed.step == 4 and (out / "model" / "model.safetensors").is_file()
    assert all(torch.isfinite(t).all() for t in load_file(out / "model" / "model.safetensors").values())


def test_a_run_with_ema_validates_and_exports_both_weights(dataset, tmp_path, capsys):
    from ntire.models.checkpoint import load_model, read_metadata
    from ntire.training.fit import fit

    out = tmp_path / "run"
    result = fit(tiny_config(dataset, out, max_steps=4, save_every=4, eval_every=4, optim={"ema_decay": 0.5}))
    printed = capsys.readouterr().out
    assert "step 4: x2 valid PSNR" in printed and "step 4 (EMA): x2 valid PSNR" in printed
    assert f"EMA weights (decay 0.5) exported to {out / 'model-ema'}" in printed
    assert result.ema_model_dir == out / "model-ema" and result.ema_validation is not None
    assert read_metadata(out / "model")["weights"] == "trained (no averaging)"
    assert read_metadata(out / "model-ema")["weights"] == "ema (decay 0.5)"
    raw, _ = load_model(out / "model")
    ema, _ = load_model(out / "model-ema")
    assert not torch.equal(raw.state_dict()["head.0.weight"], ema.state_dict()["head.0.weight"])
    metrics = read_metrics(out)
    assert metrics[4]["valid_ema/psnr_x2"] == pytest.approx(result.ema_validation.scales[2].psnr)
    assert metrics[4]["valid/psnr_x2"] == pytest.approx(result.validation.scales[2].psnr)


@pytest.mark.slow
def test_a_second_training_on_a_busy_folder_is_refused_naming_the_first(dataset, tmp_path):
    import socket

    from ntire.errors import FolderBusyError
    from ntire.locks import LOCK_NAME
    from ntire.training.fit import RUN_CONFIG_NAME, fit

    out = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "ntire", "train", "--data", str(dataset), "--output-dir", str(out),
         "--set", "model.n_blocks=1", "--set", "model.n_feats=8", "--batch-size", "2", "--patch-size", "16",
         "--num-workers", "0", "--max-steps", "100000", "--save-every", "2", "--eval-every", "0",
         "--no-tracking", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        for line in first.stdout:  # the first run is training: it holds the folder
            if line.startswith("step "):
                break
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == first.pid
        config_before = (out / RUN_CONFIG_NAME).read_bytes()
        with pytest.raises(FolderBusyError) as refused:
            fit(tiny_config(dataset, out, max_steps=2, resume="auto"))
        message = str(refused.value)
        assert "\n" not in message and f"pid {first.pid}" in message and socket.gethostname() in message
        assert (out / RUN_CONFIG_NAME).read_bytes() == config_before  # nothing of the first run touched
        # The same through the command line: one line, exit 2.
        run = subprocess.run([sys.executable, "-m", "ntire", "train", "--data", str(dataset), "--output-dir",
                              str(out), "--resume", "auto", "--no-tracking"], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
        assert run.returncode == 2 and run.stderr.count("\n") == 1 and f"pid {first.pid}" in run.stderr
    finally:
        first.kill()
        first.wait()
    # Killed, its lock is gone with it: the next run continues its checkpoints.
    resumed = fit(tiny_config(dataset, out, max_steps=2, save_every=2, eval_every=0, resume="auto",
                              data={"batch_size": 2}, resume_inexact=True))  # the loader's other settings
    assert resumed.step >= 2


def test_a_run_that_fails_its_checks_writes_no_config(dataset, tmp_path):
    from ntire.errors import CheckpointError
    from ntire.training.fit import RUN_CONFIG_NAME, fit

    out = tmp_path / "run"
    with pytest.raises(CheckpointError):
        fit(tiny_config(dataset, out, init_from=str(tmp_path / "no-such-model")))
    assert not out.exists()  # not even the folder: it held nothing but the lock
    out.mkdir()
    with pytest.raises(CheckpointError):
        fit(tiny_config(dataset, out, init_from=str(tmp_path / "no-such-model")))
    assert not (out / RUN_CONFIG_NAME).exists()


def test_resuming_never_unpickles_the_old_scheduler_file(dataset, tmp_path):
    # A crafted custom_checkpoint_0.pkl (where Accelerate kept the lr scheduler) once ran on --resume.
    import yaml

    from ntire.training.fit import fit
    from ntire.training.state import STATE_FILE

    out = tmp_path / "run"
    fit(tiny_config(dataset, out, max_steps=2, save_every=2, eval_every=0))
    (checkpoint,) = (out / "checkpoints").iterdir()
    marker = tmp_path / "marker"
    evil = checkpoint / "custom_checkpoint_0.pkl"
    torch.save(_PlantsMarker(marker), evil)
    state = yaml.safe_load((checkpoint / STATE_FILE).read_text())
    state["files"]["custom_checkpoint_0.pkl"] = evil.stat().st_size  # passes the size check
    (checkpoint / STATE_FILE).write_text(yaml.safe_dump(state))
    result = fit(tiny_config(dataset, out, max_steps=3, save_every=3, eval_every=0, resume="auto"))
    assert result.step == 3 and not marker.exists()


class _PlantsMarker:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_the_weight_average_resumes_exactly(dataset, tmp_path):
    from safetensors.torch import load_file

    from ntire.training.fit import EMA_FILE, fit

    def run(out, steps, resume=None):
        return fit(tiny_config(dataset, out, max_steps=steps, save_every=3, eval_every=0, mixed_precision="no",
                               optim={"ema_decay": 0.8}, resume=resume))

    run(tmp_path / "whole", 6)
    run(tmp_path / "parts", 3)
    assert (tmp_path / "parts" / "checkpoints" / "step-00000003" / EMA_FILE).is_file()
    run(tmp_path / "parts", 6, resume="auto")
    for folder in ("model", "model-ema"):
        whole = load_file(tmp_path / "whole" / folder / "model.safetensors")
        parts = load_file(tmp_path / "parts" / folder / "model.safetensors")
        assert all(torch.equal(whole[k], parts[k]) for k in whole), folder


def test_a_resume_with_another_loader_geometry_is_refused_unless_accepted(dataset, tmp_path):
    from ntire.errors import CheckpointError
    from ntire.training.fit import fit

    out = tmp_path / "run"
    fit(tiny_config(dataset, out, max_steps=2, save_every=2, eval_every=0, mixed_precision="no"))
    from ntire.locks import LOCK_NAME

    def files() -> list[str]:
        return sorted(p.name for p in out.rglob("*") if p.name != LOCK_NAME)

    before = files()
    with pytest.raises(CheckpointError) as refused:
        fit(tiny_config(dataset, out, max_steps=4, save_every=2, eval_every=0, mixed_precision="no",
                        resume="auto", data={"num_workers": 1}))
    message = str(refused.value)
    assert "\n" not in message and "data.num_workers 0 -> 1" in message and "--resume-inexact" in message
    assert files() == before  # refused before anything was written
    resumed = fit(tiny_config(dataset, out, max_steps=4, save_every=2, eval_every=0, mixed_precision="no",
                              resume="auto", resume_inexact=True, data={"num_workers": 1}))
    assert resumed.step == 4
