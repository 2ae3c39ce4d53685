"""ntire.training.distributed and the launch configs: real multi-process runs of `ntire/train.py` on the CPU.

The launched runs (2 processes; 2 "machines" on 127.0.0.1; DeepSpeed ZeRO-2 over 2 processes)
train a 4.5k-parameter EDSR for 8 updates on tiny shards. Every wrong launch fails silently by
training fewer or independent processes, so each run is judged by the files its ranks write
(`ranks/rank-<i>.json`: rank, world size, weights hash): two ranks, world size 2, one hash.

A known DeepSpeed/gloo teardown race sometimes aborts a process AFTER it finished ("terminate
called without an active exception", SIGABRT; 1 run in 18 after the barrier + destroy in
ntire.training.distributed.finish). A run with a non-zero exit is accepted only when that message is in
its log AND every output of a finished run is there (all rank records at the last step, the
exported model, the last metrics line): the abort then happened after all work was done.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ntire.config import build_config
from ntire.errors import ConfigError
from ntire.training.distributed import (
    accelerator_kwargs,
    check_launch,
    check_world_size,
    finish,
    make_accelerator,
    read_rank_records,
    weights_digest,
)

REPO = Path(__file__).resolve().parents[2]
ACCELERATE_DIR = REPO / "cluster" / "accelerate"
DEEPSPEED_DIR = REPO / "cluster" / "deepspeed"
TRAIN_SCRIPT = REPO / "ntire" / "train.py"

STEPS = 8
RUN_TIMEOUT_S = 240  # one launch; generous for a loaded 2-core machine (typically 25-45 s)
TEARDOWN_ABORT = "terminate called without an active exception"

# Launch settings inherited from whoever runs the tests would change what the launches do.
_LAUNCH_ENV = ("ACCELERATE_", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
               "MASTER_PORT", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_", "TORCHELASTIC_", "PMI_",
               "OMPI_COMM_WORLD_", "MV2_COMM_WORLD_", "MLFLOW_TRACKING_URI")


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers


def _accelerate() -> str:
    exe = Path(sys.executable).with_name("accelerate")
    return str(exe) if exe.exists() else shutil.which("accelerate") or "accelerate"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LAUNCH_ENV)}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    return env


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """A few small shards of two photo crops (x2 only): 16 px LR patches, many samples."""
    from PIL import Image
    from skimage import data

    from ntire.data.layout import div2k_pairs
    from ntire.data.shards import write_shards

    root = tmp_path_factory.mktemp("tiny-div2k")
    hr_dir = root / "DIV2K" / "DIV2K_train_HR"
    lr_dir = root / "DIV2K" / "DIV2K_train_LR_bicubic" / "X2"
    hr_dir.mkdir(parents=True)
    lr_dir.mkdir(parents=True)
    for name, photo in (("0001", data.astronaut()[100:292, 100:292]), ("0002", data.coffee()[50:242, 200:392])):
        hr = Image.fromarray(np.ascontiguousarray(photo))
        hr.save(hr_dir / f"{name}.png")
        hr.resize((hr.width // 2, hr.height // 2), Image.BICUBIC).save(lr_dir / f"{name}x2.png")
    pairs = div2k_pairs(root, split="train", track="bicubic", scales=(2,))
    out = tmp_path_factory.mktemp("tiny-shards")
    write_shards(pairs, out, track="bicubic", scales=(2,), subimage=48, shard_max_bytes=40_000, progress=False)
    assert len(list(out.glob("shard-*.tar"))) >= 4  # at least one per rank for every run here
    return out


def _train_args(shards: Path, out: Path) -> list[str]:
    return [
        str(TRAIN_SCRIPT), "--model", "edsr-baseline", "--scale", "2",
        "--set", "model.n_blocks=1", "--set", "model.n_feats=8",
        "--data", str(shards), "--output-dir", str(out),
        "--patch-size", "16", "--batch-size", "4", "--max-steps", str(STEPS), "--save-every", str(STEPS),
        "--num-workers", "0", "--lr", "1e-3", "--seed", "0", "--set", "log_every=1", "--mixed-precision", "no",
        "--no-tracking", "--no-progress",
    ]


def _launch(commands: list[list[str]], out: Path, timeout: float = RUN_TIMEOUT_S) -> list[tuple[int, str]]:
    """Run launcher commands side by side (each in its own process group) and return their exit
    codes and logs. On a timeout every group is killed and the test fails with the logs."""
    out.mkdir(parents=True, exist_ok=True)
    procs = []
    for i, cmd in enumerate(commands):
        log = open(out.parent / f"{out.name}-launch{i}.log", "w+")
        procs.append((subprocess.Popen(cmd, cwd=REPO, env=_clean_env(), stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True), log))
    deadline = time.monotonic() + timeout
    try:
        for proc, _ in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _kill_all(procs)
        logs = "\n".join(_read(log)[-3000:] for _, log in procs)
        pytest.fail(f"launch did not finish within {timeout:.0f} s:\n{logs}")
    finally:
        _kill_all(procs)  # leftovers of a launcher whose children outlived it
    return [(proc.returncode, _read(log)) for proc, log in procs]


def _kill_all(procs) -> None:
    for proc, _ in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this test created for the launcher
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()


def _read(log) -> str:
    log.flush()
    log.seek(0)
    text = log.read()
    log.close()
    return text


def _losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


def _check_run(results: list[tuple[int, str]], out: Path, *, world: int, distributed_type: str) -> list[dict]:
    """Assert the launch trained `world` ranks to the same weights with a falling loss."""
    records = read_rank_records(out)
    complete = (
        len(records) == world
        and all(r["step"] == STEPS for r in records)
        and (out / "model" / "model.safetensors").is_file()
        and (out / "metrics.jsonl").is_file()
        and len(_losses(out)) == STEPS
    )
    for rc, log in results:
        if rc != 0:
            # Tolerated only as the known abort at exit after a complete run (module docstring).
            assert complete and TEARDOWN_ABORT in log, f"launch failed (exit {rc}):\n{log[-4000:]}"
    assert complete, "run incomplete:\n" + "\n".join(log[-3000:] for _, log in results)

    assert [r["rank"] for r in records] == list(range(world))
    assert {r["world_size"] for r in records} == {world}, records
    assert {r["distributed_type"] for r in records} == {distributed_type}, records
    assert {r["backend"] for r in records} == {"gloo"}, records
    assert len({r["weights_sha256"] for r in records}) == 1, "ranks ended with different weights"

    # The exported model is the weights every rank holds.
    from ntire.models.checkpoint import load_model

    exported, _ = load_model(out / "model")
    assert weights_digest(exported) == records[0]["weights_sha256"]

    losses = _losses(out)
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3]), losses
    return records


def _exported_state(out: Path) -> dict[str, torch.Tensor]:
    from ntire.models.checkpoint import load_model

    model, _ = load_model(out / "model")
    return model.state_dict()


@pytest.fixture(scope="module")
def ddp_run(shards, tmp_path_factory) -> Path:
    """2 processes on this machine via cluster/accelerate/cpu_2proc.yaml (DDP over gloo)."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    cmd = [_accelerate(), "launch", "--config_file", str(ACCELERATE_DIR / "cpu_2proc.yaml"),
           "--main_process_port", str(_free_port()), *_train_args(shards, out)]
    results = _launch([cmd], out)
    _check_run(results, out, world=2, distributed_type="MULTI_CPU")
    return out


