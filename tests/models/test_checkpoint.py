import dataclasses
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ntire.__main__ import main
from ntire.config import ModelConfig
from ntire.errors import CheckpointError
from ntire.models.build import build_model
from ntire.models.checkpoint import init_from, load_model, read_metadata, save_model

EDSR_X2 = ModelConfig(kind="edsr", scales=(2,), n_blocks=2, n_feats=8)
MDSR_TINY = ModelConfig(kind="mdsr", scales=(2, 3, 4), n_blocks=2, n_feats=8)


def fresh(config: ModelConfig, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(config).eval()


def assert_same_outputs(a, b, config):
    x = torch.rand(1, 3, 5, 4) * 255
    with torch.no_grad():
        for s in config.scales:
            assert torch.equal(a(x, s), b(x, s))


@pytest.mark.parametrize("config", [EDSR_X2, MDSR_TINY], ids=["edsr", "mdsr"])
def test_safetensors_round_trip(tmp_path, config):
    model = fresh(config)
    out = save_model(tmp_path / "ckpt", model, config, {"step": 7, "source": "test"})
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "model.safetensors"]  # no temp files
    for path in (out, out / "model.safetensors"):
        loaded, loaded_config = load_model(path)
        assert loaded_config == config and not loaded.training
        assert_same_outputs(model, loaded, config)
    assert read_metadata(out) == {"step": 7, "source": "test"}
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["n_feats"] == 8 and saved["model"]["kind"] == config.kind


def test_overwrite_replaces_the_weights(tmp_path):
    save_model(tmp_path, fresh(EDSR_X2, 0), EDSR_X2)
    second = fresh(EDSR_X2, 1)
    save_model(tmp_path, second, EDSR_X2)
    assert_same_outputs(second, load_model(tmp_path)[0], EDSR_X2)


def test_wrapped_model_is_saved_under_plain_keys(tmp_path):
    model = fresh(EDSR_X2)
    save_model(tmp_path, torch.nn.DataParallel(model), EDSR_X2)
    assert_same_outputs(model, load_model(tmp_path)[0], EDSR_X2)


def test_save_refuses_a_model_that_is_not_the_config(tmp_path):
    with pytest.raises(CheckpointError, match="wrong shape"):
        save_model(tmp_path / "x", fresh(EDSR_X2), dataclasses.replace(EDSR_X2, n_feats=16))
    assert not (tmp_path / "x" / "model.safetensors").exists()


def test_unwritable_metadata_is_refused_before_writing(tmp_path):
    with pytest.raises(CheckpointError, match="metadata"):
        save_model(tmp_path / "x", fresh(EDSR_X2), EDSR_X2, {"loss": object()})
    assert not (tmp_path / "x").exists()


def test_released_pt_is_loaded_by_path(tmp_path):
    model = fresh(EDSR_X2)
    torch.save(model.state_dict(), tmp_path / "edsr_baseline_x2-1bc95232.pt")
    loaded, config = load_model(tmp_path / "edsr_baseline_x2-1bc95232.pt")
    assert config == EDSR_X2
    assert_same_outputs(model, loaded, config)


def test_bad_checkpoint_paths_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere.*no such"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty.*no model.safetensors"):
        load_model(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="notes.txt.*not a checkpoint"):
        load_model(tmp_path / "notes.txt")


