"""build_track: both tracks on a tiny DIV2K layout, one valid zip per scale, self-ensemble as the
paper chose, errors that name the scale or checkpoint at fault."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ntire.images import image_to_tensor, read_image
from ntire.submission.manifest import load_manifest
from ntire.submission.package import Expected, check_zip, expected_record_path, parse_readme

SCALES = (2, 3, 4)  # what the conftest's checkpoints and dataset cover


def test_builds_one_valid_zip_per_track_and_scale(built, dataset):
    _, out, results = built
    for track, rows in results.items():
        assert [r.scale for r in rows] == list(SCALES)
        for r in rows:
            assert r.zip_path == out / f"{track}_x{r.scale}.zip"
            with zipfile.ZipFile(r.zip_path) as z:
                names = z.namelist()
                assert sorted(names) == sorted(["readme.txt", f"0901x{r.scale}.png", f"0902x{r.scale}.png"])
                assert all("/" not in n for n in names) and not any(i.is_dir() for i in z.infolist())
                for name in names[1:]:
                    lr = Image.open(dataset / "DIV2K" / f"DIV2K_test_LR_{track}" / f"X{r.scale}" / name)
                    sr = Image.open(io.BytesIO(z.read(name)))
                    assert sr.format == "PNG" and sr.mode == "RGB"
                    assert sr.size == (lr.size[0] * r.scale, lr.size[1] * r.scale)
                readme, problems = parse_readme(z.read("readme.txt").decode())
            assert problems == [] and readme is not None
            assert readme.cpu is True  # made on the CPU
            assert readme.runtime > 0
            assert check_zip(r.zip_path, Expected.from_json(expected_record_path(r.zip_path).read_text())) == []


def test_readme_fields_come_from_manifest_and_run(built, checkpoints):
    _, _, results = built
    bicubic_x2 = results["bicubic"][0]
    readme, _ = parse_readme(zipfile.ZipFile(bicubic_x2.zip_path).read("readme.txt").decode())
    assert readme.extra_data is False
    assert "tiny MDSR" in readme.description and "mdsr-b1f8" in readme.description
    assert str(checkpoints["mdsr"]) in readme.description and "self-ensemble x8" in readme.description
    unknown_x2 = results["unknown"][0]
    readme, _ = parse_readme(zipfile.ZipFile(unknown_x2.zip_path).read("readme.txt").decode())
    assert readme.extra_data is True and "edsr-b1f8" in readme.description
    assert "no self-ensemble" in readme.description
    # The runtime is what this run measured per image.
    assert readme.runtime == pytest.approx(unknown_x2.runtime, rel=0.01, abs=1e-4)


def _mean_of_8(model, lr: np.ndarray, scale: int) -> np.ndarray:
    """The paper's self-ensemble, written out independently of ntire.inference."""
    x = image_to_tensor(lr)
    outs = []
    with torch.no_grad():
        for flip in (False, True):
            for k in range(4):
                t = x.flip(-1) if flip else x
                y = model(torch.rot90(t, k, dims=(2, 3)), scale)
                y = torch.rot90(y, -k, dims=(2, 3))
                outs.append(y.flip(-1) if flip else y)
    mean = torch.stack(outs).mean(0)
    return mean[0].round().clamp(0, 255).byte().permute(1, 2, 0).numpy()