# ---------------------------------------------------------------------------------------------
# Launch configs


def test_every_accelerate_config_loads():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    files = sorted(ACCELERATE_DIR.glob("*.yaml"))
    assert {f.stem for f in files} >= {"single_gpu", "multi_gpu", "multi_node", "cpu_2proc",
                                        "deepspeed_zero1", "deepspeed_zero2"}
    for path in files:
        config = load_config_from_file(str(path))
        assert config.num_processes >= 1, path
        assert config.num_processes % config.num_machines == 0, path
        if config.distributed_type == DistributedType.DEEPSPEED:
            ds_file = REPO / config.deepspeed_config["deepspeed_config_file"]
            assert ds_file.is_file(), f"{path}: {ds_file} missing"
            assert ds_file.parent == DEEPSPEED_DIR
        if path.stem == "cpu_2proc":
            # MULTI_CPU would make the launcher start one process (see the file's comment).
            assert config.distributed_type == DistributedType.MULTI_GPU and config.num_processes == 2
        if path.stem == "multi_node":
            assert config.num_machines > 1 and config.main_process_ip


def test_every_deepspeed_config_is_valid_once_filled():
    from deepspeed.runtime.config import DeepSpeedConfig

    files = sorted(DEEPSPEED_DIR.glob("*.json"))
    assert {f.stem for f in files} >= {"zero1", "zero2", "zero3"}
    for path in files:
        raw = json.loads(path.read_text())
        assert "optimizer" not in raw, f"{path}: ntire passes its own Adam"
        assert int(path.stem[-1]) == raw["zero_optimization"]["stage"]
        # What make_accelerator and Accelerate fill in for one process, batch 4, fp32.
        filled = dict(raw, train_batch_size=4, train_micro_batch_size_per_gpu=4,
                      gradient_accumulation_steps=1, gradient_clipping=0.0,
                      bf16={"enabled": False}, fp16={"enabled": False})
        config = DeepSpeedConfig(filled)  # DeepSpeed's own validation (unknown keys are errors)
        assert config.zero_optimization_stage == raw["zero_optimization"]["stage"]


