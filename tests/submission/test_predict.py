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


def _lr_folder(tmp_path, names=("0901x2", "0902x2", "0903x2", "0904x2", "0905x2")):
    from ntire.images import write_png

    rng = np.random.default_rng(0)
    inputs = []
    for name in names:
        write_png(tmp_path / "lr" / f"{name}.png", rng.integers(0, 256, (3, 4, 3), dtype=np.uint8))
        inputs.append(LRInput(path=tmp_path / "lr" / f"{name}.png"))
    return inputs


def _double(lr):
    return np.repeat(np.repeat(lr, 2, axis=0), 2, axis=1)


def test_a_failed_write_leaves_that_image_unrecorded_and_the_others_recorded(tmp_path, monkeypatch):
    import ntire.images

    inputs = _lr_folder(tmp_path)
    real = ntire.images.write_png

    def full_disk_on_the_third(path, image, compress_level=6):
        if path.name == "0903x2.png":
            raise OSError(28, "No space left on device")
        real(path, image, compress_level)

    monkeypatch.setattr(ntire.images, "write_png", full_disk_on_the_third)
    out, state = tmp_path / "sr", tmp_path / "state.json"
    with pytest.raises(OSError, match="No space left"):
        predict(_double, inputs, out, scale=2, setup={"k": 1}, state_path=state, progress=False, io_workers=2)
    recorded = set(json.loads(state.read_text())["images"])
    assert "0903x2.png" not in recorded and not (out / "0903x2.png").exists()
    assert recorded == {p.name for p in out.glob("*.png")}  # every record has its image, and the reverse
    assert {"0901x2.png", "0902x2.png"} <= recorded
    monkeypatch.setattr(ntire.images, "write_png", real)
    again = predict(_double, inputs, out, scale=2, setup={"k": 1}, state_path=state, progress=False)
    assert again.skipped == len(recorded) and again.done == 5 - len(recorded)


def test_processes_split_a_folder_and_a_resume_with_another_count_reuses_their_work(tmp_path):
    from ntire.submission.predict import Share, collect, part_path

    inputs = _lr_folder(tmp_path)
    out, state = tmp_path / "sr", tmp_path / "state.json"
    # Process 1 of 2 finished its share; process 0 was killed before making anything.
    first = predict(_double, inputs, out, scale=2, setup={"k": 1}, state_path=state, progress=False,
                    share=Share(1, 2))
    assert first.done == 2 and sorted(first.seconds) == ["0902x2.png", "0904x2.png"]
    assert part_path(state, 1).is_file() and not state.exists()
    with pytest.raises(Exception, match=r"3 image\(s\) not made \(0901x2.png, 0903x2.png, 0905x2.png\)"):
        collect(inputs, state, {"k": 1})
    # Run again as one process: only process 0's share is made.
    again = predict(_double, inputs, out, scale=2, setup={"k": 1}, state_path=state, progress=False)
    assert (again.done, again.skipped) == (3, 2)
    record = collect(inputs, state, {"k": 1})
    assert sorted(record.seconds) == [i.sr_name for i in inputs]
    assert not list(tmp_path.glob("state.part-*.json"))  # merged into the state file
    images = json.loads(state.read_text())["images"]
    assert {v["process"] for v in images.values()} == {0, 1}


def test_a_record_of_another_setup_is_dropped_before_anything_is_overwritten(tmp_path):
    from ntire.submission.predict import Share, part_path

    inputs = _lr_folder(tmp_path)
    out, state = tmp_path / "sr", tmp_path / "state.json"
    predict(_double, inputs, out, scale=2, setup={"k": 1}, state_path=state, progress=False)
    # A two-process run of another setup (process 0 finished, process 1 killed at once): the first
    # setup's record must not survive it, since its images were overwritten.
    predict(lambda lr: _double(lr)[:, ::-1].copy(), inputs, out, scale=2, setup={"k": 2},
            state_path=state, progress=False, share=Share(0, 2))
    assert not state.exists() and part_path(state, 0).is_file()
    redo = predict(_double, inputs, out, scale=2, setup={"k": 1}, state_path=state, progress=False)
    assert redo.skipped == 0 and redo.done == 5
