"""ntire.tune.trial without Ray running: the training config each trial gets."""

from __future__ import annotations

import dataclasses

import pytest

from ntire.config import build_config

pytest.importorskip("ray")

from ntire.tune.trial import TrialSetup, trial_config  # noqa: E402


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
