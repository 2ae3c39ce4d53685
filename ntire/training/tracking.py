"""MLflow tracking for a training job: one run, params, metrics, comparison images, the model.

Only the main process tracks; every other process (and a job with tracking off, or without
mlflow installed) gets an inactive `Tracker` whose methods do nothing. Tracking never stops
training: if the tracking server cannot be reached at the start, or a call fails later, the
tracker says so once on stderr and turns itself off.

Where runs go: `TrackingConfig.uri` if set, else $MLFLOW_TRACKING_URI, else a SQLite file
`<output_dir>/mlflow.db` (no server needed) with artifacts beside it in `mlartifacts/`. Browse it
with `mlflow ui --backend-store-uri sqlite:///<output_dir>/mlflow.db`.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ntire.config import TrackingConfig

# Without these, MLflow retries an unreachable server for minutes on every call (7 retries,
# exponential backoff, 120 s timeout). A user's own settings win.
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
_PROBE_TIMEOUT_S = 5.0
_MAX_PARAM_LENGTH = 6000  # MLflow refuses longer param values


def default_tracking_uri(output_dir: str | os.PathLike) -> str:
    """$MLFLOW_TRACKING_URI, else a SQLite database in `output_dir` (absolute: four slashes)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(output_dir).resolve() / 'mlflow.db'}"


def _sqlite_file(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :])


def _say(message: str) -> None:
    print(f"ntire train: {message}", file=sys.stderr, flush=True)