# ---------------------------------------------------------------------------------------------
# Launch checks, in this process


@pytest.fixture
def launch_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith(_LAUNCH_ENV):
            monkeypatch.delenv(key)
    return monkeypatch


def test_refuses_cpu_flag_launch_of_several_processes(launch_env):
    # What `accelerate launch --cpu --num_processes 2` gives its one process.
    launch_env.setenv("ACCELERATE_USE_CPU", "True")
    launch_env.setenv("MASTER_ADDR", "127.0.0.1")
    launch_env.setenv("MASTER_PORT", "29500")
    check_launch()  # not from `accelerate launch`: a MASTER_ADDR left in the shell proves nothing
    launch_env.setenv("ACCELERATE_MIXED_PRECISION", "no")
    with pytest.raises(ConfigError, match="only one process"):
        check_launch()
    launch_env.setenv("WORLD_SIZE", "2")  # the working launch sets it
    check_launch()


def test_refuses_deepspeed_with_use_cpu(launch_env):
    launch_env.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    check_launch()
    launch_env.setenv("ACCELERATE_USE_CPU", "1")
    with pytest.raises(ConfigError, match="ACCELERATE_USE_CPU"):
        check_launch()


def test_several_processes_without_gpu_ask_for_the_cpu(launch_env):
    from accelerate.utils import InitProcessGroupKwargs

    config = build_config(overrides={"data": {"source": "x"}})
    assert "cpu" not in accelerator_kwargs(config)  # one process: Accelerate picks the device
    launch_env.setenv("WORLD_SIZE", "2")
    launch_env.setattr("ntire.training.distributed.has_gpu", lambda: False)
    assert accelerator_kwargs(config)["cpu"] is True
    launch_env.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    kwargs = accelerator_kwargs(config)
    assert "cpu" not in kwargs  # cpu=True would drop DeepSpeed
    backends = [h.backend for h in kwargs["kwargs_handlers"] if isinstance(h, InitProcessGroupKwargs)]
    assert backends == ["gloo"]
    launch_env.setattr("ntire.training.distributed.has_gpu", lambda: True)
    assert not [h for h in accelerator_kwargs(config)["kwargs_handlers"] if isinstance(h, InitProcessGroupKwargs)]


