"""ntire.tune.sweep without a Ray cluster: sweep folders and the config every trial starts from.

The sweeps themselves (ASHA, crash retry, resume, distributed trials, MLflow runs) run on a
two-node Ray cluster in tests/cluster/test_ray_two_nodes.py.
"""

from __future__ import annotations

import pytest

from ntire.config import TrainConfig, build_config
from ntire.errors import ConfigError

pytest.importorskip("ray")

from ntire.tune.space import parse_space  # noqa: E402
from ntire.tune.sweep import prepare_base, resume_sweep, run_sweep, sweep_tags  # noqa: E402


def test_a_new_sweep_refuses_an_output_folder_holding_one(tmp_path):
    (tmp_path / "sweep.yaml").write_text("{}")
    with pytest.raises(ConfigError, match="--resume"):
        run_sweep(TrainConfig(), parse_space({"optim.lr": {"choice": [1e-4]}}), output_dir=tmp_path)
    with pytest.raises(ConfigError, match="no sweep to resume"):
        resume_sweep(tmp_path / "elsewhere")


def test_trials_get_absolute_paths_and_one_shard_cache(tmp_path):
    (tmp_path / "data" / "sample").mkdir(parents=True)
    config = build_config(None, {"data": {"source": "data/sample", "valid_root": "data/sample"},
                                 "init_from": "missing/model"})
    space = parse_space({"optim.lr": {"choice": [1e-4]}, "max_steps": 7})
    base = prepare_base(config, space, tmp_path / "sweep", cwd=tmp_path)
    assert base.data.source == base.data.valid_root == str(tmp_path / "data" / "sample")
    assert base.data.shard_dir == str(tmp_path / "sweep" / "shards")
    assert base.init_from == "missing/model" and base.max_steps == 7
    # Trials that sweep what the shards hold shard for themselves (in their own folders).
    per_trial = prepare_base(config, parse_space({"data.track": {"choice": ["bicubic", "unknown"]}}),
                             tmp_path / "sweep", cwd=tmp_path)
    assert per_trial.data.shard_dir is None


def test_the_sweep_run_is_tagged_with_code_versions_host_and_data(tmp_path):
    import hashlib

    from ntire.training.inputs import shard_cache_dir

    (tmp_path / "data" / "sample" / "DIV2K").mkdir(parents=True)
    (tmp_path / "data" / "sample" / "DIV2K" / "a.png").write_bytes(b"12345")
    config = build_config(None, {"data": {"source": "data/sample"}})
    base = prepare_base(config, parse_space({"optim.lr": {"choice": [1e-4]}}), tmp_path / "sweep", cwd=tmp_path)
    tags = sweep_tags(base)
    assert {"ntire.code.commit", "ntire.code.dirty", "ntire.version.torch", "ntire.version.ray",
            "ntire.host"} <= set(tags)
    assert tags["ntire.data.source"] == str(tmp_path / "data" / "sample") and tags["ntire.data.files"] == "1"
    assert "ntire.data.manifest_sha256" not in tags  # the shard cache is not built yet
    cache = shard_cache_dir(base)
    cache.mkdir(parents=True)
    (cache / "manifest.json").write_text("{}")
    assert sweep_tags(base)["ntire.data.manifest_sha256"] == hashlib.sha256(b"{}").hexdigest()
