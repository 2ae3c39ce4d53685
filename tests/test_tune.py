"""ntire.tune without a Ray cluster: search spaces, configs of trials, sweep folders.

The sweeps themselves (ASHA, crash retry, resume, distributed trials, MLflow runs) run on a
two-node Ray cluster in tests/cluster/test_ray_two_nodes.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ntire.errors import ConfigError
from ntire.config import TrainConfig, build_config

pytest.importorskip("ray")

from ntire.tune import (  # noqa: E402
    SPACE_DIR,
    TrialSetup,
    apply_params,
    check_space,
    load_space,
    parse_space,
    prepare_base,
    resume_sweep,
    run_sweep,
    trial_config,
)

# ---------------------------------------------------------------------------------------------
# Search spaces


def test_shipped_spaces_load_against_their_configs():
    shipped = sorted(p.stem for p in SPACE_DIR.glob("*.yaml"))
    assert {"tiny", "paper"} <= set(shipped)
    for name, config in [("tiny", "demo"), ("paper", "edsr_baseline_x2")] + [(n, "demo") for n in shipped]:
        space = load_space(name, build_config(config))
        assert space.sampled, name
        assert set(space.param_space()) == {e.path for e in space.sampled}


def test_distributions_map_to_tune_domains():
    space = parse_space({
        "optim": {"lr": {"loguniform": ["1e-4", 1.0e-2]}},     # YAML reads 1e-4 as text
        "model.n_feats": {"choice": [8, 16]},
        "model.res_scale": {"uniform": [0.1, 1.0]},
        "data.batch_size": {"qrandint": [4, 16, 4]},
        "seed": {"grid": [1, 2, 3]},
        "max_steps": 50,
    })
    domains = space.param_space()
    assert space.fixed == {"max_steps": 50}
    lr = np.array(domains["optim.lr"].sample(size=2000, random_state=0))
    assert lr.min() >= 1e-4 and lr.max() <= 1e-2
    # Log-uniform: the median is near the geometric mean (1e-3), far below the arithmetic one.
    assert 5e-4 < np.median(lr) < 2e-3
    assert domains["model.n_feats"].categories == [8, 16]
    res = np.array(domains["model.res_scale"].sample(size=500, random_state=0))
    assert res.min() >= 0.1 and res.max() <= 1.0 and 0.45 < res.mean() < 0.65
    assert set(domains["data.batch_size"].sample(size=200, random_state=0)) <= {4, 8, 12, 16}
    assert domains["seed"] == {"grid_search": [1, 2, 3]}
    assert space.trials(num_samples=2) == 6


@pytest.mark.parametrize("data, message", [
    ({"optim.lr": {"loguniform": [1e-3]}}, r"loguniform takes \[low, high\]"),
    ({"optim.lr": {"loguniform": [1e-3, 1e-4]}}, "low < high"),
    ({"optim.lr": {"loguniform": [0, 1e-4]}}, "positive low bound"),
    ({"optim.lr": {"uniform": ["a", 1]}}, "takes numbers"),
    ({"model.n_feats": {"choice": []}}, "choice takes a list"),
    ({"max_steps": 10}, "nothing to sweep"),
])
def test_space_syntax_errors_name_the_field(data, message):
    with pytest.raises(ConfigError, match=message) as e:
        parse_space(data, "my_space.yaml")
    assert "my_space.yaml" in str(e.value)


@pytest.mark.parametrize("data, message", [
    ({"optim.lrate": {"choice": [1e-3]}}, r"optim.lrate: no such training config field"),
    ({"seed": {"grid": [1, 2]}, "model.n_feats": {"chioce": [8]}}, r"model.n_feats: unknown distribution 'chioce'"),
    ({"output_dir": {"choice": ["a", "b"]}}, "set by ntire tune"),
    ({"max_steps": {"choice": [10, 20]}}, "max_steps cannot be swept"),
    ({"model.n_feats": {"choice": [8, 0]}}, r"model.n_feats: value 0 is refused"),
    ({"mixed_precision": {"choice": ["bf16", "fp8"]}}, r"mixed_precision: value 'fp8' is refused"),
    ({"data.batch_size": {"quniform": [4, 16, 4]}}, r"data.batch_size: value 4.0 is refused"),
    ({"model": {"choice": [1, 2]}}, "is a section"),
])
def test_space_checked_against_the_training_config(data, message):
    space = parse_space(data, "my_space.yaml")
    with pytest.raises(ConfigError, match=message) as e:
        check_space(space, TrainConfig())
    assert "my_space.yaml" in str(e.value)


def test_apply_params_replaces_only_the_swept_fields():
    base = TrainConfig()
    params = {"optim.lr": np.float64(3e-4), "model.n_feats": np.int64(16), "optim.betas": [0.8, 0.99],
              "model.res_scale": 1, "data.valid_indices": [801, 802]}
    out = apply_params(base, params)
    assert out.optim.lr == 3e-4 and type(out.optim.lr) is float
    assert out.model.n_feats == 16 and type(out.model.n_feats) is int
    assert out.optim.betas == (0.8, 0.99) and out.data.valid_indices == (801, 802)
    assert out.model.res_scale == 1.0 and type(out.model.res_scale) is float
    assert out == dataclasses.replace(
        base,
        optim=dataclasses.replace(base.optim, lr=3e-4, betas=(0.8, 0.99)),
        model=dataclasses.replace(base.model, n_feats=16, res_scale=1.0),
        data=dataclasses.replace(base.data, valid_indices=(801, 802)),
    )
    assert base == TrainConfig()  # frozen: nothing changed in place


def test_trial_config_checkpoints_at_every_validation(tmp_path):
    base = build_config(None, {"max_steps": 100, "eval_every": 25, "save_every": 40, "keep_last": 3})
    setup = TrialSetup(base=base, tracking_uri="sqlite:///x.db", parent_run_id="p")
    config = trial_config(setup, {"optim.lr": 5e-4}, trial_id="abc_00001", output_dir=tmp_path / "t",
                          resume=tmp_path / "ck")
    assert config.optim.lr == 5e-4
    assert config.output_dir == str(tmp_path / "t") and config.resume == str(tmp_path / "ck")
    assert config.save_every == 25  # every report to Ray carries that step's checkpoint
    assert config.tracking.uri == "sqlite:///x.db"
    assert config.tracking.run_name == "EDSR_x2_f64b16_bicubic_sample_100_abc_00001"
    untracked = trial_config(dataclasses.replace(setup, tracking_uri=None), {}, trial_id="t",
                             output_dir=tmp_path, resume=None)
    assert not untracked.tracking.enabled and untracked.resume is None


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
