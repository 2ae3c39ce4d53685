"""Training configs: every shipped file loads, layers override in order, errors name the culprit."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from ntire.config import CONFIG_DIR, ModelConfig, TrainConfig, build_config, config_to_yaml, run_name
from ntire.config_io import flatten, parse_set
from ntire.errors import ConfigError
from ntire.options import add_train_arguments as add_arguments

SHIPPED = sorted(CONFIG_DIR.glob("*.yaml"))
REPO = Path(__file__).resolve().parents[1]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def config_from(*argv: str) -> TrainConfig:
    from ntire.options import config_from_args

    return config_from_args(parse(*argv))


def test_configs_are_shipped():
    names = {p.stem for p in SHIPPED}
    assert {"demo", "edsr_baseline_x2", "edsr_x2", "edsr_x3_from_x2", "edsr_x4_from_x2", "mdsr"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_config_loads_and_round_trips(path, tmp_path):
    config = build_config(path)
    assert isinstance(config.model, ModelConfig)
    assert config.model.name in ("edsr-baseline", "edsr", "mdsr-baseline", "mdsr")
    # Paper recipe unless the file says otherwise.
    assert config.optim.betas == (0.9, 0.999) and config.optim.eps == 1e-8
    if "from_x2" in path.stem:
        assert config.init_from and "x2" in config.init_from and config.scales != (2,)
    copy = tmp_path / "copy.yaml"
    copy.write_text(config_to_yaml(config))
    assert build_config(copy) == config
    assert build_config(path.stem) == config  # shipped configs are found by name


def test_paper_configs_follow_the_recipe():
    config = build_config("edsr_x2")
    assert config.model == ModelConfig.preset("edsr", 2)
    assert (config.data.batch_size, config.data.patch_size, config.data.augment) == (16, 48, True)
    assert (config.optim.lr, config.optim.lr_step, config.optim.lr_gamma) == (1e-4, 200_000, 0.5)
    assert config.max_steps == 1_000_000
    assert build_config("mdsr").model == ModelConfig.preset("mdsr", (2, 3, 4))


def test_demo_config_trains_the_baseline_on_the_sample_data():
    config = build_config("demo")
    assert config.model == ModelConfig.preset("edsr-baseline", 2)
    assert config.data.source == "data/sample" and config.output_dir == "runs/demo"
    assert run_name(config).startswith("EDSR_x2_f64b16_bicubic_sample_")


def test_command_line_beats_yaml_beats_defaults(tmp_path):
    yaml_file = tmp_path / "mine.yaml"
    yaml_file.write_text(
        "model: {preset: edsr-baseline, scales: [2]}\n"
        "data: {batch_size: 8, patch_size: 32, track: unknown}\n"
        "optim: {lr: 2e-4}\n"
        "max_steps: 500\n"
    )
    config = config_from(
        "--config", str(yaml_file), "--lr", "3e-4", "--scale", "3", "--max-steps", "7",
        "--set", "data.patch_size=24", "--no-channels-last",
    )
    assert config.optim.lr == 3e-4  # command line over YAML
    assert config.max_steps == 7
    assert config.scales == (3,) and config.model.n_feats == 64  # --scale keeps the architecture
    assert config.data.patch_size == 24  # --set over YAML
    assert config.data.batch_size == 8 and config.data.track == "unknown"  # YAML over defaults
    assert config.channels_last is False
    assert config.save_every == TrainConfig().save_every  # untouched: default


def test_model_option_replaces_the_architecture():
    config = config_from("--config", "edsr_x2", "--model", "mdsr-baseline")
    assert config.model == ModelConfig.preset("mdsr-baseline", (2, 3, 4))
    config = config_from("--model", "mdsr", "--scale", "2", "4")
    assert config.model.scales == (2, 4) and config.model.n_blocks == 80


def test_set_overrides_a_model_field():
    config = config_from("--set", "model.n_blocks=2", "--set", "model.n_feats=8")
    assert (config.model.n_blocks, config.model.n_feats) == (2, 8)


@pytest.mark.parametrize(
    "argv, named",
    [
        (("--set", "optim.lrr=1"), "lrr"),
        (("--set", "data.batch_size=0"), "data.batch_size"),
        (("--set", "nonsense"), "KEY=VALUE"),
        (("--config", "no_such_config"), "no_such_config"),
        (("--set", "mixed_precision=fp8"), "mixed_precision"),
        (("--model", "edsr", "--scale", "2", "3"), "EDSR models have exactly one scale"),
        (("--set", "model.kind=rcan"), r"options\.model: model kind 'rcan' is not a known network; known: edsr, mdsr$"),
    ],
)
def test_bad_options_name_the_culprit(argv, named):
    with pytest.raises(ConfigError, match=named):
        config_from(*argv)


def test_bad_yaml_key_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {batch_sise: 4}\n")
    with pytest.raises(ConfigError) as e:
        build_config(bad)
    assert "bad.yaml" in str(e.value) and "batch_sise" in str(e.value)


def test_parse_set_nests_and_types_values():
    assert parse_set(["optim.lr=0.5", "data.augment=false", "seed=3"]) == {
        "optim": {"lr": 0.5},
        "data": {"augment": False},
        "seed": 3,
    }


def test_run_name_encodes_the_setup():
    config = build_config(None, {"max_steps": 3000, "data": {"source": "data/sample"}})
    assert run_name(config) == "EDSR_x2_f64b16_bicubic_sample_3k"
    mdsr = build_config("mdsr", {"max_steps": 1500, "data": {"track": "unknown"}})
    assert run_name(mdsr) == "MDSR_x234_f64b80_unknown_DIV2K_1.5k"
    shards = "/s/div2k/shard-{000000..000009}.tar"
    urls = dataclasses.replace(config, data=dataclasses.replace(config.data, source=shards))
    assert "_div2k_" in run_name(urls)
    named = build_config(None, {"tracking": {"run_name": "mine"}})
    assert run_name(named) == "mine"


def test_flatten_gives_every_field_a_dotted_name():
    flat = flatten(TrainConfig())
    assert flat["model.n_feats"] == 64 and flat["optim.lr"] == 1e-4 and flat["max_steps"] == TrainConfig().max_steps
    assert not any(isinstance(v, dict) for v in flat.values())


def test_train_script_runs_as_a_file_and_prints_its_config():
    # `accelerate launch ntire/train.py` runs the file, which puts ntire/ first on sys.path.
    out = subprocess.run(
        [sys.executable, str(REPO / "ntire" / "train.py"), "--config", "demo", "--max-steps", "7", "--print-config"],
        capture_output=True, text=True, cwd=REPO / "ntire", timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "max_steps: 7" in out.stdout and "n_feats: 64" in out.stdout


def test_an_unknown_key_with_a_preset_and_overrides_names_the_options_once():
    with pytest.raises(ConfigError) as e:
        build_config("demo", {"optim": {"lrr": 1}}, model="edsr-baseline")
    assert str(e.value).count("with command-line options") == 1 and "lrr" in str(e.value)


def test_the_config_and_the_command_line_import_no_torch():
    # The kinds are checked against the table of networks, whose modules import torch: only when
    # a config is built, so `ntire --help` stays fast.
    code = ("import sys, ntire.config, ntire.options, ntire.__main__; "
            "ntire.__main__.build_parser(); print('torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"
