"""Section 6, accelerate: `accelerate launch ntire/train.py` (one DDP process), then `ntire upscale`."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

from benchmarks.gpu.context import ROOT, Run, free_memory, free_port, run_child, tail
from benchmarks.gpu.data import wait_data
from benchmarks.gpu.report import MEASURED, Section


def section_accelerate(run: Run, sec: Section) -> None:
    import numpy as np

    from ntire.images import read_image
    from ntire.inference import upscale_image
    from ntire.models.checkpoint import load_model

    info = wait_data(run)
    s = run.sizes
    out = run.work / "accelerate-run"
    shutil.rmtree(out, ignore_errors=True)
    port = free_port()
    steps = 3
    launch = [sys.executable, "-m", "accelerate.commands.launch",
              "--config_file", str(ROOT / "cluster/accelerate/multi_gpu.yaml"), "--num_processes", "1",
              "--main_process_port", str(port)]
    if not run.cuda:
        launch += ["--mixed_precision", "no"]  # bf16 is emulated (slow) on most CPUs
    train = [str(ROOT / "ntire/train.py"), "--model", "edsr-baseline", "--scale", "2", "--data", info["shards_dir"],
             "--output-dir", str(out), "--max-steps", str(steps), "--batch-size", str(s.accel_batch),
             "--patch-size", str(s.accel_patch), "--num-workers", "2", "--log-every", "1", "--save-every", str(steps),
             "--eval-every", "0", "--no-tracking", "--no-progress"]
    for key, value in s.model_overrides.items():
        train += ["--set", f"model.{key}={value}"]
    sec.notes.append("launch: " + " ".join(["accelerate launch", *launch[3:], "ntire/train.py", *train[1:]]))
    seconds, proc = run_child(run, launch + train, "accelerate-launch", timeout=min(180.0, run.remaining()))
    sec.check("accelerate launch ntire/train.py exits 0", proc.returncode == 0, seconds=seconds, figure=MEASURED,
              note=f"{steps} updates, batch {s.accel_batch}, {s.accel_patch}x{s.accel_patch}" if proc.returncode == 0
              else tail(proc.stdout + proc.stderr))
    if proc.returncode != 0:
        output = tail(proc.stdout + proc.stderr, 400)
        raise RuntimeError(f"accelerate launch failed (exit {proc.returncode}): {output}")
    rank = json.loads((out / "ranks" / "rank-0.json").read_text())
    expect_backend = "nccl" if run.cuda else None
    sec.check("one process, its backend and device", rank["world_size"] == 1 and
              (expect_backend is None or rank["backend"] == expect_backend),
              value=f"world {rank['world_size']}, {rank['distributed_type']}, backend {rank['backend']}, "
                    f"{rank['device']}, precision {rank['mixed_precision']}", figure=MEASURED,
              note="from OUTPUT/ranks/rank-0.json" + (f"; expected backend {expect_backend}" if expect_backend else ""))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    sec.check("metrics.jsonl: a finite loss per update", len(losses) == steps and all(map(math.isfinite, losses)),
              value=", ".join(f"{v:.2f}" for v in losses), figure=MEASURED)
    model_dir = out / "model"
    sec.check("exported model folder", (model_dir / "model.safetensors").is_file() and
              (model_dir / "config.yaml").is_file(), value=str(model_dir.relative_to(run.work)), figure=MEASURED)

    lr_path = Path(info["lr_example"])
    sr_path = run.work / "accelerate-upscaled.png"
    device = "cuda" if run.cuda else "cpu"
    cmd = [sys.executable, "-m", "ntire", "upscale", "--checkpoint", str(model_dir), "--scale", "2",
           "--device", device, str(lr_path), str(sr_path)]
    seconds, proc = run_child(run, cmd, "upscale", timeout=min(120.0, run.remaining()))
    sec.check("python -m ntire upscale with the exported model exits 0", proc.returncode == 0, seconds=seconds,
              figure=MEASURED, note=tail(proc.stdout + proc.stderr, 200))
    if proc.returncode != 0:
        raise RuntimeError(f"ntire upscale failed (exit {proc.returncode}): {tail(proc.stdout + proc.stderr, 400)}")
    lr, sr = read_image(lr_path), read_image(sr_path)
    model, config = load_model(model_dir, map_location="cpu")
    here = upscale_image(model, config, lr, scale=2, device=run.device)
    diff = int(np.abs(here.astype(np.int16) - sr.astype(np.int16)).max()) if here.shape == sr.shape else None
    sec.check("its output: 2x the LR size, equal to the model run in this process",
              sr.shape == (lr.shape[0] * 2, lr.shape[1] * 2, 3) and diff is not None and diff <= 1,
              value=f"{lr.shape[1]}x{lr.shape[0]} -> {sr.shape[1]}x{sr.shape[0]}", uint8_max_diff=diff,
              figure=MEASURED)
    free_memory(run)

