"""tracking/serve.sh: a real MLflow server on loopback, a tiny run logged to it through ntire.training.tracking."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tracking" / "serve.sh"
START_TIMEOUT_S = 120  # healthy after ~5 s on an idle machine; far slower when the cores are busy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "NTIRE_MLFLOW_"))}
    env["PYTHONUNBUFFERED"] = "1"
    # The mlflow that belongs to this interpreter, wherever its environment lives.
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    if mlflow_bin.exists():
        env["MLFLOW"] = str(mlflow_bin)
    return env


def _print_command(*args: str) -> list[str]:
    out = subprocess.run([str(SCRIPT), "--print-command", *args], env=_env(), capture_output=True, text=True,
                         timeout=30, check=True)
    return shlex.split(out.stdout)


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_defaults_bind_loopback_with_an_absolute_sqlite_store(tmp_path):
    command = _print_command("--data", str(tmp_path / "d"))
    assert command[1] == "server"
    assert _option(command, "--host") == "127.0.0.1"
    # Four slashes: an absolute path (three would be relative to wherever the server starts).
    assert _option(command, "--backend-store-uri") == f"sqlite:///{tmp_path / 'd' / 'mlflow.db'}"
    assert _option(command, "--backend-store-uri").startswith("sqlite:////")
    assert _option(command, "--artifacts-destination") == str(tmp_path / "d" / "artifacts")
    assert "--app-name" not in command

    command = _print_command("--data", str(tmp_path / "d"), "--host", "0.0.0.0", "--auth",
                             "--backend", "postgresql://u@db/mlflow", "--allowed-hosts", "mlflow.lab")
    assert _option(command, "--host") == "0.0.0.0"
    assert _option(command, "--app-name") == "basic-auth"
    assert _option(command, "--backend-store-uri") == "postgresql://u@db/mlflow"
    assert _option(command, "--allowed-hosts") == "mlflow.lab"


@pytest.mark.parametrize("args", [["--port", "http"], ["--workers", "0"], ["--bogus"], ["--port"]])
def test_bad_options_are_refused(args):
    out = subprocess.run([str(SCRIPT), *args], env=_env(), capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "tracking/serve.sh:" in out.stderr


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"server not healthy after {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    # The script execs mlflow, whose workers share its process group (its own session).
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


@pytest.mark.slow
def test_server_records_a_run_logged_through_ntire_tracking(tmp_path):
    from mlflow.tracking import MlflowClient

    from ntire.config import TrackingConfig
    from ntire.training.tracking import start_tracking

    port = _free_port()
    data = tmp_path / "server"
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    with open(log, "w") as log_file:
        proc = subprocess.Popen([str(SCRIPT), "--port", str(port), "--data", str(data), "--workers", "1"],
                                env=_env(), stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(url, proc, log)

        model_dir = tmp_path / "model"
        model_dir.mkdir()
        (model_dir / "config.yaml").write_text("model: {kind: edsr}\n")
        tracker = start_tracking(TrackingConfig(uri=url, experiment="team"), run_name="EDSR_x2_tiny",
                                 output_dir=tmp_path / "out", params={"optim.lr": 1e-4, "data.patch_size": 48})
        assert tracker.active, log.read_text()[-3000:]
        with tracker:
            tracker.log_metrics({"train/loss": 9.5}, step=1)
            tracker.log_metrics({"train/loss": 7.25, "valid/psnr_x2": 30.1}, step=2)
            tracker.log_image(np.zeros((8, 24, 3), np.uint8), "comparisons/step-00000002_x2.png")
            tracker.log_artifacts(model_dir, "model")
        assert not tracker.active  # the run was closed
        run_id = tracker.run_id

        client = MlflowClient(tracking_uri=url)
        run = client.get_run(run_id)
        assert run.info.run_name == "EDSR_x2_tiny"
        assert run.info.status == "FINISHED"
        assert run.data.params == {"optim.lr": "0.0001", "data.patch_size": "48"}
        history = client.get_metric_history(run_id, "train/loss")
        assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(1, 9.5), (2, 7.25)]
        assert client.get_experiment(run.info.experiment_id).name == "team"
        listed = {a.path for a in client.list_artifacts(run_id, "model")}
        assert listed == {"model/config.yaml"}

        # The server stored everything itself: runs in its SQLite file, artifacts in its folder.
        assert (data / "mlflow.db").is_file()
        stored = {p.relative_to(data / "artifacts").parts[-2:] for p in (data / "artifacts").rglob("*") if p.is_file()}
        assert ("model", "config.yaml") in stored
        assert ("comparisons", "step-00000002_x2.png") in stored
        assert not (tmp_path / "out").exists() or not (tmp_path / "out" / "mlflow.db").exists()
    finally:
        _stop(proc)
    assert proc.returncode is not None
    with socket.socket() as s:  # nothing listens any more
        assert s.connect_ex(("127.0.0.1", port)) != 0
