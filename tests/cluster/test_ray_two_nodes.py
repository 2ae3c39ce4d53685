"""Sweeps on a Ray cluster of two nodes on this machine (loopback), one CPU each: trials placed
on both nodes, ASHA, a crashed trial retried from its checkpoint, an interrupted sweep resumed
with the CLI, a distributed trial (Ray Train workers), the parent and child MLflow runs.

All of them share one cluster (Ray start-up is slow). `ray start --address=127.0.0.1:PORT` cannot
add a second node on one machine (it rewrites the address to the routable one), so the nodes are
started with Ray's own test-cluster utility, and torn down by it: only the processes this module
started are stopped (never `ray stop`). The trials train a 1-block, 8-feature EDSR for 30 steps on
the sample data, validating every 10.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # one Ray cluster of two nodes: tens of seconds

from ray import tune  # noqa: E402

from ntire.config import TrainConfig, build_config  # noqa: E402
from ntire.tune.space import parse_space  # noqa: E402
from ntire.tune.sweep import SweepOptions, run_sweep  # noqa: E402

MAX_STEPS = 30
EVAL_EVERY = 10


@pytest.fixture(scope="module")
def two_nodes():
    import ray
    import ray._private.ray_constants as ray_constants
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")  # no token file under ~/.ray
        # Keep every node, and the processes they start, on 127.0.0.1; the constant is read
        # when ray is imported, which may have happened already.
        mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        mp.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        try:
            cluster.add_node(num_cpus=1)
            ray.init(address=cluster.address, log_to_driver=False)
            cluster.wait_for_nodes()
            yield cluster
        finally:
            ray.shutdown()
            cluster.shutdown()


@pytest.fixture(scope="module")
def sample_data(tmp_path_factory) -> Path:
    from ntire.data.sample import build_sample_dataset

    return build_sample_dataset(tmp_path_factory.mktemp("sample"))


def node_ids() -> set[str]:
    import ray

    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


def test_cluster_listens_on_loopback(two_nodes):
    import ray

    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len(nodes) == 2
    assert {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}
    assert two_nodes.address.startswith("127.0.0.1:")


def tiny_config(data: Path, tracking_db: Path) -> TrainConfig:
    return build_config(None, {
        "model": {"n_blocks": 1, "n_feats": 8},
        "data": {"source": str(data), "batch_size": 4, "patch_size": 16, "patches_per_sample": 4,
                 "shuffle_buffer": 16, "num_workers": 0, "valid_indices": [801, 801]},
        "max_steps": MAX_STEPS, "eval_every": EVAL_EVERY, "log_every": EVAL_EVERY,
        "tracking": {"uri": f"sqlite:///{tracking_db}"},
    })


SPACE = {"optim.lr": {"loguniform": [1.0e-4, 1.0e-2]}, "model.n_feats": {"choice": [4, 8]}}


class KillFirstTrialOnce(tune.Callback):
    """Kill the process of the first trial that saves a checkpoint, once: a crash mid-training."""

    def __init__(self):
        self.killed: dict = {}
        self.recovered: list = []

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        # Called as Ray registers the checkpoint that came with the trial's last result.
        if not self.killed:
            self.killed = {"trial_id": trial.trial_id, "step": trial.last_result["step"]}
            os.kill(trial.last_result["pid"], signal.SIGKILL)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.recovered.append(trial.trial_id)


def child_runs(uri: str, parent_run_id: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(parent_run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")
    return client, parent, children


def test_asha_sweep_over_both_nodes_retries_a_crashed_trial_and_exports_the_best_config(
        two_nodes, sample_data, tmp_path):
    config = tiny_config(sample_data, tmp_path / "mlflow.db")
    space = parse_space(SPACE, "test_space")
    crash = KillFirstTrialOnce()
    result = run_sweep(config, space, SweepOptions(num_samples=4, max_failures=1, verbose=0),
                       output_dir=tmp_path / "sweep", callbacks=[crash])

    assert result.complete and result.trials == 4 and result.errors == 0
    # The killed trial was retried once and continued from the checkpoint it had reported.
    assert crash.killed["step"] == EVAL_EVERY and crash.recovered == [crash.killed["trial_id"]]
    killed = next(r for r in result.results if r.metrics["trial_id"] == crash.killed["trial_id"])
    assert killed.metrics["resumed_from"] == EVAL_EVERY and killed.metrics["step"] > EVAL_EVERY
    steps = killed.metrics_dataframe["step"].tolist()
    assert steps == sorted(set(steps))  # no step trained twice after the restart

    # ASHA stops no trial before its first validation, and none runs past the budget.
    last_steps = [r.metrics["step"] for r in result.results]
    assert all(EVAL_EVERY <= s <= MAX_STEPS for s in last_steps)
    assert max(last_steps) == MAX_STEPS

    # One CPU per trial and one per node: the first two trials ran at once, one on each node.
    assert {n for r in result.results for n in r.metrics_dataframe["node_id"]} == node_ids()

    # The best config is a training config `ntire/train.py --config` reads as it is.
    from ntire.commands.train import add_arguments
    from ntire.options import config_from_args

    best = max(result.results, key=lambda r: r.metrics["valid_psnr"])
    assert result.best_metrics["valid_psnr"] == pytest.approx(best.metrics["valid_psnr"])
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    loaded = config_from_args(parser.parse_args(["--config", str(result.best_path)]))
    assert loaded == result.best_config
    assert loaded.optim.lr == pytest.approx(best.config["optim.lr"])
    assert loaded.model.n_feats == best.config["model.n_feats"]
    assert loaded.data.source == config.data.source and loaded.max_steps == MAX_STEPS

    # MLflow: one parent run for the sweep, one child per trial, logged by fit like a training job.
    client, parent, children = child_runs(result.tracking_uri, result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best/valid_psnr"] == pytest.approx(best.metrics["valid_psnr"])
    assert "best.yaml" in [a.path for a in client.list_artifacts(result.parent_run_id)]
    assert len(children) == 4
    by_trial = {c.data.tags["ntire.trial_id"]: c for c in children}
    assert set(by_trial) == {r.metrics["trial_id"] for r in result.results}
    for r in result.results:
        child = by_trial[r.metrics["trial_id"]]
        assert child.info.run_name.startswith("EDSR_x2_f") and child.info.run_name.endswith(r.metrics["trial_id"])
        assert child.data.metrics["valid/psnr_x2"] == pytest.approx(r.metrics["valid_psnr"])
        assert "train/loss" in child.data.metrics and child.data.params["optim.lr"]
        finished = r.metrics["step"] == MAX_STEPS
        assert child.info.status == ("FINISHED" if finished else "KILLED"), r.metrics
    # The crashed trial kept its run: the retry reopened it (fit reads the id from the checkpoint).
    assert len(client.get_metric_history(by_trial[crash.killed["trial_id"]].info.run_id, "valid/psnr_x2")) >= 2


class InterruptOnce(tune.Callback):
    """Ctrl-C the sweep at its first checkpoint, once (a marker file survives Tuner.restore)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        if not os.path.exists(self.marker):
            Path(self.marker).write_text(trial.trial_id)
            os.kill(os.getpid(), signal.SIGINT)


