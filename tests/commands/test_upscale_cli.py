"""`ntire upscale` end to end on tiny saved checkpoints: files, folders, errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image

from ntire.__main__ import COMMANDS, main


def _save(path, image, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image, mode).save(path)


def _expected(checkpoint, image, scale, **kwargs):
    """What the library computes for the same checkpoint and image."""
    from ntire.inference import upscale_image
    from ntire.models.checkpoint import load_model

    model, config = load_model(checkpoint)
    return upscale_image(model, config, image, scale=scale, **kwargs)


def _upscale(checkpoint, scale, src, dst, *extra):
    return main(["upscale", "--checkpoint", str(checkpoint), "--scale", str(scale), "--device", "cpu", *extra,
                 str(src), str(dst)])


def test_registered():
    assert "upscale" in COMMANDS


def test_file_to_file_matches_the_library_and_tiling_changes_nothing(checkpoints, tmp_path, rng):
    image = rng.integers(0, 256, (13, 18, 3), dtype=np.uint8)
    _save(tmp_path / "0901x2.png", image)
    assert _upscale(checkpoints["edsr"], 2, tmp_path / "0901x2.png", tmp_path / "out" / "sr.png") == 0
    whole = np.asarray(Image.open(tmp_path / "out" / "sr.png"))
    assert whole.shape == (26, 36, 3) and whole.dtype == np.uint8
    np.testing.assert_array_equal(whole, _expected(checkpoints["edsr"], image, 2))

    assert _upscale(checkpoints["edsr"], 2, tmp_path / "0901x2.png", tmp_path / "tiled.png", "--tile", "5") == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "tiled.png")), whole)


def test_tile_auto_is_the_default_and_0_forces_the_whole_image(checkpoints, tmp_path, rng, monkeypatch):
    import ntire.inference

    monkeypatch.delenv("NTIRE_MEMORY_BUDGET", raising=False)
    image = rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)
    _save(tmp_path / "a.png", image)
    tiled = []
    real = ntire.inference.tiled_forward
    monkeypatch.setattr(ntire.inference, "tiled_forward", lambda *a, **k: tiled.append(k["tile"]) or real(*a, **k))
    want = _expected(checkpoints["edsr"], image, 2, tile=0)
    for extra in ([], ["--tile", "auto"], ["--tile", "0"]):
        assert _upscale(checkpoints["edsr"], 2, tmp_path / "a.png", tmp_path / "o.png", *extra, "--force") == 0
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o.png")), want)
    assert tiled == []  # a small image in plenty of memory runs whole


def test_a_small_memory_budget_tiles_and_changes_nothing(checkpoints, tmp_path, rng, monkeypatch):
    """NTIRE_MEMORY_BUDGET below what the whole image needs: auto picks tiles, same output."""
    from ntire.models.build import receptive_field_radius
    from ntire.models.checkpoint import load_model
    from ntire.tiles import estimate_memory, plan_tiles, tile_layout

    image = rng.integers(0, 256, (60, 52, 3), dtype=np.uint8)
    _save(tmp_path / "a.png", image)
    _, config = load_model(checkpoints["edsr"])
    budget = estimate_memory(config, 2, 60, 52, tile=None) - 1
    plan = plan_tiles(config, 2, 60, 52, budget=budget)
    assert plan.tile is not None and tile_layout(60, 52, plan.tile, receptive_field_radius(config))[0] > 1
    import ntire.inference

    tiles = []
    real = ntire.inference.tiled_forward
    monkeypatch.setattr(ntire.inference, "tiled_forward", lambda *a, **k: tiles.append(k["tile"]) or real(*a, **k))
    monkeypatch.setenv("NTIRE_MEMORY_BUDGET", str(budget))
    assert _upscale(checkpoints["edsr"], 2, tmp_path / "a.png", tmp_path / "auto.png") == 0
    assert tiles == [plan.tile]
    monkeypatch.delenv("NTIRE_MEMORY_BUDGET")
    assert _upscale(checkpoints["edsr"], 2, tmp_path / "a.png", tmp_path / "whole.png", "--tile", "0") == 0
    auto, whole = (np.asarray(Image.open(tmp_path / f"{n}.png")).astype(int) for n in ("auto", "whole"))
    assert auto.shape == whole.shape == (120, 104, 3)
    assert (auto != whole).mean() < 1e-4 and np.abs(auto - whole).max() <= 1  # float rounding at most


def test_a_budget_too_small_for_any_tile_is_one_line_naming_the_memory(checkpoints, tmp_path, rng, capsys,
                                                                       monkeypatch):
    _save(tmp_path / "a.png", rng.integers(0, 256, (60, 52, 3), dtype=np.uint8))
    monkeypatch.setenv("NTIRE_MEMORY_BUDGET", "64KiB")
    err = _fails(capsys, checkpoints["edsr"], 2, tmp_path / "a.png", tmp_path / "o.png")
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ntire upscale: error: {tmp_path / 'a.png'}: a 52x60 LR image")
    assert "needs about" in err and "64 KiB is allowed by NTIRE_MEMORY_BUDGET" in err and "--tile N" in err
    assert not (tmp_path / "o.png").exists()
    # A forced tile does not ask the budget.
    assert _upscale(checkpoints["edsr"], 2, tmp_path / "a.png", tmp_path / "o.png", "--tile", "16") == 0


def test_self_ensemble_flag_and_file_into_existing_folder(checkpoints, tmp_path, rng):
    image = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    _save(tmp_path / "a.png", image)
    (tmp_path / "out").mkdir()
    assert _upscale(checkpoints["mdsr"], 3, tmp_path / "a.png", tmp_path / "out", "--self-ensemble") == 0
    got = np.asarray(Image.open(tmp_path / "out" / "a.png"))
    np.testing.assert_array_equal(got, _expected(checkpoints["mdsr"], image, 3, self_ensemble=True))
    assert not np.array_equal(got, _expected(checkpoints["mdsr"], image, 3))


def test_folder_names_outputs_after_input_stems(checkpoints, tmp_path, rng, capsys):
    src = tmp_path / "LR"
    colour = rng.integers(0, 256, (10, 8, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (7, 9), dtype=np.uint8)
    _save(src / "0801x2.png", colour)
    _save(src / "0802x2.png", grey, "L")  # greyscale input is converted to RGB
    (src / "notes.txt").write_text("not an image")
    assert _upscale(checkpoints["edsr"], 2, src, tmp_path / "SR") == 0
    assert sorted(p.name for p in (tmp_path / "SR").iterdir()) == ["0801x2.png", "0802x2.png"]
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "SR" / "0801x2.png")), _expected(checkpoints["edsr"], colour, 2)
    )
    assert np.asarray(Image.open(tmp_path / "SR" / "0802x2.png")).shape == (14, 18, 3)
    assert "2 image(s)" in capsys.readouterr().out


def test_a_killed_runs_temp_files_are_removed_and_never_read(checkpoints, tmp_path, rng):
    src, dst = tmp_path / "LR", tmp_path / "SR"
    _save(src / "0801x2.png", rng.integers(0, 256, (10, 8, 3), dtype=np.uint8))
    dst.mkdir()
    (dst / ".0801x2.png.abc123.tmp").write_bytes(b"")  # what SIGKILL mid-write leaves
    (dst / ".other.png.abc123.tmp").write_bytes(b"")  # not ours to remove
    (src / ".0802x2.png.abc123.tmp").write_bytes(b"")  # not an input
    assert _upscale(checkpoints["edsr"], 2, src, dst) == 0
    assert sorted(p.name for p in dst.iterdir()) == [".other.png.abc123.tmp", "0801x2.png"]


def _fails(capsys, *args) -> str:
    try:
        code = _upscale(*args)
    except SystemExit as e:  # argparse's own checks (e.g. --tile -3) exit 2 as well
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_unsupported_scale_names_the_option(checkpoints, tmp_path, rng, capsys):
    _save(tmp_path / "a.png", rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    err = _fails(capsys, checkpoints["edsr"], 4, tmp_path / "a.png", tmp_path / "b.png")
    assert "--scale 4" in err and "x2 only" in err
    assert not (tmp_path / "b.png").exists()


def test_bad_inputs_and_options_are_reported_not_raised(checkpoints, tmp_path, rng, capsys):
    rgba = rng.integers(0, 256, (6, 6, 4), dtype=np.uint8)
    rgba[0, 0, 3] = 0
    _save(tmp_path / "clear.png", rgba, "RGBA")
    _save(tmp_path / "deep.png", np.full((6, 6), 40000, dtype=np.uint16))  # 16-bit greyscale
    ckpt = checkpoints["edsr"]
    assert "clear.png" in _fails(capsys, ckpt, 2, tmp_path / "clear.png", tmp_path / "o.png")
    assert "transparent" in _fails(capsys, ckpt, 2, tmp_path / "clear.png", tmp_path / "o.png")
    assert "deep.png" in _fails(capsys, ckpt, 2, tmp_path / "deep.png", tmp_path / "o.png")
    assert "missing.png" in _fails(capsys, ckpt, 2, tmp_path / "missing.png", tmp_path / "o.png")
    for bad in ("-3", "big"):
        err = _fails(capsys, ckpt, 2, tmp_path / "clear.png", tmp_path / "o.png", "--tile", bad)
        assert f"argument --tile: {bad!r}: expected auto, 0 (the whole image) or a positive number" in err
    assert "overwrite" in _fails(capsys, ckpt, 2, tmp_path, tmp_path)
    assert "no such checkpoint" in _fails(capsys, tmp_path / "nope", 2, tmp_path / "clear.png", tmp_path / "o.png")
    assert not (tmp_path / "o.png").exists()


def test_error_in_a_real_process_prints_one_line_and_exits_2(checkpoints, tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    _save(tmp_path / "clear.png", rgba, "RGBA")
    proc = subprocess.run(
        [sys.executable, "-m", "ntire", "upscale", "--checkpoint", str(checkpoints["edsr"]), "--scale", "2",
         str(tmp_path / "clear.png"), str(tmp_path / "o.png")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "clear.png" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0


def test_released_layout_pt_file_loads_by_path(tmp_path, rng):
    """A plain state_dict in the authors' layout (as in edsr_baseline_x2-1bc95232.pt) is enough."""
    import torch

    from ntire.config import ModelConfig
    from ntire.inference import upscale_image
    from ntire.models.build import build_model

    config = ModelConfig(kind="edsr", scales=(3,), n_blocks=2, n_feats=8)
    torch.manual_seed(3)
    model = build_model(config).eval()
    torch.save(model.state_dict(), tmp_path / "edsr_tiny_x3.pt")
    image = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
    _save(tmp_path / "a.png", image)
    assert _upscale(tmp_path / "edsr_tiny_x3.pt", 3, tmp_path / "a.png", tmp_path / "sr.png") == 0
    want = upscale_image(model, config, image, scale=3)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "sr.png")), want)


