"""predict: resumable SR folders; only missing, broken or differently made images are redone."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from ntire.submission.manifest import load_manifest
from ntire.submission.package import Expected, check_zip, expected_record_path
from ntire.submission.predict import LRInput, png_header, predict, sr_name


def test_resume_redoes_nothing_finished(built, build, monkeypatch):
    import ntire.inference

    manifest, out, results = built
    folder = results["bicubic"][1].folder
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")}
    zip_bytes = results["bicubic"][1].zip_path.read_bytes()

    def boom(*args, **kwargs):
        raise AssertionError("the model ran for a finished image")

    monkeypatch.setattr(ntire.inference, "upscale_image", boom)
    again = build(manifest, out, "bicubic", scales=(3,))
    assert (again[0].done, again[0].skipped) == (0, 2)
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")} == before
    assert again[0].runtime == pytest.approx(results["bicubic"][1].runtime)
    assert zipfile.ZipFile(again[0].zip_path).namelist() == zipfile.ZipFile(io.BytesIO(zip_bytes)).namelist()


def test_resume_redoes_only_missing_or_broken_images(tmp_path, write_manifest, build):
    manifest = load_manifest(write_manifest(tmp_path))
    first = build(manifest, tmp_path / "out", "unknown", scales=(2,))[0]
    (first.folder / "0901x2.png").unlink()
    Image.new("RGB", (5, 5)).save(first.folder / "0902x2.png")  # wrong size: not finished
    again = build(manifest, tmp_path / "out", "unknown", scales=(2,), tile=8)[0]  # tiled: same setup
    assert (again.done, again.skipped) == (2, 0)
    third = build(manifest, tmp_path / "out", "unknown", scales=(2,), self_ensemble=True)[0]
    assert (third.done, third.skipped) == (2, 0)  # another setup: nothing reused
    assert check_zip(third.zip_path, Expected.from_json(expected_record_path(third.zip_path).read_text())) == []


def test_predict_records_runtimes_and_drops_stale_images(tmp_path):
    from ntire.images import write_png

    lr_dir = tmp_path / "lr"
    inputs = []
    for name in ("0901x2", "0902x2"):
        write_png(lr_dir / f"{name}.png", np.zeros((3, 4, 3), np.uint8))
        inputs.append(LRInput(path=lr_dir / f"{name}.png"))
    out = tmp_path / "sr"
    write_png(out / "0999x2.png", np.zeros((6, 8, 3), np.uint8))  # from an earlier input list
    upscale = lambda lr: np.repeat(np.repeat(lr, 2, axis=0), 2, axis=1)  # noqa: E731
    record = predict(upscale, inputs, out, scale=2, setup={"k": 1}, state_path=tmp_path / "state.json", progress=False)
    assert (record.done, record.skipped) == (2, 0) and set(record.seconds) == {"0901x2.png", "0902x2.png"}
    assert sorted(p.name for p in out.iterdir()) == ["0901x2.png", "0902x2.png"]
    assert png_header((out / "0901x2.png").read_bytes()) == (8, 6, 8, 2)
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["setup"] == {"k": 1} and set(state["images"]) == {"0901x2.png", "0902x2.png"}
    again = predict(upscale, inputs, out, scale=2, setup={"k": 1}, state_path=tmp_path / "state.json", progress=False)
    assert (again.done, again.skipped) == (0, 2) and again.runtime == pytest.approx(record.runtime)


def test_predict_rejects_a_model_output_of_the_wrong_size(tmp_path):
    from ntire.errors import NtireError
    from ntire.images import write_png

    write_png(tmp_path / "0901x2.png", np.zeros((3, 4, 3), np.uint8))
    with pytest.raises(NtireError, match="0901x2.png: model returned 4x3, not x2 the LR size"):
        predict(lambda lr: lr, [LRInput(path=tmp_path / "0901x2.png")], tmp_path / "sr", scale=2,
                setup={}, state_path=tmp_path / "state.json", progress=False)


def test_sr_name_is_the_lr_name_as_png():
    assert sr_name("DIV2K_test_LR_bicubic/X4/0901x4.png") == "0901x4.png"
    assert png_header(b"GIF89a" + bytes(40)) is None


def test_a_killed_runs_temp_file_is_cleared_and_never_packaged(tmp_path):
    from ntire.images import write_png
    from ntire.submission.package import check_folder

    lr_dir = tmp_path / "lr"
    write_png(lr_dir / "0901x2.png", np.zeros((3, 4, 3), np.uint8))
    out = tmp_path / "sr"
    out.mkdir()
    (out / ".0901x2.png.x8k2l1.tmp").write_bytes(b"")  # SIGKILL mid-write leaves this
    upscale = lambda lr: np.repeat(np.repeat(lr, 2, axis=0), 2, axis=1)  # noqa: E731
    predict(upscale, [LRInput(path=lr_dir / "0901x2.png")], out, scale=2, setup={}, state_path=tmp_path / "s.json",
            progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["0901x2.png"]
    (out / ".0902x2.png.q1w2e3.tmp").write_bytes(b"")  # another writer's: left, but never read
    assert not any("tmp" in p for p in check_folder(out))