def test_a_multi_scale_network_lets_ddp_skip_the_other_branches(launch_env):
    from accelerate.utils import DistributedDataParallelKwargs

    def unused(model: str) -> list[bool]:
        kwargs = accelerator_kwargs(build_config(model=model, overrides={"data": {"source": "x"}}))
        return [h.find_unused_parameters for h in kwargs["kwargs_handlers"]
                if isinstance(h, DistributedDataParallelKwargs)]

    assert unused("mdsr-baseline") == [True]  # MDSR's NETWORK says multi_scale
    assert unused("edsr-baseline") == []


def test_refuses_fewer_processes_than_launched(launch_env):
    fake = SimpleNamespace(num_processes=1, distributed_type="NO")
    check_world_size(fake)
    launch_env.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="started 2 processes"):
        check_world_size(fake)
    check_world_size(SimpleNamespace(num_processes=2, distributed_type="MULTI_CPU"))


def _fake_deepspeed_accelerator(stage: int, **extra) -> SimpleNamespace:
    # What Accelerate hands over after reading cluster/deepspeed/zero<stage>.json with bf16 on.
    ds = json.loads((DEEPSPEED_DIR / f"zero{min(stage, 3)}.json").read_text())
    ds["zero_optimization"]["stage"] = stage
    ds.update(bf16={"enabled": True}, fp16={"enabled": False}, **extra)
    plugin = SimpleNamespace(deepspeed_config=ds)
    return SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin), num_processes=2, mixed_precision="bf16")


def test_deepspeed_auto_entries_come_from_the_training_config():
    from ntire.training.distributed import _fill_deepspeed_config, mixed_precision

    config = build_config(overrides={"data": {"source": "x", "batch_size": 4}, "optim": {"grad_accum": 3}})
    fake = _fake_deepspeed_accelerator(2)
    _fill_deepspeed_config(fake, config)
    ds = fake.state.deepspeed_plugin.deepspeed_config
    assert ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 3
    assert ds["train_batch_size"] == 4 * 3 * 2
    assert ds["gradient_clipping"] == 0.0  # no clipping unless optim.grad_clip (Accelerate: 1.0)
    # bf16 as autocast over fp32 weights: DeepSpeed's bf16 mode would cast the model itself.
    assert ds["bf16"]["enabled"] is False and ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    assert mixed_precision(fake) == "bf16"

    clipped = _fake_deepspeed_accelerator(1)
    _fill_deepspeed_config(clipped, build_config(overrides={"data": {"source": "x"}, "optim": {"grad_clip": 0.5}}))
    assert clipped.state.deepspeed_plugin.deepspeed_config["gradient_clipping"] == 0.5


def test_deepspeed_settings_ntire_cannot_honour_are_refused():
    from ntire.training.distributed import _fill_deepspeed_config

    config = build_config(overrides={"data": {"source": "x"}})
    with pytest.raises(ConfigError, match="stage 3"):
        _fill_deepspeed_config(_fake_deepspeed_accelerator(3), config)
    with pytest.raises(ConfigError, match="optimizer"):
        _fill_deepspeed_config(_fake_deepspeed_accelerator(2, optimizer={"type": "Adam"}), config)
    fp16 = _fake_deepspeed_accelerator(2)
    fp16.mixed_precision = "fp16"
    with pytest.raises(ConfigError, match="fp16"):
        _fill_deepspeed_config(fp16, config)


def test_finish_lets_another_accelerator_follow(launch_env):
    config = build_config(overrides={"data": {"source": "x"}, "mixed_precision": "no"})
    first = make_accelerator(config)
    assert first.num_processes == 1 and first.mixed_precision == "no"
    finish(first)
    second = make_accelerator(build_config(overrides={"data": {"source": "x"}, "mixed_precision": "bf16"}))
    assert second.mixed_precision == "bf16"
    finish(second)