def test_broken_checkpoint_folders_are_named(tmp_path):
    ckpt = save_model(tmp_path / "ckpt", fresh(EDSR_X2), EDSR_X2)
    (ckpt / "config.yaml").rename(tmp_path / "config.yaml.bak")
    with pytest.raises(CheckpointError, match="model.safetensors.*no config.yaml"):
        load_model(ckpt)
    (tmp_path / "config.yaml.bak").rename(ckpt / "config.yaml")

    wide = ModelConfig(kind="edsr", scales=(2,), n_blocks=2, n_feats=16)
    save_model(tmp_path / "wide", fresh(wide), wide)
    (tmp_path / "wide" / "config.yaml").write_bytes((ckpt / "config.yaml").read_bytes())
    with pytest.raises(CheckpointError, match="wide/model.safetensors.*does not match config.yaml"):
        load_model(tmp_path / "wide")

    (ckpt / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="ckpt/model.safetensors.*not a readable safetensors"):
        load_model(ckpt)

    (ckpt / "config.yaml").write_text("model: {kind: edsr, n_blocks: 2, n_feets: 8}\n")
    with pytest.raises(CheckpointError, match="config.yaml.*n_feets"):
        load_model(ckpt)


def test_init_x4_from_x2_transfers_all_but_the_upsampler():
    source = fresh(EDSR_X2, 0).state_dict()
    x4_config = ModelConfig(kind="edsr", scales=(4,), n_blocks=2, n_feats=8)
    x4 = fresh(x4_config, 1)
    before = {k: v.clone() for k, v in x4.state_dict().items()}
    report = init_from(x4, x4_config, source)

    upsampler = {"tail.0.0.weight", "tail.0.0.bias", "tail.0.2.weight", "tail.0.2.bias"}
    assert set(report.skipped) == upsampler
    assert set(report.transferred) == set(before) - upsampler
    after = x4.state_dict()
    for k in report.transferred:
        assert torch.equal(after[k], source[k]), k
    for k in upsampler:  # same shape as x2's tail.0.0, still not transferred
        assert torch.equal(after[k], before[k]), k
    assert any(k.startswith("body.") for k in report.transferred) and "head.0.weight" in report.transferred
    text = str(report)
    assert "skipped 4" in text and "upsampler" in text and "tail.0.2.weight" in text


def test_init_mdsr_from_edsr_x2_matches_by_role():
    source = fresh(EDSR_X2, 0).state_dict()
    mdsr = fresh(MDSR_TINY, 1)
    report = init_from(mdsr, MDSR_TINY, source)
    assert torch.equal(mdsr.state_dict()["tail.0.weight"], source["tail.1.weight"])  # the last conv
    assert "body.1.body.2.weight" in report.transferred
    assert all(k.startswith(("pre_process.", "upsample.")) for k in report.skipped)
    assert report.reasons["pre_process.0.0.body.0.weight"] == "not in the source"
    assert "upsampler" in report.reasons["upsample.2.2.weight"]


def test_init_from_an_incompatible_model_is_refused():
    wide = ModelConfig(kind="edsr", scales=(4,), n_blocks=2, n_feats=16)
    with pytest.raises(CheckpointError, match="no body tensor matches"):
        init_from(fresh(wide), wide, fresh(EDSR_X2).state_dict())


def test_convert_cli_end_to_end(tmp_path, capsys):
    model = fresh(EDSR_X2)
    src = tmp_path / "edsr_baseline_x2-1bc95232.pt"
    torch.save(model.state_dict(), src)
    assert main(["convert", str(src), str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "edsr" in printed and "x2" in printed and "blocks 2, features 8" in printed

    loaded, config = load_model(tmp_path / "out")
    assert config == EDSR_X2
    assert_same_outputs(model, loaded, config)
    assert read_metadata(tmp_path / "out")["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()

    assert main(["convert", str(src), str(tmp_path / "out")]) == 2  # no silent overwrite
    assert "out: already holds a checkpoint" in capsys.readouterr().err
    assert main(["convert", str(src), str(tmp_path / "out"), "--force"]) == 0


def test_convert_cli_refuses_bad_files_without_a_traceback(tmp_path):
    bad = tmp_path / "edsr_x4-broken.pt"
    bad.write_bytes(b"\x80\x02garbage")
    result = subprocess.run(
        [sys.executable, "-m", "ntire", "convert", str(bad), str(tmp_path / "out")],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 2
    assert "edsr_x4-broken.pt" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
