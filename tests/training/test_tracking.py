"""MLflow tracking of a training job: the run, its params, metrics and artifacts; never a blocker."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from ntire.config import TrackingConfig, build_config
from ntire.config_io import merge
from ntire.training import tracking
from ntire.training.tracking import Tracker, default_tracking_uri, log_report, provenance_tags, start_tracking

PROVENANCE = {
    "ntire.code.commit", "ntire.code.dirty", "ntire.code.path", "ntire.version.ntire", "ntire.version.python",
    "ntire.version.torch", "ntire.version.cuda", "ntire.version.cudnn", "ntire.version.accelerate",
    "ntire.version.mlflow", "ntire.host",
}
"""Tags every run has, whoever logs it."""


def check_code_tags(tags: dict[str, str]) -> None:
    commit = tags["ntire.code.commit"]
    if commit == tracking.INSTALLED:
        assert tags["ntire.code.dirty"] == "unknown" and "mlflow.source.git.commit" not in tags
    else:
        assert re.fullmatch("[0-9a-f]{40}", commit), commit
        assert tags["ntire.code.dirty"] in ("true", "false") and tags["mlflow.source.git.commit"] == commit
    assert tags["ntire.host"] == socket.gethostname()


def tiny_div2k(root: Path, size: int = 72) -> Path:
    """Two training crops and one validation crop of real photos, DIV2K layout, LR x2."""
    from skimage import data

    from ntire.data.degrade import bicubic_downscale
    from ntire.images import write_png

    for photo, split, name in ((data.coffee(), "train", "0001"), (data.rocket(), "train", "0002"),
                               (data.astronaut(), "valid", "0801")):
        hr = np.ascontiguousarray(photo[100 : 100 + size, 100 : 100 + size, :3])
        write_png(root / "DIV2K" / f"DIV2K_{split}_HR" / f"{name}.png", hr)
        write_png(root / "DIV2K" / f"DIV2K_{split}_LR_bicubic" / "X2" / f"{name}x2.png", bicubic_downscale(hr, 2))
    return root


def tiny_config(tmp_path: Path, **overrides):
    root = tiny_div2k(tmp_path / "tiny")
    base = {
        "model": {"n_blocks": 1, "n_feats": 8},
        "data": {"source": str(root), "batch_size": 2, "patch_size": 16, "num_workers": 0,
                 "patches_per_sample": 2, "shuffle_buffer": 4},
        "max_steps": 4, "save_every": 4, "eval_every": 2, "log_every": 1,
        "output_dir": str(tmp_path / "run"), "progress": False,
    }
    return build_config(None, merge(base, overrides))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_training_job_is_one_mlflow_run_with_params_metrics_and_artifacts(tmp_path):
    from mlflow.tracking import MlflowClient

    from ntire.training.fit import fit

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    result = fit(tiny_config(tmp_path, tracking={"uri": uri, "experiment": "tests"}))

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tests")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == result.tracking_run_id
    assert run.info.run_name == result.run_name == "EDSR_x2_f8b1_bicubic_tiny_4"
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.n_feats"] == "8" and params["optim.lr"] == "0.0001" and params["max_steps"] == "4"
    assert params["data.source"].endswith("tiny") and params["model.scales"] == "2"
    # As resolved (auto: what is fastest here), not "auto" or None.
    assert params["mixed_precision"] == result.plan.precision and params["log_every"] == "1"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2, 3, 4]
    wanted = {"train/lr", "train/patches_per_s", "valid/psnr_x2", "valid/ssim_x2", "valid/bicubic_psnr_x2"}
    assert wanted <= set(run.data.metrics)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "valid/psnr_x2")] == [2, 4]

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "comparisons")}
    assert artifacts == {"comparisons/step-00000002_x2.png", "comparisons/step-00000004_x2.png"}
    model_files = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/model.safetensors", "model/config.yaml"} <= model_files
    # Artifacts live beside the SQLite file, not in the working directory.
    assert (tmp_path / "store" / "mlartifacts").is_dir()

    # A resumed job continues the same run.
    fit(tiny_config(tmp_path, max_steps=6, resume="auto", tracking={"uri": uri, "experiment": "tests"}))
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3, 4, 5, 6]


def test_an_unreachable_server_is_reported_once_and_training_goes_on(tmp_path, capsys):
    from ntire.training.fit import fit

    uri = f"http://127.0.0.1:{closed_port()}"
    result = fit(tiny_config(tmp_path, tracking={"uri": uri}))
    err = capsys.readouterr().err
    assert result.step == 4 and (result.model_dir / "model.safetensors").is_file()
    assert err.count("unreachable") == 1 and uri in err
    assert result.tracking_run_id is None


def test_mlflow_tracking_uri_from_the_environment_wins(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert default_tracking_uri(tmp_path).startswith("sqlite:////")  # absolute: four slashes
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert default_tracking_uri(tmp_path) == "http://tracking.example:5000"


def test_without_mlflow_tracking_is_off_with_a_note(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    said: list[str] = []
    tracker = start_tracking(TrackingConfig(), run_name="r", output_dir=tmp_path, say=said.append)
    assert not tracker.active and len(said) == 1 and "not installed" in said[0]
    tracker.log_params({"a": 1})  # all no-ops
    tracker.log_metrics({"loss": 1.0}, step=1)
    tracker.finish()


def test_only_the_main_process_tracks(tmp_path):
    said: list[str] = []
    tracker = start_tracking(TrackingConfig(uri="http://127.0.0.1:1"), run_name="r", output_dir=tmp_path,
                             main_process=False, say=said.append)
    assert not tracker.active and said == []


class FailingClient:
    calls = 0

    def log_batch(self, *args, **kwargs):
        FailingClient.calls += 1
        raise ConnectionError("server went away\nwith a long traceback")

    set_terminated = log_image = log_artifacts = log_batch


def test_a_failure_mid_run_is_said_once_then_tracking_stops():
    pytest.importorskip("mlflow")
    said: list[str] = []
    tracker = Tracker(FailingClient(), "run-id", "http://example:5000", say=said.append)
    for step in range(3):
        tracker.log_metrics({"loss": 1.0}, step)
    tracker.log_image(np.zeros((4, 4, 3), np.uint8), "a.png")
    tracker.finish()
    assert FailingClient.calls == 1 and not tracker.active
    assert len(said) == 1 and "server went away" in said[0] and "traceback" not in said[0]


def test_a_training_run_says_where_it_came_from_and_where_it_logs(tmp_path, capsys):
    """Provenance tags, resolved params, a dense loss curve by default, and the tracking line."""
    import torch
    from mlflow.tracking import MlflowClient

    from ntire.training.fit import fit
    from ntire.training.inputs import shard_cache_dir

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    # No log_every: the default cadence. fp32 asked for: precision "no" on this CPU.
    config = tiny_config(tmp_path, max_steps=60, eval_every=0, save_every=60, log_every=None,
                         mixed_precision="no", tracking={"uri": uri, "experiment": "tests"})
    assert config.log_every is None
    result = fit(config)
    out = capsys.readouterr().out
    assert f"MLflow run {result.run_name} (new, id {result.tracking_run_id}) at {uri}" in out
    assert f"mlflow ui --backend-store-uri {uri}" in out

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(result.tracking_run_id)
    tags = run.data.tags
    missing = (PROVENANCE | {"ntire.world_size", "ntire.device", "ntire.precision", "ntire.data.source",
                             "ntire.data.shards", "ntire.data.manifest_sha256", "ntire.data.files_sha256",
                             "ntire.data.files"}) - set(tags)
    assert not missing, missing
    check_code_tags(tags)
    assert tags["ntire.version.torch"] == torch.__version__
    assert tags["ntire.version.cuda"] == (torch.version.cuda or "none")
    assert tags["ntire.version.ntire"] and tags["ntire.version.accelerate"] not in ("", "none")
    assert "ntire.version.deepspeed" not in tags  # not used
    assert tags["ntire.world_size"] == "1" and tags["ntire.device"] == "cpu" and tags["ntire.precision"] == "no"
    cache = shard_cache_dir(config)
    assert tags["ntire.data.source"] == str((tmp_path / "tiny").resolve())
    assert tags["ntire.data.shards"] == str(cache.resolve())
    assert tags["ntire.data.manifest_sha256"] == hashlib.sha256((cache / "manifest.json").read_bytes()).hexdigest()
    assert tags["ntire.data.files"] == "6"  # 3 HR + 3 LR images
    assert run.data.params["mixed_precision"] == "no" and run.data.params["log_every"] == "1"

    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps == list(range(1, 61))  # a 60-step run: every step


def test_the_default_log_cadence_draws_a_curve():
    from ntire.training.fit import log_interval

    def points(max_steps: int) -> int:
        every = log_interval(build_config(None, {"max_steps": max_steps, "data": {"source": "x"}}))
        assert 1 <= every <= 25
        return len(set(range(every, max_steps + 1, every)) | {max_steps})

    for max_steps in (1, 7, 49, 50, 60, 99, 100, 101, 800, 1000, 1249, 5000, 300_000):
        assert points(max_steps) >= min(max_steps, 50), max_steps
    assert log_interval(build_config(None, {"max_steps": 1_000_000, "data": {"source": "x"}})) == 25
    assert log_interval(build_config(None, {"max_steps": 1000, "log_every": 7, "data": {"source": "x"}})) == 7


def test_a_report_run_carries_the_provenance_tags(tmp_path):
    from mlflow.tracking import MlflowClient

    report = tmp_path / "report"
    report.mkdir()
    (report / "table.txt").write_text("a table\n")
    data = tiny_div2k(tmp_path / "data")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    said: list[str] = []
    run_id = log_report(experiment="reports", run_name="r", params={"a": 1}, metrics={"psnr": 30.0},
                        report_dir=report, uri=uri, data=data, tags={"ntire.device": "cpu"}, say=said.append)
    assert run_id is not None and any("logged to MLflow" in s for s in said)
    tags = MlflowClient(uri).get_run(run_id).data.tags
    assert not PROVENANCE - set(tags), PROVENANCE - set(tags)
    check_code_tags(tags)
    assert tags["ntire.device"] == "cpu" and tags["ntire.data.source"] == str(data.resolve())
    assert tags["ntire.data.files"] == "6" and "ntire.data.manifest_sha256" not in tags
    assert tags["ntire.data.files_sha256"] == tracking.file_list_hash(data)[0]


def test_data_identity_of_shards_datasets_and_urls(tmp_path):
    data = tiny_div2k(tmp_path / "data")
    digest, count = tracking.file_list_hash(data)
    assert count == 6 and tracking.file_list_hash(data) == (digest, count)
    (data / "DIV2K" / "DIV2K_train_HR" / "0001.png").write_bytes(b"changed size")
    assert tracking.file_list_hash(data)[0] != digest  # a file's size is part of the list

    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "manifest.json").write_text('{"format": "x"}')
    tags = tracking.data_tags(shards)
    assert tags["ntire.data.manifest_sha256"] == hashlib.sha256(b'{"format": "x"}').hexdigest()
    assert "ntire.data.files_sha256" not in tags

    urls = "pipe:aws s3 cp s3://bucket/shard-{000000..000009}.tar -"
    assert tracking.data_tags(urls) == {"ntire.data.source": urls}
    assert tracking.data_tags(urls, prefix="ntire.valid_data") == {"ntire.valid_data.source": urls}


def test_provenance_without_git_or_a_checkout_says_installed(monkeypatch):
    monkeypatch.setenv("PATH", "")  # no git at all: never an error
    tags = provenance_tags()
    assert tags["ntire.code.commit"] == tracking.INSTALLED and tags["ntire.code.dirty"] == "unknown"
    assert "mlflow.source.git.commit" not in tags
    monkeypatch.setattr(tracking, "_git", lambda folder, *args: None)  # not a checkout
    assert provenance_tags()["ntire.code.commit"] == tracking.INSTALLED


def test_deepspeed_version_only_when_used():
    assert "ntire.version.deepspeed" not in provenance_tags()
    tags = provenance_tags(deepspeed=True, world_size=2, device="cpu", precision="bf16")
    assert tags["ntire.version.deepspeed"]  # its version, or "none" where it is not installed
    assert "deepspeed" not in sys.modules or tags["ntire.version.deepspeed"] != "none"
    assert tags["ntire.world_size"] == "2" and tags["ntire.precision"] == "bf16"


def test_every_shipped_config_draws_at_least_50_points():
    # The demo once set log_every 25 over 800 steps: 32 points, not the README's 50.
    from ntire.config import build_config as build
    from ntire.training.fit import log_interval

    configs = sorted((Path(tracking.__file__).parents[1] / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        config = build(str(path), {"data": {"source": "x"}})
        every = log_interval(config)
        assert len(set(range(every, config.max_steps + 1, every)) | {config.max_steps}) >= 50, path.name


def test_a_resumed_run_does_not_log_the_redone_steps_twice(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    config = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    with start_tracking(config, run_name="r", output_dir=tmp_path) as first:
        for step in range(1, 9):  # killed after step 8; its checkpoint was at step 4
            first.log_metrics({"train/loss": float(step)}, step)
        first.log_metrics({"psnr_x2": 30.0}, 6)
    with start_tracking(config, run_name="r", output_dir=tmp_path, resume_run_id=first.run_id) as second:
        assert second.resumed
        for step in range(5, 13):
            second.log_metrics({"train/loss": float(step)}, step)
        second.log_metrics({"psnr_x2": 30.0}, 6)
        second.log_metrics({"psnr_x2": 31.0}, 12)
    client = MlflowClient(config.uri)
    assert sorted(m.step for m in client.get_metric_history(first.run_id, "train/loss")) == list(range(1, 13))
    assert sorted(m.step for m in client.get_metric_history(first.run_id, "psnr_x2")) == [6, 12]


def test_resuming_trims_the_metrics_log_to_the_checkpoint(tmp_path):
    log = tmp_path / "metrics.jsonl"
    records = [{"step": s, "train/loss": 1.0 / s} for s in range(1, 9)] + [{"step": 6, "psnr_x2": 30.0}]
    log.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 9, "train/lo')  # killed mid-line
    tracking.trim_metrics_log(log, 4)
    assert [json.loads(line) for line in log.read_text().splitlines()] == records[:4]
    tracking.trim_metrics_log(tmp_path / "none.jsonl", 4)  # no log yet: nothing to do
    assert not (tmp_path / "none.jsonl").exists()


def test_a_full_disk_while_logging_metrics_is_one_line_naming_the_log(tmp_path, monkeypatch):
    import errno
    import os

    from ntire.errors import WriteError

    class Full:
        def __init__(self, *args):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *args):
            return False

        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a real write: no file name

    log = tmp_path / "metrics.jsonl"
    tracking.append_metrics_log(log, {"step": 1, "train/loss": 0.5})
    monkeypatch.setattr(tracking, "open", Full, raising=False)
    with pytest.raises(WriteError) as failed:
        tracking.append_metrics_log(log, {"step": 2, "train/loss": 0.4})
    assert str(failed.value) == f"{log}: cannot write (No space left on device)"
