"""MLflow tracking of a training job: the run, its params, metrics and artifacts; never a blocker."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from ntire.config import TrackingConfig, build_config, merge
from ntire.training.tracking import Tracker, default_tracking_uri, start_tracking


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
