"""Training flags come from the config fields: one per field, help from its docstring."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import pytest

from ntire.config import TrainConfig, flag
from ntire.config_io import field_docs, options
from ntire.errors import ConfigError
from ntire.options import add_config_arguments, add_train_arguments, config_from_args, overrides_from_args


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train")
    add_train_arguments(p)
    return p


def config(*argv: str) -> TrainConfig:
    return config_from_args(parser().parse_args(list(argv)))


def test_every_field_has_a_dotted_flag_whose_help_is_its_docstring():
    actions = {a.dest: a for a in parser()._actions}
    for option in options(TrainConfig):
        action = actions[option.path]
        assert f"--{option.path.replace('_', '-')}" in action.option_strings
        assert option.doc and action.help.startswith(option.doc.replace("%", "%%")), option.path
    # Every leaf of the nested dataclasses, and nothing else besides the launcher's own flags.
    leaves = {o.path for o in options(TrainConfig)}
    assert "data.patches_per_sample" in leaves and "optim.betas" in leaves and "max_steps" in leaves
    assert set(actions) - leaves == {"help", "config", "model", "set", "print_config"}


def test_docstrings_are_read_from_the_source():
    docs = field_docs(TrainConfig)
    assert docs["seed"].startswith("Seed for weights initialisation")
    assert "\n" not in docs["max_steps"]  # folded onto one line


def test_short_and_dotted_flags_reach_the_same_field():
    assert config("--batch-size", "8").data.batch_size == 8
    assert config("--data.batch-size", "8").data.batch_size == 8
    assert config("--lr", "2e-4").optim.lr == 2e-4
    assert config("--data", "elsewhere").data.source == "elsewhere"


def test_types_come_from_the_annotations():
    c = config("--optim.betas", "0.8", "0.99", "--no-data.augment", "--track", "unknown",
               "--model", "mdsr", "--scale", "2", "3", "--no-tracking", "--data.train-indices", "1", "10")
    assert c.optim.betas == (0.8, 0.99) and c.data.augment is False and c.data.track == "unknown"
    assert c.model.kind == "mdsr" and c.model.scales == (2, 3) and c.tracking.enabled is False
    assert c.data.train_indices == (1, 10)


@pytest.mark.parametrize("argv", [["--batch-size", "x"], ["--track", "blurry"], ["--optim.betas", "0.9"],
                                  ["--mixed-precision", "fp8"]])
def test_a_bad_value_is_an_argparse_error(argv, capsys):
    with pytest.raises(SystemExit) as e:
        parser().parse_args(argv)
    assert e.value.code == 2
    assert "argument" in capsys.readouterr().err


def test_set_wins_over_flags_and_flags_over_the_config_file():
    assert config("--config", "demo", "--max-steps", "7").max_steps == 7
    assert config("--max-steps", "7", "--set", "max_steps=9").max_steps == 9


@dataclass(frozen=True)
class Inner:
    depth: int = field(default=3, metadata=flag("--depth", metavar="D"))
    """How deep to go."""

    mode: Literal["a", "b"] = "a"
    """Which way."""

@dataclass(frozen=True)
class Outer:
    inner: Inner = field(default_factory=Inner)
    """Nested."""

    fast: bool = False
    """Go fast."""


def test_a_new_field_gets_its_flag_without_other_code():
    p = argparse.ArgumentParser()
    add_config_arguments(p, Outer)
    args = p.parse_args(["--depth", "5", "--inner.mode", "b", "--fast"])
    assert overrides_from_args(args, Outer) == {"inner": {"depth": 5, "mode": "b"}, "fast": True}
    helps = {a.dest: a.help for a in p._actions}
    assert helps["inner.depth"] == "How deep to go. (default: 3)"
    assert dataclasses.replace(Outer(), fast=True).fast


def test_help_lists_sections_and_defaults(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert "data options:" in out and "optim options:" in out
    assert "--batch-size N" in out and "(default: 16)" in out


def test_the_validation_tile_takes_what_every_tile_option_takes(capsys):
    assert config("--data.valid-tile", "auto").data.valid_tile == "auto"
    assert config("--data.valid-tile", "0").data.valid_tile == 0
    assert config("--set", "data.valid_tile=96").data.valid_tile == 96
    assert config("--set", "data.valid_tile=AUTO").data.valid_tile == "auto"
    with pytest.raises(SystemExit):
        parser().parse_args(["--data.valid-tile", "-3"])
    assert "argument --data.valid-tile: '-3': expected auto, 0 (the whole image)" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"data.valid_tile='big': expected auto, 0 \(the whole image\)"):
        config("--set", "data.valid_tile=big")