class Tracker:
    """One MLflow run, or nothing (`active` False). Construct with `start_tracking`."""

    def __init__(self, client: Any = None, run_id: str | None = None, uri: str = "",
                 say: Callable[[str], None] = _say) -> None:
        self._client = client
        self.run_id = run_id
        self.uri = uri
        self._say = say

    @property
    def active(self) -> bool:
        """Whether calls reach MLflow."""
        return self._client is not None

    def _call(self, method: str, *args: Any, **kwargs: Any) -> None:
        """`client.<method>(run_id, *args, **kwargs)`; on failure say so once and stop tracking."""
        if self._client is None:
            return
        try:
            getattr(self._client, method)(self.run_id, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - tracking must never stop training
            self._client = None
            self._say(f"MLflow tracking at {self.uri} failed ({method}: {_first_line(e)}); "
                      "training goes on without tracking")

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log flat `name -> value` params (values stringified, over-long ones truncated)."""
        if self._client is None:
            return
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self._call("log_batch", params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log `name -> value` metrics at `step`."""
        if self._client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items() if np.isfinite(v)]
        self._call("log_batch", metrics=items)

    def log_image(self, image: np.ndarray, artifact_file: str) -> None:
        """Log an (H, W, 3) uint8 image as the artifact `artifact_file` (e.g. `comparisons/a.png`)."""
        self._call("log_image", image, artifact_file=artifact_file)

    def log_artifacts(self, local_dir: str | os.PathLike, artifact_path: str) -> None:
        """Log the files of `local_dir` under `artifact_path`."""
        self._call("log_artifacts", str(local_dir), artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags."""
        if self._client is None:
            return
        from mlflow.entities import RunTag

        self._call("log_batch", tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def finish(self, status: str = "FINISHED") -> None:
        """End the run with `status` (FINISHED, FAILED or KILLED); the tracker is inactive after."""
        self._call("set_terminated", status)
        self._client = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: object, traceback: object) -> None:
        """Finish the run: FINISHED, KILLED on Ctrl-C, FAILED on any other exception."""
        self.finish("FINISHED" if kind is None else "KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED")


def start_tracking(
    config: TrackingConfig,
    *,
    run_name: str,
    output_dir: str | os.PathLike,
    params: Mapping[str, Any] | None = None,
    resume_run_id: str | None = None,
    main_process: bool = True,
    say: Callable[[str], None] = _say,
) -> Tracker:
    """Open (or, with `resume_run_id`, reopen) the MLflow run of this job and log `params`.

    Returns an inactive Tracker on other processes than the main one, when `config.enabled` is
    off, when mlflow is not installed, or when the tracking store cannot be reached (said once).
    """
    if not main_process or not config.enabled:
        return Tracker(say=say)
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        say("mlflow is not installed (pip install 'ntire[track]'); training goes on without tracking")
        return Tracker(say=say)

    uri = config.uri or default_tracking_uri(output_dir)
    if uri.startswith(("http://", "https://")):
        for key, value in _HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        problem = _probe_server(uri)
        if problem:
            say(f"MLflow tracking server {uri} is unreachable ({problem}); training goes on without tracking")
            return Tracker(say=say)
    db = _sqlite_file(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)

    try:
        import logging

        # Creating a fresh SQLite store logs every schema migration at INFO.
        for name in ("alembic", "mlflow.store.db.utils"):
            logging.getLogger(name).setLevel(logging.WARNING)
        client = MlflowClient(tracking_uri=uri)
        run_id = _reopen(client, resume_run_id)
        if run_id is None:
            experiment_id = _experiment(client, config.experiment, db)
            run_id = client.create_run(experiment_id, run_name=run_name).info.run_id
            fresh = True
        else:
            fresh = False
    except Exception as e:  # noqa: BLE001 - tracking must never stop training
        say(f"MLflow tracking at {uri} is unavailable ({_first_line(e)}); training goes on without tracking")
        return Tracker(say=say)

    tracker = Tracker(client, run_id, uri, say)
    if fresh and params:
        tracker.log_params(params)
    return tracker


def log_report(
    *,
    experiment: str,
    run_name: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    report_dir: str | os.PathLike,
    uri: str | None = None,
    say: Callable[[str], None] = _say,
) -> str | None:
    """Log a finished report (a benchmark table, a submission's scores) as one MLflow run: params,
    metrics at step 0 and the files of `report_dir` as artifacts under `report/`.

    MLflow is optional: without it (or with its store unreachable) this says so and returns None;
    otherwise the run id. The store is `uri`, else $MLFLOW_TRACKING_URI, else `runs/mlflow.db`.
    """
    try:
        import mlflow  # noqa: F401
    except ImportError:
        say("MLflow is not installed (pip install 'ntire[track]'): results not logged")
        return None
    tracker = start_tracking(
        TrackingConfig(uri=uri, experiment=experiment),
        run_name=run_name,
        output_dir="runs",
        params=params,
        say=say,
    )
    if not tracker.active:
        return None
    tracker.log_metrics(metrics, step=0)
    tracker.log_artifacts(report_dir, "report")
    tracker.finish()
    say(f"logged to MLflow run {tracker.run_id} ({run_name}) at {tracker.uri}")
    return tracker.run_id


def _reopen(client: Any, run_id: str | None) -> str | None:
    if not run_id:
        return None
    try:
        client.get_run(run_id)
    except Exception:  # noqa: BLE001 - a run deleted or in another store: start a new one
        return None
    client.update_run(run_id, status="RUNNING")
    return run_id


def _experiment(client: Any, name: str, db: Path | None) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    # Keep a SQLite store's artifacts beside its database, not in whatever the cwd is.
    location = (db.parent / "mlartifacts").as_uri() if db is not None else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # noqa: BLE001 - another process created it first
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _probe_server(uri: str) -> str | None:
    """None if an MLflow server answers at `uri`, else what went wrong (one short request)."""
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=_PROBE_TIMEOUT_S) as response:
            response.read(64)
    except urllib.error.HTTPError as e:
        # The server answered: auth and proxies may refuse /health while the API works.
        return None if e.code in (401, 403, 404) else f"HTTP {e.code} from {url}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        return str(getattr(e, "reason", e))
    return None


def _param_value(value: Any) -> str:
    text = "None" if value is None else (",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value))
    return text[:_MAX_PARAM_LENGTH]


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


__all__ = ["Tracker", "default_tracking_uri", "log_report", "start_tracking"]
