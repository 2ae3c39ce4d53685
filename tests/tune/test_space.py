"""ntire.tune.space: parsing search spaces, their distributions, checking them against the
training config, applying drawn values to it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ntire.config import TrainConfig, build_config
from ntire.errors import ConfigError

pytest.importorskip("ray")

from ntire.tune.space import SPACE_DIR, apply_params, check_space, load_space, parse_space  # noqa: E402


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
