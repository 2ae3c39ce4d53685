"""cluster/ray/: every Ray cluster launcher file passes the Ray autoscaler's own checks (its JSON
schema, shipped in the ray package, and its config preparation); the training configs beside
them load as `ntire train` loads a config."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray")
jsonschema = pytest.importorskip("jsonschema")

import ray.autoscaler  # noqa: E402
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

from ntire.config import build_config  # noqa: E402

RAY_DIR = Path(__file__).resolve().parents[2] / "cluster" / "ray"
CLUSTER_FILES = sorted(RAY_DIR.glob("*.yaml"))
SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"


def test_there_are_cluster_files_and_a_schema():
    assert {p.name for p in CLUSTER_FILES} >= {"aws-gpu.yaml", "onprem.yaml"}
    assert SCHEMA.is_file()


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_file_is_valid_for_the_autoscaler(path):
    config = yaml.safe_load(path.read_text())
    jsonschema.validate(config, json.loads(SCHEMA.read_text()))
    # What `ray up` does before launching: merge the provider's defaults, then validate.
    validate_config(prepare_config(copy.deepcopy(config)))


def test_schema_check_catches_a_misplaced_key():
    config = yaml.safe_load((RAY_DIR / "aws-gpu.yaml").read_text())
    config["available_node_types"]["gpu_1x"]["instance_type"] = "g5.2xlarge"  # belongs in node_config
    with pytest.raises(jsonschema.ValidationError, match="instance_type"):
        jsonschema.validate(config, json.loads(SCHEMA.read_text()))


def test_aws_cluster_autoscales_gpu_workers_from_the_project_image():
    config = yaml.safe_load((RAY_DIR / "aws-gpu.yaml").read_text())
    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # trials go to the GPU workers
    workers = {name: n for name, n in nodes.items() if name != config["head_node_type"]}
    assert workers and all(n.get("min_workers", 0) == 0 and n["max_workers"] >= 1 for n in workers.values())
    assert all(n["node_config"]["InstanceType"].startswith(("g", "p")) for n in workers.values())
    assert "ntire-ray" in config["docker"]["image"]
    assert "cluster/ray/Dockerfile" in " ".join(config["setup_commands"])
    dockerfile = (RAY_DIR / "Dockerfile").read_text()
    assert "FROM ${BASE}" in dockerfile and "awscli" in dockerfile and "ray[default" in dockerfile


@pytest.mark.parametrize("path", sorted((RAY_DIR / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_cluster_training_configs_load(path):
    config = build_config(path)
    assert config.data.source.startswith("pipe:aws s3 cp ") and config.data.source.endswith(" -")
    assert config.data.valid_root  # shards carry no validation images: a sweep needs them