def test_interrupted_sweep_resumes_with_the_cli(two_nodes, sample_data, tmp_path):
    from ntire.__main__ import main

    config = tiny_config(sample_data, tmp_path / "mlflow.db")
    out = tmp_path / "sweep"
    marker = tmp_path / "interrupted"
    space = parse_space({"optim.lr": {"grid": [1e-3, 2e-3]}}, "grid_space")
    first = run_sweep(config, space, SweepOptions(num_samples=1, max_concurrent=1, scheduler="fifo", verbose=0),
                      output_dir=out, callbacks=[InterruptOnce(marker)])
    assert not first.complete
    interrupted = marker.read_text()
    _, parent, _ = child_runs(first.tracking_uri, first.parent_run_id)
    assert parent.info.status == "KILLED"

    assert main(["tune", "--resume", "--output-dir", str(out), "--quiet"]) == 0

    state = yaml.safe_load((out / "sweep.yaml").read_text())
    assert state["parent_run_id"] == first.parent_run_id
    trials = sorted(p for p in (out / "trials").iterdir() if p.is_dir())
    assert len(trials) == 2
    for trial in trials:
        lines = [json.loads(x) for x in (trial / "train" / "metrics.jsonl").read_text().splitlines()]
        valid_steps = [x["step"] for x in lines if "valid/psnr_x2" in x]
        assert sorted(set(valid_steps)) == list(range(EVAL_EVERY, MAX_STEPS + 1, EVAL_EVERY)), trial.name
        if trial.name != interrupted:  # pending at the interruption: ran once, after it
            assert valid_steps == sorted(set(valid_steps))
    # The interrupted trial continued from a checkpoint Ray had registered (the steps it trained
    # after that one, before it was stopped, are trained again), not from the start.
    results = [json.loads(x) for x in (out / "trials" / interrupted / "result.json").read_text().splitlines()]
    assert results[-1]["step"] == MAX_STEPS and EVAL_EVERY <= results[-1]["resumed_from"] < MAX_STEPS
    lines = (out / "trials" / interrupted / "train" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines if "valid/psnr_x2" in x].count(EVAL_EVERY) == 1
    assert (out / "best.yaml").is_file()
    _, parent, children = child_runs(first.tracking_uri, first.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert sorted(c.info.status for c in children) == ["FINISHED", "FINISHED"]


@pytest.mark.skipif(os.environ.get("NTIRE_TEST_RAY_TRAIN") != "1",
                    reason="a Ray Train run takes ~30 s of CPU (set NTIRE_TEST_RAY_TRAIN=1 to run it)")
def test_distributed_trial_runs_fit_on_ray_train_workers(two_nodes, sample_data, tmp_path):
    from ntire.training.distributed import read_rank_records

    config = dataclasses.replace(tiny_config(sample_data, tmp_path / "mlflow.db"), max_steps=EVAL_EVERY)
    space = parse_space({"optim.lr": {"grid": [1e-3]}}, "distributed")
    # Two Ray Train workers of half a CPU each (the cluster has one CPU per node).
    result = run_sweep(config, space, SweepOptions(num_samples=1, scheduler="fifo", workers_per_trial=2,
                                                   cpus_per_trial=0.5, verbose=0),
                       output_dir=tmp_path / "sweep")
    assert result.complete and result.errors == 0
    (trial,) = result.results
    # Checkpoints stay with the Ray Train run; Tune gets their path.
    assert trial.metrics["step"] == EVAL_EVERY and Path(trial.metrics["checkpoint_path"]).is_dir()
    ranks = read_rank_records(tmp_path / "sweep" / "trials" / trial.metrics["trial_id"] / "train")
    assert [r["rank"] for r in ranks] == [0, 1]
    assert {r["world_size"] for r in ranks} == {2} and {r["distributed_type"] for r in ranks} == {"MULTI_CPU"}
    assert len({r["weights_sha256"] for r in ranks}) == 1  # one model trained by both, not two
    _, parent, (child,) = child_runs(result.tracking_uri, result.parent_run_id)
    assert child.data.tags["ntire.processes"] == "2" and "valid/psnr_x2" in child.data.metrics
