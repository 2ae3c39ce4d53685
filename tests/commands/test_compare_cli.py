"""`ntire compare` end to end: the figure file, its labels and box, and one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ntire.__main__ import COMMANDS, main
from ntire.data.degrade import bicubic_downscale, bicubic_upscale
from ntire.figures import comparison_figure, most_different_box, score_box, score_text
from ntire.images import read_image, write_png

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two tiny EDSR x2 (random weights, one architecture) and an MDSR x3/x4 checkpoint."""
    import torch

    from ntire.config import ModelConfig
    from ntire.models.build import build_model
    from ntire.models.checkpoint import save_model

    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for name, config in [
        ("run_a", ModelConfig(kind="edsr", scales=(2,), n_blocks=1, n_feats=8)),
        ("run_b", ModelConfig(kind="edsr", scales=(2,), n_blocks=1, n_feats=8)),
        ("mdsr", ModelConfig(kind="mdsr", scales=(3, 4), n_blocks=1, n_feats=8)),
    ]:
        torch.manual_seed(len(out))
        out[name] = save_model(root / name, build_model(config), config)
    return out


@pytest.fixture
def hr_file(photo, tmp_path):
    path = tmp_path / "astronaut.png"
    write_png(path, np.ascontiguousarray(photo[120:216, 140:268]))  # 128x96
    return path


def _compare(*argv):
    return main(["compare", "--device", "cpu", *map(str, argv)])


def test_registered():
    assert "compare" in COMMANDS


def test_figure_of_one_checkpoint_matches_the_library(checkpoints, hr_file, tmp_path, capsys):
    from ntire.inference import upscale_image
    from ntire.models.checkpoint import load_model

    out = tmp_path / "figs" / "fig.png"
    assert _compare("--hr", hr_file, "--checkpoint", checkpoints["run_a"], "--scale", 2, "--box-size", 32,
                    "--out", out) == 0
    hr = read_image(hr_file)
    lr = bicubic_downscale(hr, 2)
    model, config = load_model(checkpoints["run_a"])
    sr = upscale_image(model, config, lr, scale=2)
    bicubic = bicubic_upscale(lr, 2)
    expected, box = comparison_figure(hr, bicubic, [("EDSR-b1f8 x2", sr)], scale=2, protocol="benchmark",
                                      box_size=32, name="astronaut")
    assert box == most_different_box(bicubic, [sr], 32, margin=2)
    np.testing.assert_array_equal(read_image(out), expected)
    printed = capsys.readouterr().out.splitlines()
    for line, (label, image) in zip(printed, [("Bicubic", bicubic), ("EDSR-b1f8 x2", sr)], strict=False):
        crop = score_text(score_box(image, hr, box, scale=2, protocol="benchmark"))
        assert line.split("  box ")[0].strip() == label and line.split("  box ")[1].startswith(crop)
    assert printed[-1] == f"wrote {out} (box {box} in HR pixels, benchmark protocol)"


def test_given_lr_and_box_two_models_and_self_ensemble(checkpoints, hr_file, tmp_path, capsys):
    hr = read_image(hr_file)
    write_png(tmp_path / "lr.png", bicubic_downscale(hr, 2))
    out = tmp_path / "fig.png"
    assert _compare("--hr", hr_file, "--lr", tmp_path / "lr.png", "--checkpoint", checkpoints["run_a"],
                    "--checkpoint", checkpoints["run_b"], "--scale", 2, "--self-ensemble", "--box", "10,20,40,30",
                    "--protocol", "div2k", "--out", out) == 0
    printed = capsys.readouterr().out.splitlines()
    labels = [line.split("  box")[0].strip() for line in printed[:-1]]
    assert labels == ["Bicubic", "EDSR-b1f8 x2 (run_a)", "EDSR-b1f8+ x2 (run_a)", "EDSR-b1f8 x2 (run_b)",
                      "EDSR-b1f8+ x2 (run_b)"]
    assert printed[-1].endswith("(box 10,20,40,30 in HR pixels, div2k protocol)")
    picture = read_image(out)
    assert picture.shape[1] > picture.shape[0] > 2 * 40  # two rows of crops


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--box", "1,2,3"], "--box 1,2,3: expected x,y,w,h in HR pixels"),
        (["--box", "100,10,40,40"], "--box 100,10,40,40: outside the 128x96 (WxH) HR image"),
        (["--box", "0,0,12,12"], "--box 0,0,12,12: leaves 10x10 scored pixels"),
        (["--scale", "3"], "upscales x2 only, not x3"),
        (["--out", "fig.jpg"], "--out fig.jpg: the figure is written as PNG"),
    ],
)
def test_errors_are_one_line(checkpoints, hr_file, tmp_path, capsys, extra, message):
    argv = ["--hr", hr_file, "--checkpoint", checkpoints["run_a"], "--scale", 2, "--out", tmp_path / "f.png"]
    for i in range(0, len(extra), 2):
        if extra[i] in argv:
            argv[argv.index(extra[i]) + 1] = extra[i + 1]
        else:
            argv += extra[i : i + 2]
    assert _compare(*argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ntire compare: error: ") and message in err[0], err
    assert not (tmp_path / "f.png").exists()


def test_lr_of_the_wrong_size_and_a_missing_checkpoint(checkpoints, hr_file, tmp_path, capsys):
    write_png(tmp_path / "lr.png", np.zeros((20, 20, 3), np.uint8))
    assert _compare("--hr", hr_file, "--lr", tmp_path / "lr.png", "--checkpoint", checkpoints["mdsr"], "--scale", 4,
                    "--out", tmp_path / "f.png") == 2
    err = capsys.readouterr().err
    assert "LR image is 20x20 (WxH) but HR" in err and "must be 80x80" in err
    assert _compare("--hr", hr_file, "--checkpoint", tmp_path / "nothing", "--scale", 2,
                    "--out", tmp_path / "f.png") == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_no_traceback_from_a_subprocess(tmp_path):
    run = subprocess.run([sys.executable, "-m", "ntire", "compare", "--hr", "missing.png", "--checkpoint", "m",
                          "--scale", "2", "--out", "f.png", "--box", "x"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""})
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip() == "ntire compare: error: --box x: expected x,y,w,h in HR pixels, e.g. 120,80,96,96"
