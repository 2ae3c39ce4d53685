"""`ntire average`: the mean of a run's last K / best K checkpoints, as a model folder, scored."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from ntire.config import build_config


@pytest.fixture(scope="module")
def run(dataset, tmp_path_factory):
    from ntire.training.fit import fit

    out = tmp_path_factory.mktemp("avg") / "run"
    fit(build_config(None, {
        "model": {"n_blocks": 1, "n_feats": 8},
        "data": {"source": str(dataset), "batch_size": 4, "patch_size": 16, "num_workers": 0,
                 "patches_per_sample": 4, "shuffle_buffer": 16},
        "optim": {"lr": 3e-3}, "max_steps": 8, "save_every": 2, "eval_every": 2, "keep_last": 4,
        "output_dir": str(out), "tracking": {"enabled": False}, "progress": False, "mixed_precision": "no",
    }))
    return out


def test_average_last_k_writes_the_mean_model_and_scores_it_beside_the_best(run, capsys):
    from ntire.__main__ import main
    from ntire.models.checkpoint import load_model, read_metadata
    from ntire.training.state import list_checkpoints

    assert main(["average", str(run), "--last", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    model_dir = run / "model-avg-last3"
    assert out[0] == f"averaged 3 checkpoints (steps 4, 6, 8) into {model_dir}"
    assert out[1].startswith("x2 valid PSNR: averaged ") and "best single checkpoint (step" in out[1]

    checkpoints = {c.state.step: c.path for c in list_checkpoints(run)}
    weights = [load_file(checkpoints[s] / "model.safetensors") for s in (4, 6, 8)]
    model, config = load_model(model_dir)
    for name, value in model.state_dict().items():
        mean = sum(w[name].double() for w in weights) / 3
        assert torch.allclose(value.double(), mean, atol=1e-7), name
    assert not torch.equal(model.state_dict()["head.0.weight"], weights[-1]["head.0.weight"])
    meta = read_metadata(model_dir)
    assert meta["steps"] == [4, 6, 8] and meta["source"] == "ntire average" and "psnr_x2" in meta["valid"]

    # The printed PSNR is the model's own: re-scored independently it agrees.
    from ntire.training.inputs import validation_set
    from ntire.training.validate import validate

    scored = validate(model, config, validation_set(_config_of(run)), tile=None).scales[2].psnr
    assert f"averaged {scored:.3f} dB" in out[1]


def _config_of(run):
    from ntire.config import TrainConfig
    from ntire.config_io import from_dict
    from ntire.training.state import list_checkpoints

    return from_dict(TrainConfig, list_checkpoints(run)[-1].state.config)


def test_average_best_k_takes_the_highest_validation_psnr(run, capsys):
    from ntire.__main__ import main
    from ntire.models.checkpoint import read_metadata
    from ntire.training.state import list_checkpoints

    ranked = sorted(list_checkpoints(run), key=lambda c: c.state.valid_psnr)
    assert main(["average", str(run), "--best", "2", "--out", str(run / "best2")]) == 0
    assert read_metadata(run / "best2")["steps"] == sorted(c.state.step for c in ranked[-2:])


@pytest.mark.parametrize("args, message", [
    (["--last", "9"], "4 checkpoints kept, 9 asked"),
    (["--last", "1"], "at least 2 checkpoints"),
])
def test_average_refuses_in_one_line(run, capsys, args, message):
    from ntire.__main__ import main

    assert main(["average", str(run), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_average_never_replaces_a_model_folder_silently(run, tmp_path, capsys):
    from ntire.__main__ import main

    out = tmp_path / "avg"
    assert main(["average", str(run), "--last", "2", "--out", str(out)]) == 0
    before = (out / "model.safetensors").read_bytes()
    assert main(["average", str(run), "--last", "3", "--out", str(out)]) == 2
    assert "already exists; give --force" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before
    assert main(["average", str(run), "--last", "3", "--out", str(out), "--force"]) == 0
    assert (out / "model.safetensors").read_bytes() != before


def test_a_folder_without_checkpoints_is_named(tmp_path, capsys):
    from ntire.__main__ import main

    assert main(["average", str(tmp_path), "--last", "2"]) == 2
    assert f"{tmp_path}: no checkpoints" in capsys.readouterr().err
