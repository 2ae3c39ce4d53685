"""Checkpoints: atomic saves, resume from the newest complete one, keep the last K and the best."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml

import ntire.training.state as train_state
from ntire.errors import CheckpointError
from ntire.training.state import (
    STATE_FILE,
    TrainState,
    best_checkpoint,
    checkpoint_root,
    find_resume,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    read_checkpoint,
    save_checkpoint,
)


def fake_checkpoint(out: Path, step: int, psnr: float | None = None, *, complete: bool = True,
                    name: str | None = None) -> Path:
    """A checkpoint folder with a state file and a small weights file (enough for listing, checking
    and pruning)."""
    from safetensors.torch import save_file

    folder = checkpoint_root(out) / (name or f"step-{step:08d}")
    folder.mkdir(parents=True)
    save_file({"w": torch.full((3,), float(step))}, str(folder / "model.safetensors"))
    if complete:
        state = TrainState(step=step, batches=step, valid_psnr=psnr)
        (folder / STATE_FILE).write_text(yaml.safe_dump(asdict(state)))
    return folder


def test_resume_auto_takes_the_newest_complete_checkpoint(tmp_path):
    fake_checkpoint(tmp_path, 10)
    fake_checkpoint(tmp_path, 20)
    fake_checkpoint(tmp_path, 30, name=".tmp-step-00000030")  # a save that crashed mid-way
    fake_checkpoint(tmp_path, 40, complete=False)  # no state file: not a checkpoint
    found = find_resume(tmp_path, "auto")
    assert found is not None and found.state.step == 20
    assert [c.state.step for c in list_checkpoints(tmp_path)] == [10, 20]


def test_resume_auto_without_checkpoints_starts_afresh(tmp_path):
    assert find_resume(tmp_path, "auto") is None
    assert find_resume(tmp_path, None) is None


def test_resume_from_an_incomplete_folder_is_refused(tmp_path):
    partial = fake_checkpoint(tmp_path, 40, complete=False)
    with pytest.raises(CheckpointError, match="incomplete"):
        find_resume(tmp_path, str(partial))
    with pytest.raises(CheckpointError, match="no such"):
        read_checkpoint(tmp_path / "nowhere")


def test_prune_keeps_the_last_k_and_the_best(tmp_path):
    psnrs = {10: 30.0, 20: 32.5, 30: 31.0, 40: None, 50: 31.5}
    for step, psnr in psnrs.items():
        fake_checkpoint(tmp_path, step, psnr)
    debris = fake_checkpoint(tmp_path, 60, name=".tmp-step-00000060")
    removed = prune_checkpoints(tmp_path, keep_last=2, lineage="")
    assert [c.state.step for c in list_checkpoints(tmp_path)] == [20, 40, 50]
    assert debris in removed and not debris.exists()
    assert best_checkpoint(list_checkpoints(tmp_path)).state.step == 20
    # The best is kept once, not twice, when it is also among the last K.
    fake_checkpoint(tmp_path, 70, 33.0)
    prune_checkpoints(tmp_path, keep_last=1, lineage="")
    assert [c.state.step for c in list_checkpoints(tmp_path)] == [70]


def test_best_prefers_the_later_of_equal_scores(tmp_path):
    fake_checkpoint(tmp_path, 10, 31.0)
    fake_checkpoint(tmp_path, 20, 31.0)
    fake_checkpoint(tmp_path, 30)
    assert best_checkpoint(list_checkpoints(tmp_path)).state.step == 20
    assert best_checkpoint([]) is None


@pytest.fixture
def prepared():
    """A real Accelerator with a tiny model, Adam and a registered StepLR."""
    from accelerate import Accelerator

    from ntire.training.distributed import finish

    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 3, 3, padding=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    yield accelerator, model, optimizer, scheduler
    finish(accelerator)


def _train_step(model, optimizer, scheduler):
    model(torch.ones(1, 3, 4, 4)).square().mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()


def test_save_and_load_restore_weights_optimizer_schedule_and_rng(tmp_path, prepared):
    accelerator, model, optimizer, scheduler = prepared
    for _ in range(3):
        _train_step(model, optimizer, scheduler)
    state = TrainState(step=3, batches=3, valid_psnr=30.0, tracking_run_id="abc", config={"seed": 0})
    path = save_checkpoint(accelerator, tmp_path, state)
    assert path == checkpoint_root(tmp_path) / "step-00000003"
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    lr = scheduler.get_last_lr()
    after_save = torch.rand(3)

    for _ in range(2):
        _train_step(model, optimizer, scheduler)
    restored = load_checkpoint(accelerator, read_checkpoint(path))
    assert restored == dataclasses.replace(state, files=restored.files)
    assert restored.files["model.safetensors"] == (path / "model.safetensors").stat().st_size
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    # Accelerate's pickle of the scheduler (custom_checkpoint_0.pkl) is never read: the lr is a
    # function of the step, and that file could run code.
    assert (path / "custom_checkpoint_0.pkl").is_file() and scheduler.get_last_lr() != lr
    assert torch.equal(torch.rand(3), after_save)  # RNG restored to where the save left it


def test_a_crash_mid_save_leaves_the_previous_checkpoint_newest(tmp_path, prepared, monkeypatch):
    accelerator, model, optimizer, scheduler = prepared
    _train_step(model, optimizer, scheduler)
    save_checkpoint(accelerator, tmp_path, TrainState(step=1, batches=1))

    def crash(folder):
        raise OSError("disk full")

    _train_step(model, optimizer, scheduler)
    with monkeypatch.context() as m:
        m.setattr(train_state, "_fsync_tree", crash)
        with pytest.raises(OSError):
            save_checkpoint(accelerator, tmp_path, TrainState(step=2, batches=2))
    root = checkpoint_root(tmp_path)
    assert (root / ".tmp-step-00000002").is_dir() and not (root / "step-00000002").exists()
    assert find_resume(tmp_path, "auto").state.step == 1

    # The next save of that step clears the debris and completes.
    save_checkpoint(accelerator, tmp_path, TrainState(step=2, batches=2))
    assert find_resume(tmp_path, "auto").state.step == 2
    assert not (root / ".tmp-step-00000002").exists()


def test_saving_a_step_again_replaces_it(tmp_path, prepared):
    accelerator, model, optimizer, scheduler = prepared
    save_checkpoint(accelerator, tmp_path, TrainState(step=5, batches=5, valid_psnr=1.0))
    save_checkpoint(accelerator, tmp_path, TrainState(step=5, batches=5, valid_psnr=2.0))
    (only,) = list_checkpoints(tmp_path)
    assert only.state.valid_psnr == 2.0
    assert sorted(p.name for p in checkpoint_root(tmp_path).iterdir()) == ["step-00000005"]


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, prepared):
    accelerator, model, optimizer, scheduler = prepared
    for step in (1, 2):
        _train_step(model, optimizer, scheduler)
        save_checkpoint(accelerator, tmp_path, TrainState(step=step, batches=step))
    newest = checkpoint_root(tmp_path) / "step-00000002" / "model.safetensors"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    said: list[str] = []
    assert find_resume(tmp_path, "auto", say=said.append).state.step == 1
    assert len(said) == 1 and str(newest) in said[0] and "falling back" in said[0]
    with pytest.raises(CheckpointError, match=r"step-00000002/model.safetensors: \d+ bytes, but \d+ were saved"):
        find_resume(tmp_path, str(newest.parent))
    # Without the recorded sizes (an older checkpoint), the safetensors header still tells.
    state_file = newest.parent / STATE_FILE
    record = yaml.safe_load(state_file.read_text())
    record["files"] = {}
    state_file.write_text(yaml.safe_dump(record))
    with pytest.raises(CheckpointError, match="header describes"):
        find_resume(tmp_path, str(newest.parent))
    # Every checkpoint damaged: one line, not a traceback.
    older = checkpoint_root(tmp_path) / "step-00000001" / "optimizer.bin"
    older.write_bytes(b"")
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        find_resume(tmp_path, "auto", say=said.append)


def test_checkpoint_files_follow_the_umask(tmp_path, prepared):
    accelerator = prepared[0]
    old = os.umask(0o022)
    try:
        path = save_checkpoint(accelerator, tmp_path, TrainState(step=1, batches=1))
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in path.rglob("*") if p.is_file()}
    assert "model.safetensors" in modes and set(modes.values()) == {0o644}, modes


def test_a_fresh_run_never_takes_over_a_folder_holding_another_run(tmp_path):
    from ntire.training.state import ARCHIVE_DIR, claim_run_folder

    fake_checkpoint(tmp_path, 10)
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    refusal = r"holds 1 checkpoint\(s\) of an earlier run.*--resume auto.*--archive-old-run"
    with pytest.raises(CheckpointError, match=refusal):
        claim_run_folder(tmp_path, None, archive=False)
    assert (checkpoint_root(tmp_path) / "step-00000010").is_dir()  # refused: nothing moved
    # Resuming that very run is its own business.
    (resumed,) = list_checkpoints(tmp_path)
    assert claim_run_folder(tmp_path, resumed, archive=False) == resumed.state.lineage
    said: list[str] = []
    lineage = claim_run_folder(tmp_path, None, archive=True, say=said.append)
    assert lineage and lineage != resumed.state.lineage
    (archived,) = (tmp_path / ARCHIVE_DIR).iterdir()
    assert (archived / "checkpoints" / "step-00000010").is_dir() and (archived / "metrics.jsonl").is_file()
    assert list_checkpoints(tmp_path) == [] and not (tmp_path / "metrics.jsonl").exists()
    assert said == [f"moved the earlier run in {tmp_path} to {archived}"]


def test_pruning_leaves_another_runs_checkpoints_alone(tmp_path):
    mine = fake_checkpoint(tmp_path, 10)
    theirs = checkpoint_root(tmp_path) / "step-00000005"
    theirs.mkdir()
    (theirs / STATE_FILE).write_text(yaml.safe_dump(asdict(TrainState(step=5, batches=5, lineage="other"))))
    fake_checkpoint(tmp_path, 20)
    prune_checkpoints(tmp_path, keep_last=1, lineage="")
    assert theirs.is_dir() and not mine.exists()


class _PlantsMarker:
    """Unpickling this creates the file `marker`: what a crafted checkpoint file would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_no_checkpoint_file_can_run_code_on_resume(tmp_path, prepared):
    import pickle
    import shutil

    accelerator, model, optimizer, scheduler = prepared
    _train_step(model, optimizer, scheduler)
    path = save_checkpoint(accelerator, tmp_path / "run", TrainState(step=1, batches=1))
    pristine = tmp_path / "pristine"
    shutil.copytree(path, pristine)
    names = sorted(p.name for p in pristine.iterdir())
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl", "rng_state_0.json",
            "custom_checkpoint_0.pkl", STATE_FILE} <= set(names)
    marker = tmp_path / "marker"
    for name in names:
        for fmt in ("torch", "pickle"):
            shutil.rmtree(path)
            shutil.copytree(pristine, path)
            if fmt == "torch":
                torch.save(_PlantsMarker(marker), path / name)
            else:
                (path / name).write_bytes(pickle.dumps(_PlantsMarker(marker)))
            try:
                load_checkpoint(accelerator, read_checkpoint(path))
            except CheckpointError as e:
                assert "\n" not in str(e) and name in str(e)  # refused in one line naming the file
            assert not marker.exists(), f"unpickling {name} ({fmt}) ran code"