def test_weights_digest_sees_every_tensor():
    from ntire.config import ModelConfig
    from ntire.models.build import build_model

    config = dataclasses.replace(ModelConfig.preset("edsr-baseline", 2), n_blocks=1, n_feats=8)
    torch.manual_seed(0)
    a = build_model(config)
    torch.manual_seed(0)
    b = build_model(config)
    assert weights_digest(a) == weights_digest(b)
    # Memory layout is not content (the 1x1 mean-shift convs keep odd strides in channels-last).
    assert weights_digest(b.to(memory_format=torch.channels_last)) == weights_digest(a)
    with torch.no_grad():
        first = next(iter(b.parameters()))
        first[(0,) * first.dim()] += 1e-7
    assert weights_digest(a) != weights_digest(b)


def test_a_run_without_deepspeed_never_imports_it():
    """accelerate's unwrap_model imports DeepSpeed whenever it is installed (seconds, and its
    "Setting accelerator to CPU" warning on every CPU run); weights_digest must not."""
    pytest.importorskip("deepspeed")
    code = (
        "import sys, torch\n"
        "from ntire.config import build_config\n"
        "from ntire.models.build import build_model\n"
        "from ntire.training.distributed import finish, make_accelerator, weights_digest\n"
        "config = build_config(overrides={'data': {'source': 'x'}, 'mixed_precision': 'no'})\n"
        "accelerator = make_accelerator(config)\n"
        "model = accelerator.prepare(build_model(config.model))\n"
        "weights_digest(model, accelerator)\n"
        "finish(accelerator)\n"
        "print('deepspeed' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_clean_env(), capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False" and "Setting accelerator" not in run.stderr


# ---------------------------------------------------------------------------------------------
# Real launches


@pytest.mark.slow
def test_two_processes_on_cpu(ddp_run):
    records = read_rank_records(ddp_run)
    assert {r["num_machines"] for r in records} == {1}


@pytest.mark.slow
def test_two_machines_on_loopback(shards, ddp_run, tmp_path):
    out = tmp_path / "run"  # one output folder, as machines sharing a filesystem would have
    port = _free_port()
    commands = [
        [_accelerate(), "launch", "--multi_gpu", "--num_machines", "2", "--num_processes", "2",
         "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
         *_train_args(shards, out)]
        for rank in (0, 1)
    ]
    records = _check_run(_launch(commands, out), out, world=2, distributed_type="MULTI_CPU")
    assert [r["machine_rank"] for r in records] == [0, 1]
    assert {r["num_machines"] for r in records} == {2}
    # The same algorithm on the same data as the one-machine run: the same weights, bit for bit.
    assert records[0]["weights_sha256"] == read_rank_records(ddp_run)[0]["weights_sha256"]


@pytest.mark.slow
def test_deepspeed_zero2_two_processes(shards, ddp_run, tmp_path):
    pytest.importorskip("deepspeed")
    pytest.importorskip("transformers")
    out = tmp_path / "run"
    cmd = [_accelerate(), "launch", "--config_file", str(ACCELERATE_DIR / "deepspeed_zero2.yaml"),
           "--num_processes", "2", "--main_process_port", str(_free_port()), *_train_args(shards, out)]
    records = _check_run(_launch([cmd], out), out, world=2, distributed_type="DEEPSPEED")
    assert {r["deepspeed_zero_stage"] for r in records} == {2}
    # ZeRO-2 partitions optimizer state and gradients, not the update: the same Adam steps as DDP.
    zero, ddp = _exported_state(out), _exported_state(ddp_run)
    for name in ddp:
        torch.testing.assert_close(zero[name], ddp[name], rtol=1e-5, atol=1e-6, msg=name)
