"""`ntire tune`'s flags come from the fields of SweepSetup and SweepOptions, and need no Ray."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from ntire.__main__ import build_parser
from ntire.config import flag
from ntire.config_io import options
from ntire.errors import ConfigError
from ntire.options import add_config_arguments, options_from_args
from ntire.tune.options import SweepOptions, SweepSetup


def tune_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["tune"]


def test_every_sweep_field_is_a_flag_whose_help_is_its_docstring():
    actions = {a.dest: a for a in tune_parser()._actions}
    fields = [o for cls in (SweepSetup, SweepOptions) for o in options(cls)]
    for option in fields:
        action = actions[option.path]
        assert f"--{option.path.replace('_', '-')}" in action.option_strings
        assert option.doc and action.help.startswith(option.doc), option.path
    # Nothing else but the training config's file and overrides and the --quiet shortcut.
    assert set(actions) - {o.path for o in fields} == {"help", "config", "set", "quiet"}


def test_the_flags_users_type_reach_the_options():
    args = tune_parser().parse_args(
        ["--config", "demo", "--space", "tiny", "--num-samples", "8", "--scheduler", "fifo", "--cpus-per-trial", "0.5",
         "--gpus-per-trial", "1", "--workers-per-trial", "2", "--max-concurrent", "3", "--max-failures", "0",
         "--seed", "7", "--storage", "s3://b/s", "--output-dir", "out", "--address", "auto", "--set", "seed=3"])
    assert options_from_args(SweepOptions, args) == SweepOptions(
        num_samples=8, scheduler="fifo", cpus_per_trial=0.5, gpus_per_trial=1.0, workers_per_trial=2,
        max_concurrent=3, max_failures=0, seed=7, storage="s3://b/s")
    assert options_from_args(SweepSetup, args) == SweepSetup(space="tiny", output_dir="out", address="auto")
    assert args.config == "demo" and args.set == ["seed=3"]
    defaults = tune_parser().parse_args(["--resume"])
    assert options_from_args(SweepOptions, defaults) == SweepOptions()
    assert options_from_args(SweepSetup, defaults) == SweepSetup(resume=True)


def test_train_and_tune_share_one_config_and_set_definition():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("config", "set"):
        train, tune = ({a.dest: a for a in sub.choices[c]._actions}[name] for c in ("train", "tune"))
        assert (train.default, train.help, train.metavar) == (tune.default, tune.help, tune.metavar)
    assert {a.dest: a for a in sub.choices["tune"]._actions}["config"].default is None


def test_a_bad_sweep_option_names_its_flag():
    args = tune_parser().parse_args(["--space", "tiny", "--num-samples", "0"])
    with pytest.raises(ConfigError, match="--num-samples must be positive"):
        options_from_args(SweepOptions, args)


@dataclass(frozen=True)
class _MoreOptions(SweepOptions):
    patience: int = field(default=5, metadata=flag("--wait", metavar="N"))
    """Validations without gain before a trial stops."""


def test_a_field_added_to_the_options_is_a_flag_without_other_code():
    p = argparse.ArgumentParser()
    add_config_arguments(p, _MoreOptions)
    args = p.parse_args(["--wait", "9", "--num-samples", "2"])
    assert options_from_args(_MoreOptions, args) == dataclasses.replace(_MoreOptions(), patience=9, num_samples=2)
    helps = {a.dest: a.help for a in p._actions}
    assert helps["patience"] == "Validations without gain before a trial stops. (default: 5)"


def test_tune_help_imports_no_ray():
    code = ("import sys; from ntire.__main__ import main\ntry: main(['tune', '--help'])\nexcept SystemExit: pass\n"
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def _result(out):
    from ntire.tune.sweep import SweepResult

    return SweepResult(best_config=None, best_path=None, best_metrics={}, best_trial_id=None, trials=0, errors=0,
                       complete=True, parent_run_id=None, tracking_uri=None, output_dir=out, results=None)


def test_the_command_hands_the_parsed_options_to_the_sweep(monkeypatch, tmp_path):
    import ntire.tune.sweep as sweep
    from ntire.__main__ import main

    seen = {}

    def fake_run(config, space, options, *, output_dir, address):
        seen.update(config=config, space=space, options=options, output_dir=output_dir, address=address)
        return _result(tmp_path)

    monkeypatch.setattr(sweep, "run_sweep", fake_run)
    monkeypatch.setattr(sweep, "resume_sweep", lambda out, address: seen.update(resumed=(out, address)) or
                        _result(tmp_path))
    (tmp_path / "data").mkdir()  # not the sample folder: nothing is built
    argv = ["tune", "--config", "demo", "--set", f"data.source={tmp_path / 'data'}", "--set", "max_steps=40",
            "--space", "tiny", "--num-samples", "2", "--seed", "5", "--quiet", "--output-dir", str(tmp_path / "s")]
    assert main(argv) == 1  # no best trial from the fake sweep
    assert seen["options"] == SweepOptions(num_samples=2, seed=5, verbose=0)
    assert seen["config"].max_steps == 40 and seen["config"].data.batch_size == 8  # demo's, then --set
    assert seen["output_dir"] == str(tmp_path / "s") and seen["address"] is None
    assert main(["tune", "--resume", "--output-dir", str(tmp_path / "s"), "--address", "auto"]) == 1
    assert seen["resumed"] == (str(tmp_path / "s"), "auto")