def test_an_existing_output_is_kept_unless_forced(checkpoints, tmp_path, rng, capsys):
    image = rng.integers(0, 256, (13, 18, 3), dtype=np.uint8)
    _save(tmp_path / "in" / "0901x2.png", image)
    _save(tmp_path / "in" / "0902x2.png", image)
    out = tmp_path / "out"
    out.mkdir()
    (out / "0902x2.png").write_bytes(b"someone's earlier result")
    assert _upscale(checkpoints["edsr"], 2, tmp_path / "in", out) == 2
    assert f"{out / '0902x2.png'}: already exists; pass --force to overwrite" in capsys.readouterr().err
    assert (out / "0902x2.png").read_bytes() == b"someone's earlier result" and not (out / "0901x2.png").exists()
    assert _upscale(checkpoints["edsr"], 2, tmp_path / "in" / "0901x2.png", out / "0902x2.png") == 2  # file to file
    assert _upscale(checkpoints["edsr"], 2, tmp_path / "in", out, "--force") == 0
    assert Image.open(out / "0902x2.png").size == (36, 26)


def test_a_folder_upscale_shows_progress_in_a_log(checkpoints, tmp_path, rng, capsys):
    image = rng.integers(0, 256, (13, 18, 3), dtype=np.uint8)
    for i in range(3):
        _save(tmp_path / "in" / f"090{i}x2.png", image)
    assert _upscale(checkpoints["edsr"], 2, tmp_path / "in", tmp_path / "out") == 0
    assert "3/3" in capsys.readouterr().err  # stderr is no terminal here: a bar still reports