def test_a_checkpoint_without_json_rng_state_restores_accelerates_weights_only(tmp_path, prepared):
    accelerator, model, optimizer, scheduler = prepared
    path = save_checkpoint(accelerator, tmp_path, TrainState(step=1, batches=1))
    after_save = torch.rand(3)
    (path / "rng_state_0.json").unlink()  # as an earlier ntire saved it
    load_checkpoint(accelerator, read_checkpoint(path))
    assert torch.equal(torch.rand(3), after_save)


def test_a_full_disk_mid_save_is_one_line_and_leaves_the_previous_checkpoint(tmp_path, prepared, monkeypatch):
    from safetensors import SafetensorError

    from ntire.errors import WriteError

    accelerator, model, optimizer, scheduler = prepared
    save_checkpoint(accelerator, tmp_path, TrainState(step=1, batches=1))
    real_save_state = accelerator.save_state

    def save_until_full(folder):
        real_save_state(folder)  # a half-written folder, then the disk is full
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(accelerator, "save_state", save_until_full)
    with pytest.raises(WriteError) as failed:
        save_checkpoint(accelerator, tmp_path, TrainState(step=2, batches=2))
    assert str(failed.value) == f"{checkpoint_root(tmp_path)}: cannot save a checkpoint (No space left on device)"
    assert sorted(p.name for p in checkpoint_root(tmp_path).iterdir()) == ["step-00000001"]
    assert find_resume(tmp_path, "auto").state.step == 1


