"""Every command meets oversized images, full disks, read-only places and paths under a file with
one line naming the path and the reason (exit 2), and leaves nothing half-written behind."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ntire.__main__ import main
from tests.test_images import bomb_png


@pytest.mark.parametrize("command", ["upscale", "degrade", "evaluate", "compare"])
def test_every_image_command_refuses_a_bomb_in_one_line(checkpoints, tmp_path, command, capsys):
    (tmp_path / "in").mkdir()
    bomb = tmp_path / "in" / "0801.png"
    bomb.write_bytes(bomb_png(100_000, 100_000))
    argv = {
        "upscale": ["upscale", "--checkpoint", str(checkpoints["edsr"]), "--scale", "2", "--device", "cpu",
                    str(bomb), str(tmp_path / "out.png")],
        "degrade": ["degrade", "--track", "bicubic", "--scale", "2", str(bomb), str(tmp_path / "out.png")],
        "evaluate": ["evaluate", "--sr", str(tmp_path / "in"), "--hr", str(tmp_path / "in"), "--scale", "2",
                     "--protocol", "div2k"],
        "compare": ["compare", "--hr", str(bomb), "--checkpoint", str(checkpoints["edsr"]), "--scale", "2",
                    "--device", "cpu", "--out", str(tmp_path / "fig.png")],
    }[command]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ntire")]
    assert len(err) == 1 and "100000x100000 pixels" in err[0] and str(bomb) in err[0]
    assert not (tmp_path / "out.png").exists() and not (tmp_path / "fig.png").exists()


def _image(path: Path, size: int = 12) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".tmp-")]


def test_an_output_under_an_existing_file_is_one_line(checkpoints, tmp_path, capsys, dataset_args):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    src = _image(tmp_path / "lr" / "0801x2.png")
    runs = {
        "upscale": ["upscale", "--checkpoint", str(checkpoints["edsr"]), "--scale", "2", "--device", "cpu",
                    str(src), str(blocker / "sr.png")],
        "upscale-folder": ["upscale", "--checkpoint", str(checkpoints["edsr"]), "--scale", "2", "--device", "cpu",
                           str(src.parent), str(blocker / "sr")],
        "data sample": ["data", "sample", "--out", str(blocker / "sample")],
        "train": ["train", *dataset_args, "--output-dir", str(blocker / "run")],
    }
    for what, argv in runs.items():
        assert main(argv) == 2, what
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ntire")]
        assert len(err) == 1 and str(blocker) in err[0] and "Not a directory" in err[0], (what, err)
    assert blocker.read_text() == "not a folder" and not _leftovers(tmp_path)


def test_a_read_only_or_full_destination_is_one_line(checkpoints, tmp_path, capsys, monkeypatch):
    # Injected: as root, chmod does not make a folder read-only, and a tiny filesystem needs mount.
    import ntire.files

    src = _image(tmp_path / "lr" / "0801x2.png")
    for code in (errno.EROFS, errno.ENOSPC):
        def refuse(fd, code=code):
            raise OSError(code, os.strerror(code))

        with monkeypatch.context() as m:
            m.setattr(ntire.files.os, "fsync", refuse)
            out = tmp_path / "out" / "sr.png"
            argv = ["upscale", "--checkpoint", str(checkpoints["edsr"]), "--scale", "2", "--device", "cpu",
                    str(src), str(out)]
            assert main(argv) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ntire")]
        assert err == [f"ntire upscale: error: {out}: cannot write ({os.strerror(code)})"]
        assert not out.exists() and not _leftovers(tmp_path)


@pytest.fixture
def dataset_args(tmp_path) -> list[str]:
    """Training options that would run (the folder is never reached: the output fails first)."""
    return ["--data", str(tmp_path / "no-data"), "--set", "model.n_blocks=1", "--set", "model.n_feats=8",
            "--max-steps", "1", "--no-tracking", "--no-progress"]


@pytest.mark.parametrize("command", ["degrade", "compare"])
def test_an_existing_output_file_is_kept_unless_forced(checkpoints, tmp_path, command, capsys):
    hr = _image(tmp_path / "hr" / "0801.png", size=32)
    out = tmp_path / "out.png"
    out.write_bytes(b"an earlier result")
    argv = {
        "degrade": ["degrade", "--track", "bicubic", "--scale", "2", str(hr), str(out)],
        "compare": ["compare", "--hr", str(hr), "--checkpoint", str(checkpoints["edsr"]), "--scale", "2",
                    "--device", "cpu", "--box-size", "16", "--out", str(out)],
    }[command]
    assert main(argv) == 2
    assert f"{out}: already exists; pass --force to overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"an earlier result"
    assert main([*argv, "--force"]) == 0
    assert Image.open(out).format == "PNG"


def test_training_into_a_read_only_place_is_one_line(tmp_path, capsys, monkeypatch, dataset_args):
    # Injected EROFS (root ignores chmod): the folder cannot be made, so nothing starts.
    from pathlib import Path as RealPath

    real_mkdir = RealPath.mkdir

    def read_only(self, *args, **kwargs):
        if "read-only" in self.parts:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(RealPath, "mkdir", read_only)
    out = tmp_path / "read-only" / "run"
    assert main(["train", *dataset_args, "--output-dir", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ntire")]
    assert err == [f"ntire train: error: {out}: cannot lock the folder (Read-only file system)"]
