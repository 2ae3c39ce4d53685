"""`ntire evaluate`: file matching, errors that name the file (exit 2, no traceback), --json."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ntire.__main__ import COMMANDS, main


def _save(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


@pytest.fixture
def dirs(tmp_path):
    """HR 0801-0803 (48x50) and SR files in the three naming forms, offsets 1, 3 and 0."""
    rng = np.random.default_rng(1)
    hr_dir, sr_dir = tmp_path / "HR", tmp_path / "SR"
    for stem, sr_name, d in [
        ("0801", "0801.png", 1),
        ("0802", "0802x2.png", 3),
        ("0803", "0803_x2_SR.png", 0),
    ]:
        hr = rng.integers(10, 240, (48, 50, 3), dtype=np.uint8)
        _save(hr_dir / f"{stem}.png", hr)
        _save(sr_dir / sr_name, hr + np.uint8(d))
    return sr_dir, hr_dir


def _args(sr_dir, hr_dir, *extra):
    return ["evaluate", "--sr", str(sr_dir), "--hr", str(hr_dir), "--scale", "2", *extra]


def test_registered():
    assert "evaluate" in COMMANDS


def test_table_and_json(dirs, tmp_path, capsys):
    sr_dir, hr_dir = dirs
    out = tmp_path / "out" / "scores.json"
    assert main(_args(sr_dir, hr_dir, "--protocol", "div2k", "--json", str(out))) == 0
    table = capsys.readouterr().out
    lines = table.splitlines()
    assert lines[0].split() == ["image", "PSNR", "(dB)", "SSIM"]
    assert [ln.split()[0] for ln in lines[1:4]] == ["0801", "0802", "0803"]
    assert lines[1].split()[1] == f"{20 * math.log10(255):.2f}"  # offset 1: 48.13 dB
    assert lines[3].split()[1:] == ["inf", "1.0000"]
    assert lines[-1].split()[:2] == ["mean", "inf"]

    def strict(constant):
        raise ValueError(f"{constant} is not JSON")

    data = json.loads(out.read_text(), parse_constant=strict)
    assert set(data) == {"per_image", "mean", "unmatched_sr"} and data["unmatched_sr"] == []
    assert list(data["per_image"]) == ["0801", "0802", "0803"]
    assert all(set(v) == {"psnr", "ssim"} for v in data["per_image"].values())
    assert data["per_image"]["0801"]["psnr"] == pytest.approx(20 * math.log10(255 / 1))
    assert data["per_image"]["0802"]["psnr"] == pytest.approx(20 * math.log10(255 / 3))
    assert data["per_image"]["0803"] == {"psnr": None, "ssim": 1.0}  # infinite: null in strict JSON
    assert data["mean"]["psnr"] is None
    ssims = [v["ssim"] for v in data["per_image"].values()]
    assert data["mean"]["ssim"] == pytest.approx(sum(ssims) / 3)
    assert not list(out.parent.glob(".*tmp"))  # atomic write left no temporary behind


def test_benchmark_mean_is_finite(dirs, tmp_path, capsys):
    sr_dir, hr_dir = dirs
    (sr_dir / "0803_x2_SR.png").unlink()
    _save(sr_dir / "0803x2.png", np.zeros((48, 50, 3), np.uint8))
    out = tmp_path / "b.json"
    assert main(_args(sr_dir, hr_dir, "--protocol", "benchmark", "--json", str(out))) == 0
    data = json.loads(out.read_text())
    # Offset 1 on R, G, B moves Y by 219/255.
    assert data["per_image"]["0801"]["psnr"] == pytest.approx(20 * math.log10(255 / (219 / 255)))
    assert math.isfinite(data["mean"]["psnr"])
    assert data["mean"]["psnr"] == pytest.approx(
        sum(v["psnr"] for v in data["per_image"].values()) / 3
    )


def test_missing_sr_file_names_it(dirs, capsys):
    sr_dir, hr_dir = dirs
    (sr_dir / "0802x2.png").unlink()
    assert main(_args(sr_dir, hr_dir, "--protocol", "div2k")) == 2
    err = capsys.readouterr().err
    assert "0802.png" in err and "no SR image" in err and "Traceback" not in err


def test_mis_sized_sr_names_file_and_sizes(dirs, capsys):
    sr_dir, hr_dir = dirs
    _save(sr_dir / "0801.png", np.zeros((44, 50, 3), np.uint8))
    assert main(_args(sr_dir, hr_dir, "--protocol", "benchmark")) == 2
    err = capsys.readouterr().err
    assert "0801.png" in err and "50x44" in err and "50x48" in err


def test_bad_options_are_usage_errors(dirs, capsys):
    sr_dir, hr_dir = dirs
    for extra in (["--protocol", "rgb"], ["--protocol", "div2k", "--scale", "0"]):
        with pytest.raises(SystemExit) as e:
            main(_args(sr_dir, hr_dir, *extra))
        assert e.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_real_process_exits_2_without_traceback(dirs):
    sr_dir, hr_dir = dirs
    (sr_dir / "0801.png").unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "ntire", *_args(sr_dir, hr_dir, "--protocol", "div2k")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "0801.png" in proc.stderr and "Traceback" not in proc.stderr


def test_an_error_mid_progress_bar_starts_on_its_own_line(dirs):
    sr_dir, hr_dir = dirs
    _save(sr_dir / "0802x2.png", np.zeros((10, 10, 3), np.uint8))  # wrong size: fails mid-run
    run = subprocess.run([sys.executable, "-m", "ntire", *_args(sr_dir, hr_dir, "--protocol", "div2k")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    lines = run.stderr.replace("\r", "\n").splitlines()
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("ntire evaluate: error: "), run.stderr
    assert "evaluate:" in run.stderr.split("ntire evaluate: error")[0]  # a bar was drawn before it


def test_unmatched_sr_images_are_an_error_or_a_counted_warning(dirs, capsys):
    sr_dir, hr_dir = dirs
    _save(sr_dir / "0900x2.png", np.zeros((48, 50, 3), np.uint8))
    assert main(_args(sr_dir, hr_dir, "--protocol", "div2k")) == 2
    assert "0900x2.png" in capsys.readouterr().err
    assert main(_args(sr_dir, hr_dir, "--protocol", "div2k", "--ignore-unmatched")) == 0
    captured = capsys.readouterr()
    assert "warning: 1 SR image(s) without an HR partner not scored: 0900x2.png" in captured.err
    assert "0801" in captured.out


def test_an_existing_json_file_is_kept_unless_forced(dirs, tmp_path, capsys):
    sr_dir, hr_dir = dirs
    out = tmp_path / "scores.json"
    out.write_text("earlier scores")
    assert main(_args(sr_dir, hr_dir, "--protocol", "div2k", "--json", str(out))) == 2
    assert f"{out}: already exists; pass --force to overwrite" in capsys.readouterr().err
    assert out.read_text() == "earlier scores"
    assert main(_args(sr_dir, hr_dir, "--protocol", "div2k", "--json", str(out), "--force")) == 0
    assert json.loads(out.read_text())["unmatched_sr"] == []