def test_a_kill_mid_prune_leaves_no_half_deleted_checkpoint(tmp_path, monkeypatch):
    for step in (1, 2, 3):
        fake_checkpoint(tmp_path, step)
    real_rmtree = train_state.shutil.rmtree

    def killed_mid_delete(path, ignore_errors=False):
        if Path(path).name.startswith(".old-step-") and Path(path).exists():
            (Path(path) / STATE_FILE).unlink()  # the first file gone, then the process dies
            raise KeyboardInterrupt
        real_rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(train_state.shutil, "rmtree", killed_mid_delete)
    with pytest.raises(KeyboardInterrupt):
        prune_checkpoints(tmp_path, keep_last=1, lineage="")
    monkeypatch.setattr(train_state.shutil, "rmtree", real_rmtree)
    assert not any(p.name.startswith("step-") and not (p / STATE_FILE).exists()
                   for p in checkpoint_root(tmp_path).iterdir())
    # An earlier ntire's half-deleted folder, and this one's debris, go at the next pruning.
    (checkpoint_root(tmp_path) / "step-00000000").mkdir()
    prune_checkpoints(tmp_path, keep_last=1, lineage="")
    assert sorted(p.name for p in checkpoint_root(tmp_path).iterdir()) == ["step-00000003"]


def shutil_usage(free: int):
    import shutil

    return shutil._ntuple_diskusage(total=10**9, used=10**9 - free, free=free)


