"""MLflow tracking for a training job: one run, params, metrics, comparison images, the model.

Only the main process tracks; every other process (and a job with tracking off, or without
mlflow installed) gets an inactive `Tracker` whose methods do nothing. Tracking never stops
training: if the tracking server cannot be reached at the start, or a call fails later, the
tracker says so once on stderr and turns itself off.

Where runs go: `TrackingConfig.uri` if set, else $MLFLOW_TRACKING_URI, else a SQLite file
`<output_dir>/mlflow.db` (no server needed) with artifacts beside it in `mlartifacts/`. Browse it
with `mlflow ui --backend-store-uri sqlite:///<output_dir>/mlflow.db`.

Where a run came from: `provenance_tags` gives the tags every ntire run carries (training jobs,
sweeps and their trials, submissions, benchmark reports): the code (git commit and dirty flag
when ntire runs from a checkout, else `installed` and its version), the versions of ntire,
Python, torch, CUDA, cuDNN, Accelerate, MLflow (DeepSpeed when used), the host, and where the
caller knows them the world size, device, precision and the data's identity (`data_tags`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ntire.config import TrackingConfig
from ntire.errors import one_line

# Without these, MLflow retries an unreachable server for minutes on every call (7 retries,
# exponential backoff, 120 s timeout). A user's own settings win.
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
_PROBE_TIMEOUT_S = 5.0
_MAX_PARAM_LENGTH = 6000  # MLflow refuses longer param values
_MAX_TAG_LENGTH = 5000  # nor longer tag values (older servers)
_GIT_TIMEOUT_S = 3.0
_COMMIT = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")  # SHA-1, or SHA-256 repositories
INSTALLED = "installed"
"""`ntire.code.commit` of a run whose ntire is not a git checkout (its version is `ntire.version.ntire`)."""


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
                 say: Callable[[str], None] = _say, *, run_name: str = "", resumed: bool = False,
                 logged_through: Mapping[str, int] | None = None) -> None:
        self._client = client
        self.run_id = run_id
        self.uri = uri
        self._say = say
        self.run_name = run_name
        self.resumed = resumed
        self.logged_through = dict(logged_through or {})
        """Per metric, the last step a reopened run had logged: a resumed job redoes the steps
        after its checkpoint, and they are not logged twice."""

    @property
    def active(self) -> bool:
        """Whether calls reach MLflow."""
        return self._client is not None

    def where(self) -> str:
        """One line saying where this run is logged (and how to browse a SQLite store)."""
        if not self.active:
            return "not tracked in MLflow"
        line = (f"MLflow run {self.run_name} ({'continued' if self.resumed else 'new'}, id {self.run_id}) "
                f"at {self.uri}")
        if _sqlite_file(self.uri) is not None:
            line += f"; browse it: mlflow ui --backend-store-uri {self.uri}"
        return line

    def _call(self, method: str, *args: Any, **kwargs: Any) -> None:
        """`client.<method>(run_id, *args, **kwargs)`; on failure say so once and stop tracking."""
        if self._client is None:
            return
        try:
            getattr(self._client, method)(self.run_id, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - tracking must never stop training
            self._client = None
            self._say(f"MLflow tracking at {self.uri} failed ({method}: {one_line(e, 200, first_line=True)}); "
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
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()
                 if np.isfinite(v) and step > self.logged_through.get(k, -1)]
        if items:
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

        items = [RunTag(k, str(v)[:_MAX_TAG_LENGTH]) for k, v in tags.items()]
        for i in range(0, len(items), 100):
            self._call("log_batch", tags=items[i : i + 100])

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
    tags: Mapping[str, Any] | None = None,
    resume_run_id: str | None = None,
    main_process: bool = True,
    say: Callable[[str], None] = _say,
) -> Tracker:
    """Open (or, with `resume_run_id`, reopen) the MLflow run of this job, log `params` (a new
    run only) and set `tags` (a reopened run's are updated: they describe its latest start).

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
        problem = one_line(e, 200, first_line=True)
        say(f"MLflow tracking at {uri} is unavailable ({problem}); training goes on without tracking")
        return Tracker(say=say)

    logged = {} if fresh else _last_logged_steps(client, run_id)
    tracker = Tracker(client, run_id, uri, say, run_name=run_name, resumed=not fresh, logged_through=logged)
    if fresh and params:
        tracker.log_params(params)
    if tags:
        tracker.set_tags(tags)
    return tracker


def log_report(
    *,
    experiment: str,
    run_name: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    report_dir: str | os.PathLike,
    uri: str | None = None,
    data: str | os.PathLike | None = None,
    tags: Mapping[str, Any] | None = None,
    say: Callable[[str], None] = _say,
) -> str | None:
    """Log a finished report (a benchmark table, a submission's scores) as one MLflow run: params,
    metrics at step 0, the files of `report_dir` as artifacts under `report/`, and as tags
    `provenance_tags(data=data)` (code, versions, host, the data's identity) updated by `tags`.

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
        tags={**provenance_tags(data=data), **(tags or {})},
        say=say,
    )
    if not tracker.active:
        return None
    tracker.log_metrics(metrics, step=0)
    tracker.log_artifacts(report_dir, "report")
    tracker.finish()
    say(f"logged to MLflow run {tracker.run_id} ({run_name}) at {tracker.uri}")
    return tracker.run_id


def provenance_tags(
    *,
    data: str | os.PathLike | None = None,
    shard_dir: str | os.PathLike | None = None,
    valid_data: str | os.PathLike | None = None,
    world_size: int | None = None,
    device: Any = None,
    precision: str | None = None,
    deepspeed: bool = False,
) -> dict[str, str]:
    """The tags that say where a run came from; never fails (what cannot be found says so).

    Always: `ntire.code.commit` (the git HEAD when ntire's package folder is a tracked part of a
    git checkout, else `installed`), `ntire.code.dirty` (`true`/`false`; `unknown` when
    installed), `ntire.code.path`, `ntire.version.{ntire,python,torch,cuda,cudnn,accelerate,mlflow}`
    (`none` for what is absent, e.g. CUDA on a CPU build of torch) and `ntire.host`; with
    `deepspeed`, `ntire.version.deepspeed`. Given: `ntire.world_size`, `ntire.device` (plus
    `ntire.gpu`, its name, on CUDA), `ntire.precision`, and `data_tags` of `data` (with the shard
    cache `shard_dir`) and of `valid_data` (as `ntire.valid_data.*`). A checkout's commit is
    also MLflow's own `mlflow.source.git.commit`, which its UI shows.
    """
    tags = code_tags()
    tags.update(version_tags(deepspeed=deepspeed))
    tags["ntire.host"] = socket.gethostname()
    if world_size is not None:
        tags["ntire.world_size"] = str(world_size)
    if device is not None:
        tags["ntire.device"] = str(device)
        gpu = _gpu_name(device)
        if gpu:
            tags["ntire.gpu"] = gpu
    if precision is not None:
        tags["ntire.precision"] = str(precision)
    if data is not None:
        tags.update(data_tags(data, shard_dir=shard_dir))
    if valid_data is not None and str(valid_data) != str(data):
        tags.update(data_tags(valid_data, prefix="ntire.valid_data"))
    return tags


def code_tags() -> dict[str, str]:
    """`ntire.code.*`: the git commit and dirty flag of the checkout ntire runs from (git is run
    in the package's folder, offline, with a short timeout), or `installed`."""
    package = Path(__file__).resolve().parents[1]
    tags = {"ntire.code.path": str(package)}
    # Only a package folder git tracks is a checkout (a virtualenv inside a checkout is not).
    commit = None
    if _git(package, "ls-files", "--error-unmatch", "__init__.py") is not None:
        commit = (_git(package, "rev-parse", "HEAD") or "").strip()
    if not commit or not _COMMIT.fullmatch(commit):
        tags.update({"ntire.code.commit": INSTALLED, "ntire.code.dirty": "unknown"})
        return tags
    status = _git(package, "status", "--porcelain")
    dirty = "unknown" if status is None else "true" if status.strip() else "false"
    tags.update({"ntire.code.commit": commit, "ntire.code.dirty": dirty, "mlflow.source.git.commit": commit})
    return tags


def version_tags(*, deepspeed: bool = False) -> dict[str, str]:
    """`ntire.version.*`: ntire, Python, torch, CUDA and cuDNN (as torch was built and finds
    them; `none` on a CPU build), Accelerate, MLflow, and with `deepspeed` DeepSpeed (read from
    its installed metadata: never imported here)."""
    import ntire

    tags = {"ntire.version.ntire": _installed_version("ntire") or ntire.__version__,
            "ntire.version.python": platform.python_version()}
    cuda = cudnn = None
    try:
        import torch

        tags["ntire.version.torch"] = torch.__version__
        cuda = torch.version.cuda
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except Exception:  # noqa: BLE001 - a tag is never worth a failed run
        tags["ntire.version.torch"] = "none"
    tags["ntire.version.cuda"] = str(cuda or "none")
    tags["ntire.version.cudnn"] = str(cudnn or "none")
    for package in ("accelerate", "mlflow") + (("deepspeed",) if deepspeed else ()):
        tags[f"ntire.version.{package}"] = _installed_version(package) or "none"
    return tags


def data_tags(source: str | os.PathLike, *, shard_dir: str | os.PathLike | None = None,
              prefix: str = "ntire.data") -> dict[str, str]:
    """The identity of a run's data, as tags under `prefix`:

    `.source`: the folder (absolute) or the URLs as given. A shard folder (it holds
    manifest.json), or a dataset folder whose shard cache `shard_dir` is built: `.shards` (that
    folder) and `.manifest_sha256`, the sha256 of its manifest.json's bytes (which records every
    shard's sha256 and the source files). A dataset folder: `.files_sha256`, the sha256 of its
    file list (relative path and size of every file, sorted), and `.files`, their count.
    """
    from ntire.data.shard_manifest import MANIFEST_NAME

    text = str(source)
    path = Path(text)
    tags = {f"{prefix}.source": str(path.resolve()) if path.is_dir() else text}
    try:
        folders = [path] + ([Path(shard_dir)] if shard_dir is not None else [])
        manifest = next((f / MANIFEST_NAME for f in folders if (f / MANIFEST_NAME).is_file()), None)
        if manifest is not None:
            from ntire.files import sha256_file

            tags[f"{prefix}.shards"] = str(manifest.parent.resolve())
            tags[f"{prefix}.manifest_sha256"] = sha256_file(manifest)
        if path.is_dir() and not (path / MANIFEST_NAME).is_file():
            digest, count = file_list_hash(path)
            tags[f"{prefix}.files_sha256"] = digest
            tags[f"{prefix}.files"] = str(count)
    except OSError as e:
        tags[f"{prefix}.error"] = one_line(e, 200, first_line=True)
    return tags


def file_list_hash(folder: str | os.PathLike) -> tuple[str, int]:
    """The sha256 of a folder's file list (one `relative/path<TAB>size` line per file, sorted;
    temporary files left by interrupted writes are left out) and the number of files."""
    from ntire.files import is_temp_file

    root = Path(folder)
    lines = []
    for here, dirs, files in os.walk(root):
        dirs.sort()
        for name in files:
            path = Path(here) / name
            if is_temp_file(path):
                continue
            try:
                size = path.stat().st_size
            except OSError:  # removed while listing
                continue
            lines.append(f"{path.relative_to(root).as_posix()}\t{size}\n")
    lines.sort()
    return hashlib.sha256("".join(lines).encode()).hexdigest(), len(lines)


def _git(folder: Path, *args: str) -> str | None:
    """`git -C folder ARGS` stdout, or None (no git, not a checkout, an error, too slow)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=_GIT_TIMEOUT_S, env=env, check=False)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return done.stdout if done.returncode == 0 else None


def _installed_version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except Exception:  # noqa: BLE001 - absent, or broken metadata
        return None


def _gpu_name(device: Any) -> str | None:
    if not str(device).startswith("cuda"):
        return None
    try:
        import torch

        return torch.cuda.get_device_name(torch.device(str(device)))
    except Exception:  # noqa: BLE001
        return None


def _last_logged_steps(client: Any, run_id: str) -> dict[str, int]:
    try:
        keys = client.get_run(run_id).data.metrics
        return {key: max((m.step for m in client.get_metric_history(run_id, key)), default=-1) for key in keys}
    except Exception:  # noqa: BLE001 - tracking must never stop training; at worst a step shows twice
        return {}


def append_metrics_log(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Append `record` as one JSON line to a run's metrics.jsonl (beside the tracking store, a
    plain record of the run); a failed write (a full disk) is one line naming the file."""
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:
        from ntire.errors import write_error

        raise write_error(e, path) from None


def trim_metrics_log(path: str | os.PathLike, step: int) -> None:
    """Drop the records after `step` from a run's metrics.jsonl (one JSON object per line, each
    with its `step`): a job resumed from the checkpoint at `step` redoes and logs them again."""
    path = Path(path)
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = []
    if lines and not lines[-1].endswith("\n"):
        lines[-1] = ""  # half a record, cut by a kill: its step is redone (and would glue to the next)
    for line in lines:
        try:
            later = json.loads(line).get("step", 0) > step
        except (ValueError, AttributeError, TypeError):
            later = not line  # an unreadable line is kept as it was: nothing is lost silently
        if not later:
            kept.append(line)
    if kept != lines:
        from ntire.files import atomic_write_text

        atomic_write_text(path, "".join(kept))


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



__all__ = [
    "INSTALLED",
    "Tracker",
    "code_tags",
    "data_tags",
    "default_tracking_uri",
    "file_list_hash",
    "log_report",
    "provenance_tags",
    "start_tracking",
    "version_tags",
]