def test_self_ensemble_on_for_bicubic_equals_mean_of_8_runs(built, dataset, checkpoints):
    from ntire.models.checkpoint import load_model

    _, out, results = built
    model, _ = load_model(checkpoints["mdsr"])
    for r in results["bicubic"]:
        assert r.self_ensemble is True
        lr = read_image(dataset / "DIV2K" / "DIV2K_test_LR_bicubic" / f"X{r.scale}" / f"0902x{r.scale}.png")
        sr = read_image(r.folder / f"0902x{r.scale}.png")
        want = _mean_of_8(model, lr, r.scale)
        diff = np.abs(sr.astype(int) - want.astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # float rounding at .5 only
        with torch.no_grad():
            plain = model(image_to_tensor(lr), r.scale)[0].round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
        assert np.abs(sr.astype(int) - plain.astype(int)).max() > 1  # the ensemble did change it


def test_self_ensemble_off_by_default_on_unknown(built, dataset, checkpoints):
    from ntire.models.checkpoint import load_model

    _, _, results = built
    model, _ = load_model(checkpoints["edsr"])
    r = results["unknown"][0]
    assert r.self_ensemble is False and r.scale == 2
    lr = read_image(dataset / "DIV2K" / "DIV2K_test_LR_unknown" / "X2" / "0901x2.png")
    with torch.no_grad():
        plain = model(image_to_tensor(lr), 2)[0].round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    assert np.abs(read_image(r.folder / "0901x2.png").astype(int) - plain.astype(int)).max() <= 1


def test_unserved_scale_and_missing_checkpoint_are_named(tmp_path, write_manifest, build):
    from ntire.errors import NtireError

    path = write_manifest(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["bicubic"]["models"][0]["scales"] = [2]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(NtireError, match="serves no x3 on the bicubic track"):
        build(load_manifest(path), tmp_path / "out", "bicubic", scales=(3,))
    data["bicubic"]["models"][0]["checkpoint"] = str(tmp_path / "nowhere")
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(NtireError, match="nowhere: checkpoint not found"):
        build(load_manifest(path), tmp_path / "out", "bicubic", scales=(2,))


def test_missing_checkpoint_fails_before_any_image_is_made_and_trains_nothing(
    tmp_path, write_manifest, build, monkeypatch
):
    """The builder does not train: a missing checkpoint stops it at once, nothing written."""
    import ntire.inference
    from ntire.errors import CheckpointError

    def boom(*args, **kwargs):
        raise AssertionError("the model ran although a checkpoint is missing")

    monkeypatch.setattr(ntire.inference, "upscale_image", boom)
    path = write_manifest(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["unknown"]["models"][1]["checkpoint"] = str(tmp_path / "runs" / "x3" / "model")
    data["unknown"]["models"][1]["made_by"] = "ntire train --config edsr_x3_from_x2"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(CheckpointError) as e:
        build(load_manifest(path), tmp_path / "out", "unknown")  # x2 is fine, x3/x4 are missing
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'runs' / 'x3' / 'model'}: checkpoint not found (unknown x3/x4)")
    assert "make it with `ntire train --config edsr_x3_from_x2`" in message
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "runs").exists()  # nothing trained in its place


def test_first_existing_candidate_checkpoint_serves(tmp_path, write_manifest, build, checkpoints):
    path = write_manifest(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["unknown"]["models"][0]["checkpoint"] = [str(tmp_path / "demo" / "model"), str(checkpoints["edsr"])]
    path.write_text(yaml.safe_dump(data))
    (r,) = build(load_manifest(path), tmp_path / "out", "unknown", scales=(2,))
    assert r.checkpoint == checkpoints["edsr"] and r.model_name == "edsr-b1f8"
    readme, _ = parse_readme(zipfile.ZipFile(r.zip_path).read("readme.txt").decode())
    assert f"checkpoint {checkpoints['edsr']}" in readme.description  # the one used, not the first


@pytest.mark.parametrize(
    "manifest_tile, override, expected",
    [("auto", "manifest", "auto"), (None, "manifest", None), (8, "auto", "auto"), ("auto", 0, 0), ("auto", 8, 8)],
)
def test_the_tile_flows_from_the_manifest_or_the_override_to_inference(
    tmp_path, write_manifest, build, monkeypatch, manifest_tile, override, expected
):
    import ntire.inference

    seen = []
    real = ntire.inference.upscale_image
    monkeypatch.setattr(ntire.inference, "upscale_image", lambda *a, **k: seen.append(k["tile"]) or real(*a, **k))
    manifest = load_manifest(write_manifest(tmp_path, tile=manifest_tile))
    (r,) = build(manifest, tmp_path / "out", "unknown", scales=(2,), tile=override)
    assert seen and set(seen) == {expected}
    assert check_zip(r.zip_path, Expected.from_json(expected_record_path(r.zip_path).read_text())) == []


def test_a_memory_budget_too_small_for_any_tile_stops_the_build_naming_the_memory(
    tmp_path, write_manifest, build, monkeypatch
):
    from ntire.tiles import MemoryBudgetError

    monkeypatch.setenv("NTIRE_MEMORY_BUDGET", "1KiB")
    manifest = load_manifest(write_manifest(tmp_path, tile="auto"))
    with pytest.raises(MemoryBudgetError, match=r"needs about .* 1 KiB is allowed by NTIRE_MEMORY_BUDGET"):
        build(manifest, tmp_path / "out", "unknown", scales=(2,))
    assert not (tmp_path / "out" / "unknown_x2.zip").exists()


def test_auto_runs_whole_images_when_the_memory_plan_fits_them_else_tiles(tmp_path, write_manifest, build,
                                                                         monkeypatch, checkpoints, dataset):
    import ntire.inference
    from ntire.models.checkpoint import load_model
    from ntire.tiles import estimate_memory

    tiled_calls = []
    real = ntire.inference.tiled_forward
    monkeypatch.setattr(ntire.inference, "tiled_forward", lambda *a, **k: tiled_calls.append(1) or real(*a, **k))
    manifest = load_manifest(write_manifest(tmp_path, tile="auto", batch_size=4))
    monkeypatch.setenv("NTIRE_MEMORY_BUDGET", "1G")
    (whole,) = build(manifest, tmp_path / "whole", "bicubic", scales=(2,))
    assert tiled_calls == []  # the plan fits: every image whole, its ensemble in passes of 4 variants
    # Just under what the larger image needs whole: it is tiled (the smaller one may still run whole).
    _, config = load_model(checkpoints["mdsr"])
    w, h = Image.open(dataset / "DIV2K" / "DIV2K_test_LR_bicubic" / "X2" / "0902x2.png").size  # the larger
    need = estimate_memory(config, 2, h, w, tile=None, self_ensemble=True, max_batch=1)  # fewer variants first
    monkeypatch.setenv("NTIRE_MEMORY_BUDGET", str(need - 1))
    (tiled,) = build(manifest, tmp_path / "tiled", "bicubic", scales=(2,))
    assert tiled_calls
    for name in ("0901x2.png", "0902x2.png"):
        a, b = read_image(whole.folder / name).astype(int), read_image(tiled.folder / name).astype(int)
        assert np.abs(a - b).max() <= 1  # the same image, up to float rounding


def test_out_of_memory_is_one_line_with_what_to_change_and_keeps_finished_images(
    tmp_path, write_manifest, build, monkeypatch
):
    import ntire.inference
    from ntire.errors import ConfigError

    real = ntire.inference.upscale_image
    calls = []

    def oom_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(ntire.inference, "upscale_image", oom_on_the_second)
    manifest = load_manifest(write_manifest(tmp_path))
    with pytest.raises(ConfigError, match=r"^unknown x2: out of memory on cpu \(whole images, 8 per pass\); run again "
                                          r"with --tile 512, .* \(finished images are kept\)$"):
        build(manifest, tmp_path / "out", "unknown", scales=(2,))
    monkeypatch.setattr(ntire.inference, "upscale_image", real)
    (again,) = build(manifest, tmp_path / "out", "unknown", scales=(2,))
    assert (again.done, again.skipped) == (1, 1)


def test_zips_are_packaged_beside_the_next_scales_compute_and_their_failure_stops_the_build(
    tmp_path, write_manifest, build, monkeypatch
):
    import threading

    import ntire.submission.build
    from ntire.submission.package import SubmissionError

    real = ntire.submission.build.write_zip
    threads = []

    def spy(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(ntire.submission.build, "write_zip", spy)
    manifest = load_manifest(write_manifest(tmp_path))
    results = build(manifest, tmp_path / "out", "bicubic")
    assert [r.scale for r in results] == list(SCALES) and all(r.zip_path.is_file() for r in results)
    assert len(threads) == 3 and all(name.startswith("ntire-package") for name in threads)

    def broken(folder, zip_path, expected):
        raise SubmissionError(str(folder), ["0901x2.png: cannot decode the PNG"])

    monkeypatch.setattr(ntire.submission.build, "write_zip", broken)
    with pytest.raises(SubmissionError, match="0901x2.png: cannot decode the PNG"):
        build(manifest, tmp_path / "out2", "bicubic")