def test_a_full_disk_that_torch_reports_without_errno_is_still_one_line(tmp_path, prepared, monkeypatch):
    from ntire.errors import WriteError

    accelerator = prepared[0]

    def full(folder):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(accelerator, "save_state", full)
    monkeypatch.setattr(train_state.shutil, "disk_usage", lambda folder: shutil_usage(free=1000))
    with pytest.raises(WriteError, match=r"cannot save a checkpoint \(No space left on device: 1000 bytes free\)"):
        save_checkpoint(accelerator, tmp_path, TrainState(step=1, batches=1))
    assert list(checkpoint_root(tmp_path).iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setattr(accelerator, "save_state", full)  # plenty of space: a bug, with its traceback
    with pytest.raises(RuntimeError):
        save_checkpoint(accelerator, tmp_path, TrainState(step=1, batches=1))


DEEPSPEED_RESUME = """
import json, os, sys, types
from pathlib import Path
import torch, deepspeed
from accelerate.utils import DistributedType
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
deepspeed.init_distributed(dist_backend="gloo")
from ntire.training import state
folder, marker = Path(sys.argv[1]), sys.argv[3]
for stage in (1, 2):
    model = torch.nn.Conv2d(3, 3, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": stage}, "bf16": {"enabled": True}}
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    x = torch.ones(1, 3, 8, 8, dtype=torch.bfloat16)
    engine.backward(engine(x).float().mean()); engine.step()
    path = folder / f"zero{stage}"
    engine.save_checkpoint(str(path), "pytorch_model")  # what Accelerate's save_state does under DeepSpeed
    (path / "rng_state_0.json").write_text(json.dumps(state.rng_state()))
    saved = {k: v.clone() for k, v in engine.module.state_dict().items()}
    engine.backward(engine(x).float().mean()); engine.step()
    accelerator = types.SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, _models=[engine],
                                        _optimizers=[], _schedulers=[], scaler=None, process_index=0)
    state._restore(accelerator, path)
    assert all(torch.equal(saved[k], v) for k, v in engine.module.state_dict().items()), stage
    torch.save(PlantsMarker(marker), path / "pytorch_model" / "mp_rank_00_model_states.pt")
    try:
        state._restore(accelerator, path)
    except Exception as e:
        print("refused:", type(e).__name__)
print("resumed ZeRO-1 and ZeRO-2 weights-only")
"""


@pytest.mark.slow
def test_a_deepspeed_checkpoint_resumes_weights_only(tmp_path):
    import socket
    import subprocess
    import sys

    pytest.importorskip("deepspeed")
    repo = Path(__file__).resolve().parents[2]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    marker = tmp_path / "marker"
    script = ("class PlantsMarker:\n    def __init__(self, m): self.m = m\n"
              "    def __reduce__(self): return (open, (self.m, 'w'))\n" + DEEPSPEED_RESUME)
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path), str(port), str(marker)], capture_output=True,
                         text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(repo)})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "resumed ZeRO-1 and ZeRO-2 weights-only" in run.stdout
    assert run.stdout.count("refused:") == 2 and not marker.exists()
