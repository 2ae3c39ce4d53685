"""`ntire export --format onnx` end to end on tiny saved checkpoints: files per scale, errors in one line."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from ntire.__main__ import COMMANDS, main


@pytest.fixture(scope="module")
def ort():
    return pytest.importorskip("onnxruntime")


def _export(*args):
    return main(["export", *map(str, args)])


def _matches_checkpoint(path, checkpoint, scale, size=(11, 8)):
    from ntire.models.checkpoint import load_model
    from ntire.models.onnx_export import run_onnx

    model, _ = load_model(checkpoint)
    lr = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(1)) * 255
    with torch.no_grad():
        expected = model(lr, scale).numpy()
    got = run_onnx(path, lr)
    assert got.shape == (1, 3, size[0] * scale, size[1] * scale)
    return float(np.abs(got - expected).max()) <= 1e-3


def test_registered():
    assert "export" in COMMANDS


def test_edsr_to_the_named_file_verified(ort, checkpoints, tmp_path, capsys):
    out = tmp_path / "edsr.onnx"
    assert _export("--format", "onnx", checkpoints["edsr"], out) == 0
    assert sorted(tmp_path.iterdir()) == [out]
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "onnxruntime matches torch within" in printed
    assert _matches_checkpoint(out, checkpoints["edsr"], 2)


@pytest.mark.slow
def test_mdsr_gives_one_file_per_scale_and_scale_picks_one(ort, checkpoints, tmp_path):
    from ntire.models.onnx_export import read_onnx_metadata

    assert _export(checkpoints["mdsr"], tmp_path / "all" / "mdsr.onnx") == 0
    files = sorted(p.name for p in (tmp_path / "all").iterdir())
    assert files == ["mdsr_x2.onnx", "mdsr_x3.onnx", "mdsr_x4.onnx"]
    for scale in (2, 3, 4):
        path = tmp_path / "all" / f"mdsr_x{scale}.onnx"
        assert read_onnx_metadata(path)["scale"] == str(scale)
        assert _matches_checkpoint(path, checkpoints["mdsr"], scale)

    assert _export("--scale", "3", "--no-verify", checkpoints["mdsr"], tmp_path / "one" / "x3.onnx") == 0
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["x3.onnx"]
    assert read_onnx_metadata(tmp_path / "one" / "x3.onnx")["scale"] == "3"


@pytest.mark.slow
def test_folder_output_and_force(ort, checkpoints, tmp_path, capsys):
    from ntire.models.checkpoint import load_model

    _, config = load_model(checkpoints["mdsr"])
    assert _export("--scale", "2", "--scale", "4", "--no-verify", checkpoints["mdsr"], tmp_path / "dir") == 0
    assert sorted(p.name for p in (tmp_path / "dir").iterdir()) == [f"{config.name}_x2.onnx", f"{config.name}_x4.onnx"]
    capsys.readouterr()
    assert _export("--scale", "2", "--no-verify", checkpoints["mdsr"], tmp_path / "dir") == 2
    err = capsys.readouterr().err
    assert "already exist" in err and "--force" in err and err.count("\n") == 1
    assert _export("--scale", "2", "--no-verify", "--force", checkpoints["mdsr"], tmp_path / "dir") == 0


def test_missing_checkpoint_is_one_line(ort, tmp_path, capsys):
    assert _export(tmp_path / "nope", tmp_path / "m.onnx") == 2
    err = capsys.readouterr().err
    assert err.startswith("ntire export: error:") and "nope" in err and err.count("\n") == 1
    assert not (tmp_path / "m.onnx").exists()


def test_scale_not_served_is_one_line(ort, checkpoints, tmp_path, capsys):
    assert _export("--scale", "4", checkpoints["edsr"], tmp_path / "m.onnx") == 2
    err = capsys.readouterr().err
    assert "x4 is not served" in err and "x2 only" in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_onnx_not_installed_names_the_extra(checkpoints, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` raise ImportError
    assert _export(checkpoints["edsr"], tmp_path / "m.onnx") == 2
    err = capsys.readouterr().err
    assert "pip install 'ntire[onnx]'" in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_a_released_pt_file_exports_too(ort, tmp_path, capsys):
    from ntire.config import ModelConfig
    from ntire.models.build import build_model
    from ntire.models.onnx_export import read_onnx_metadata

    config = ModelConfig(kind="edsr", scales=(3,), n_blocks=2, n_feats=16)
    torch.manual_seed(0)
    torch.save(build_model(config).state_dict(), tmp_path / "edsr_x3-ea3ef2c6.pt")
    assert _export(tmp_path / "edsr_x3-ea3ef2c6.pt", tmp_path / "out") == 0
    (path,) = (tmp_path / "out").iterdir()
    assert path.name == f"{config.name}_x3.onnx" and "matches torch" in capsys.readouterr().out
    meta = read_onnx_metadata(path)
    assert meta["source"] == "edsr_x3-ea3ef2c6.pt" and meta["scale"] == "3"