def test_precision_is_checked_in_one_line_and_bf16_says_what_it_costs(checkpoints, tmp_path, rng, capsys):
    image = rng.integers(0, 256, (13, 18, 3), dtype=np.uint8)
    _save(tmp_path / "0901x2.png", image)
    src, dst = tmp_path / "0901x2.png", tmp_path / "out" / "sr.png"
    for bad, why in (("fp16", "unknown precision; choose from fp32, tf32, bf16"),
                     ("tf32", "TF32 exists on CUDA devices only; on cpu use fp32 (or bf16)")):
        assert _upscale(checkpoints["edsr"], 2, src, dst, "--precision", bad) == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert lines == [f"ntire upscale: error: --precision {bad}: {why}"]
        assert not dst.exists()
    assert _upscale(checkpoints["edsr"], 2, src, dst, "--precision", "bf16") == 0
    assert "--precision bf16: bf16 costs PSNR" in capsys.readouterr().err
    got = np.asarray(Image.open(dst))
    assert np.array_equal(got, _expected(checkpoints["edsr"], image, 2, precision="bf16"))
    assert _upscale(checkpoints["edsr"], 2, src, dst, "--force") == 0  # the CPU default: exact fp32
    assert np.array_equal(np.asarray(Image.open(dst)), _expected(checkpoints["edsr"], image, 2, precision="fp32"))
