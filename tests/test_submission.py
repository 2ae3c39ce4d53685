"""Submissions: build both tracks on a tiny DIV2K-layout dataset, validate, zip, resume, ensemble."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ntire.models.checkpoint import save_model
from ntire.config import ModelConfig
from ntire.data.degrade import bicubic_downscale, bicubic_upscale, unknown_downscale
from ntire.images import encode_png, image_to_tensor, read_image, write_png
from ntire.metrics import score
from ntire.models.build import build_model
from ntire.submission import (
    Manifest,
    RunOptions,
    build_track,
    load_manifest,
    write_zip,
)
from ntire.submission_check import (
    README_FIELDS,
    Expected,
    Readme,
    SubmissionError,
    check_zip,
    expected_record_path,
    format_readme,
    parse_readme,
)

REPO = Path(__file__).resolve().parents[1]
SCALES = (2, 3, 4)
HR_SIZES = {"0801": (48, 60), "0802": (60, 48)}  # (height, width): multiples of 2, 3 and 4
TEST_LR = {"0901": (12, 12), "0902": (12, 18)}  # LR (height, width) of the test split, per x2


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    from skimage import data

    full = data.astronaut() if seed == 0 else data.chelsea()
    return np.ascontiguousarray(full[100 : 100 + h, 120 : 120 + w])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A tiny DIV2K layout: valid 0801-0802 (HR + LR), test 0901-0902 (LR only), both tracks."""
    root = tmp_path_factory.mktemp("data")
    base = root / "DIV2K"
    for i, (name, (h, w)) in enumerate(HR_SIZES.items()):
        hr = _photo(h, w, i)
        write_png(base / "DIV2K_valid_HR" / f"{name}.png", hr)
        for track, down in (("bicubic", bicubic_downscale), ("unknown", unknown_downscale)):
            for s in SCALES:
                write_png(base / f"DIV2K_valid_LR_{track}" / f"X{s}" / f"{name}x{s}.png", down(hr, s))
    for i, (name, (h, w)) in enumerate(TEST_LR.items()):
        hr = _photo(h * 2 * 6, w * 2 * 6, i)  # divisible by every scale
        for track, down in (("bicubic", bicubic_downscale), ("unknown", unknown_downscale)):
            for s in SCALES:
                write_png(base / f"DIV2K_test_LR_{track}" / f"X{s}" / f"{name}x{s}.png", down(hr, s))
    return root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A tiny MDSR for x2-x4 and a tiny EDSR x2, saved in our format."""
    out = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    mdsr = ModelConfig(kind="mdsr", scales=SCALES, n_blocks=1, n_feats=8)
    edsr = ModelConfig(kind="edsr", scales=(2,), n_blocks=1, n_feats=8)
    return {
        "mdsr": save_model(out / "mdsr", build_model(mdsr), mdsr),
        "edsr": save_model(out / "edsr", build_model(edsr), edsr),
    }


def _manifest(tmp: Path, dataset: Path, checkpoints: dict[str, Path], **extra) -> Path:
    data = {
        "name": "tiny",
        "data": str(dataset),
        "split": "test",
        "tile": None,
        "batch_size": 8,  # the 8 ensemble variants in one forward pass
        "bicubic": {"models": [{"checkpoint": str(checkpoints["mdsr"]), "scales": [2, 3, 4], "description": "tiny MDSR"}]},
        "unknown": {
            "models": [
                {"checkpoint": str(checkpoints["edsr"]), "scales": [2], "extra_data": True},
                {"checkpoint": str(checkpoints["mdsr"]), "scales": [3, 4]},
            ]
        },
    }
    data.update(extra)
    path = tmp / "manifest.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _build(manifest: Manifest, dataset: Path, out: Path, track: str, **kwargs):
    split = kwargs.pop("split", None)
    scales = kwargs.pop("scales", None)
    options = RunOptions(out=out, progress=False, **kwargs)
    return build_track(manifest, track, scales=scales, split=split, data_root=dataset, options=options)


@pytest.fixture(scope="module")
def built(tmp_path_factory, dataset, checkpoints):
    """Both tracks built on the test split, once for the module."""
    tmp = tmp_path_factory.mktemp("built")
    manifest = load_manifest(_manifest(tmp, dataset, checkpoints))
    out = tmp / "out"
    results = {t: _build(manifest, dataset, out, t) for t in ("bicubic", "unknown")}
    return manifest, out, results


# ---------------------------------------------------------------------------------------------
# Building


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


def test_resume_redoes_nothing_finished(built, dataset, monkeypatch):
    import ntire.inference

    manifest, out, results = built
    folder = results["bicubic"][1].folder
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")}
    zip_bytes = results["bicubic"][1].zip_path.read_bytes()

    def boom(*args, **kwargs):
        raise AssertionError("the model ran for a finished image")

    monkeypatch.setattr(ntire.inference, "upscale_image", boom)
    again = _build(manifest, dataset, out, "bicubic", scales=(3,))
    assert (again[0].done, again[0].skipped) == (0, 2)
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")} == before
    assert again[0].runtime == pytest.approx(results["bicubic"][1].runtime)
    assert zipfile.ZipFile(again[0].zip_path).namelist() == zipfile.ZipFile(io.BytesIO(zip_bytes)).namelist()


def test_resume_redoes_only_missing_or_broken_images(tmp_path, dataset, checkpoints):
    manifest = load_manifest(_manifest(tmp_path, dataset, checkpoints))
    first = _build(manifest, dataset, tmp_path / "out", "unknown", scales=(2,))[0]
    (first.folder / "0901x2.png").unlink()
    Image.new("RGB", (5, 5)).save(first.folder / "0902x2.png")  # wrong size: not finished
    again = _build(manifest, dataset, tmp_path / "out", "unknown", scales=(2,), tile=8)[0]  # tiled: same setup
    assert (again.done, again.skipped) == (2, 0)
    third = _build(manifest, dataset, tmp_path / "out", "unknown", scales=(2,), self_ensemble=True)[0]
    assert (third.done, third.skipped) == (2, 0)  # another setup: nothing reused
    assert check_zip(third.zip_path, Expected.from_json(expected_record_path(third.zip_path).read_text())) == []


def test_valid_split_scores_bicubic_model_and_ensemble(tmp_path, dataset, checkpoints):
    manifest = load_manifest(_manifest(tmp_path, dataset, checkpoints))
    (r,) = _build(manifest, dataset, tmp_path / "out", "bicubic", scales=(4,), split="valid")
    assert set(r.scores) == {"bicubic", "model", "model+"}
    want = []
    for name in HR_SIZES:
        lr = read_image(dataset / "DIV2K" / "DIV2K_valid_LR_bicubic" / "X4" / f"{name}x4.png")
        hr = read_image(dataset / "DIV2K" / "DIV2K_valid_HR" / f"{name}.png")
        want.append(score(bicubic_upscale(lr, 4), hr, scale=4, protocol="div2k").psnr)
    assert r.scores["bicubic"]["psnr"] == pytest.approx(np.mean(want), abs=1e-9)
    assert (tmp_path / "out" / "bicubic" / "x4" / "alt").is_dir()  # the plain run, not zipped
    assert sorted(zipfile.ZipFile(r.zip_path).namelist()) == ["0801x4.png", "0802x4.png", "readme.txt"]


def test_unserved_scale_and_missing_checkpoint_are_named(tmp_path, dataset, checkpoints):
    from ntire.errors import NtireError

    path = _manifest(tmp_path, dataset, checkpoints)
    data = yaml.safe_load(path.read_text())
    data["bicubic"]["models"][0]["scales"] = [2]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(NtireError, match="serves no x3 on the bicubic track"):
        _build(load_manifest(path), dataset, tmp_path / "out", "bicubic", scales=(3,))
    data["bicubic"]["models"][0]["checkpoint"] = str(tmp_path / "nowhere")
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(NtireError, match="nowhere: checkpoint not found"):
        _build(load_manifest(path), dataset, tmp_path / "out", "bicubic", scales=(2,))


# ---------------------------------------------------------------------------------------------
# Manifests


@pytest.mark.parametrize("path", sorted((REPO / "submissions").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_manifests_load(path):
    manifest = load_manifest(path)
    assert manifest.tracks


def test_manifest_errors_name_the_key(tmp_path):
    from ntire.errors import ConfigError

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbicubic: {models: [{checkpoint: a, scales: [2], self_ensembel: true}]}\n")
    with pytest.raises(ConfigError, match="self_ensembel"):
        load_manifest(bad)
    bad.write_text("name: x\nbicubic: {models: [{checkpoint: a, scales: [2]}, {checkpoint: b, scales: [2, 3]}]}\n")
    with pytest.raises(ConfigError, match="x2 is served by both a and b"):
        load_manifest(bad)


# ---------------------------------------------------------------------------------------------
# The validator


def _png16(width: int, height: int) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    raw = b"".join(b"\x00" + b"\x12\x34" * 3 * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _pil_png(mode: str, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


GOOD_README = format_readme(Readme(runtime=1.5, cpu=True, extra_data=False, description="EDSR+, checkpoint x"))
EXPECTED = Expected(scale=2, lr_sizes={"0901x2.png": (5, 4), "0902x2.png": (6, 3)})


def _good_members() -> dict[str, bytes]:
    rgb = lambda w, h: encode_png(np.zeros((h, w, 3), np.uint8))  # noqa: E731
    return {"readme.txt": GOOD_README.encode(), "0901x2.png": rgb(10, 8), "0902x2.png": rgb(12, 6)}


def _zip(tmp_path: Path, members: dict[str, bytes], folders: tuple[str, ...] = ()) -> Path:
    path = tmp_path / "sub.zip"
    with zipfile.ZipFile(path, "w") as z:
        for folder in folders:
            z.writestr(zipfile.ZipInfo(folder + "/"), b"")
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_validator_accepts_a_good_submission(tmp_path):
    assert check_zip(_zip(tmp_path, _good_members()), EXPECTED) == []
    assert check_zip(_zip(tmp_path, _good_members())) == []  # without LR sizes too


BAD = {
    "missing image": (lambda m: m.pop("0902x2.png"), "0902x2.png: missing"),
    "wrong size": (lambda m: m.update({"0901x2.png": encode_png(np.zeros((8, 11, 3), np.uint8))}), "0901x2.png: 11x8 pixels; expected 10x8"),
    "greyscale": (lambda m: m.update({"0901x2.png": _pil_png("L", (10, 8))}), "0901x2.png: 8-bit greyscale PNG"),
    "rgba": (lambda m: m.update({"0901x2.png": _pil_png("RGBA", (10, 8))}), "0901x2.png: 8-bit RGBA PNG"),
    "palette": (lambda m: m.update({"0901x2.png": _pil_png("P", (10, 8))}), "bit palette PNG; expected 8-bit RGB"),
    "16-bit": (lambda m: m.update({"0901x2.png": _png16(10, 8)}), "0901x2.png: 16-bit RGB PNG"),
    "not png": (lambda m: m.update({"0901x2.png": b"GIF89a..."}), "0901x2.png: not a PNG"),
    "extra image": (lambda m: m.update({"0999x2.png": m["0901x2.png"]}), "0999x2.png: extra image"),
    "extra file": (lambda m: m.update({"notes.txt": b"hi"}), "notes.txt: unexpected file"),
    "file in folder": (lambda m: m.update({"sr/0903x2.png": m["0901x2.png"]}), "sr/: folder holding 0903x2.png"),
    "no readme": (lambda m: m.pop("readme.txt"), "readme.txt: missing"),
    "readme field missing": (
        lambda m: m.update({"readme.txt": GOOD_README.replace("CPU[1] / GPU[0] : 1\n", "").encode()}),
        "field 'CPU[1] / GPU[0]' is missing",
    ),
    "readme bad flag": (
        lambda m: m.update({"readme.txt": GOOD_README.replace("No Extra Data [0] : 0", "No Extra Data [0] : yes").encode()}),
        "is 'yes'; expected 0 or 1",
    ),
    "readme bad runtime": (
        lambda m: m.update({"readme.txt": GOOD_README.replace(": 1.50", ": fast").encode()}),
        "'runtime per image [s]' is 'fast'",
    ),
    "readme empty description": (
        lambda m: m.update({"readme.txt": GOOD_README.replace("EDSR+, checkpoint x", "").encode()}),
        "'Other description' is empty",
    ),
    "readme stray line": (
        lambda m: m.update({"readme.txt": (GOOD_README + "GPU model : V100\n").encode()}),
        "line 5 'GPU model : V100' is not one of the fields",
    ),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_validator_names_each_kind_of_problem(tmp_path, kind):
    mutate, message = BAD[kind]
    members = _good_members()
    mutate(members)
    problems = check_zip(_zip(tmp_path, members), EXPECTED)
    assert any(message in p for p in problems), problems


def test_validator_reports_a_stray_empty_folder_and_every_problem_at_once(tmp_path):
    members = _good_members()
    members.pop("0901x2.png")
    members["0902x2.png"] = _pil_png("RGBA", (12, 6))
    problems = check_zip(_zip(tmp_path, members, folders=("__MACOSX",)), EXPECTED)
    assert any(p.startswith("__MACOSX/: folder") for p in problems)
    assert any("0901x2.png: missing" in p for p in problems)
    assert any("0902x2.png: 8-bit RGBA" in p for p in problems)


def test_validator_without_sizes_checks_scale_consistency(tmp_path):
    members = _good_members()
    members["0903x3.png"] = members["0901x2.png"]
    assert any("different scales" in p for p in check_zip(_zip(tmp_path, members)))


def test_readme_round_trip_and_exact_fields():
    text = format_readme(Readme(runtime=0.0123, cpu=False, extra_data=True, description="a\nb"))
    assert [line.split(" : ")[0] for line in text.splitlines()] == list(README_FIELDS)
    readme, problems = parse_readme(text)
    assert problems == [] and readme == Readme(runtime=0.0123, cpu=False, extra_data=True, description="a b")


def test_broken_build_never_replaces_a_valid_zip(tmp_path):
    folder = tmp_path / "sr"
    folder.mkdir()
    for name, data in _good_members().items():
        (folder / name).write_bytes(data)
    target = tmp_path / "bicubic_x2.zip"
    write_zip(folder, target, EXPECTED)
    good = target.read_bytes()
    assert check_zip(target, EXPECTED) == []

    (folder / "0902x2.png").unlink()
    (folder / "0901x2.png").write_bytes(_pil_png("L", (10, 8)))
    with pytest.raises(SubmissionError) as e:
        write_zip(folder, target, EXPECTED)
    assert "0902x2.png: missing" in str(e.value) and "0901x2.png: 8-bit greyscale" in str(e.value)
    assert target.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bicubic_x2.inputs.json", "bicubic_x2.zip", "sr"]


def test_zip_check_of_the_built_zip_itself(tmp_path, monkeypatch):
    """A zip that breaks after the folder passed (e.g. a full disk) is caught before the rename."""
    import ntire.submission as submission

    folder = tmp_path / "sr"
    folder.mkdir()
    for name, data in _good_members().items():
        (folder / name).write_bytes(data)
    target = tmp_path / "x.zip"
    target.write_bytes(b"old valid zip")
    monkeypatch.setattr(submission, "check_zip", lambda path, expected: ["x.zip: truncated"])
    with pytest.raises(SubmissionError, match="truncated"):
        write_zip(folder, target, EXPECTED)
    assert target.read_bytes() == b"old valid zip"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ---------------------------------------------------------------------------------------------
# The command line


def test_submit_check_cli(tmp_path, built, dataset, capsys):
    from ntire.__main__ import main

    _, _, results = built
    good = results["bicubic"][0].zip_path
    assert main(["submit", "--check", str(good)]) == 0
    assert "valid" in capsys.readouterr().out
    lr_dir = dataset / "DIV2K" / "DIV2K_test_LR_bicubic" / "X2"
    assert main(["submit", "--check", str(good), "--lr", str(lr_dir)]) == 0
    # The x3 zip against the x2 LR folder: wrong names and sizes, each reported.
    assert main(["submit", "--check", str(results["bicubic"][1].zip_path), "--lr", str(lr_dir)]) == 1
    err = capsys.readouterr().err
    assert "0901x2.png: missing" in err and "0901x3.png: extra image" in err

    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(broken, "w") as dst:
        for name in src.namelist():
            if name != "0901x2.png":
                dst.writestr(name, src.read(name))
    assert main(["submit", "--check", str(broken), "--lr", str(lr_dir)]) == 1
    assert "0901x2.png: missing" in capsys.readouterr().err


def test_submit_cli_builds_from_manifest_without_mlflow(tmp_path, dataset, checkpoints, capsys, monkeypatch):
    import sys

    from ntire.__main__ import main

    manifest = _manifest(tmp_path, dataset, checkpoints)
    out = tmp_path / "out"
    argv = ["submit", "--manifest", str(manifest), "--track", "unknown", "--scales", "2", "--split", "valid"]
    argv += ["--out", str(out), "--device", "cpu", "--no-progress"]
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if mlflow were not installed
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "unknown" in captured.out and "x2" in captured.out and "bicubic" in captured.out
    assert "not installed" in captured.err and "not logged" in captured.err
    assert (out / "unknown_x2.zip").is_file()
    assert (out / "unknown-report" / "results.json").is_file()


def test_results_are_logged_to_mlflow(tmp_path, built):
    from mlflow.tracking import MlflowClient

    from ntire.submission import log_results, write_report

    _, _, results = built
    report = tmp_path / "report"
    write_report(results["bicubic"], report)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # an absolute path: four slashes
    said: list[str] = []
    log_results(results["bicubic"], run_name="submit-tiny", params={"track": "bicubic"}, report_dir=report, uri=uri, say=said.append)
    assert any("logged to MLflow" in s for s in said), said
    (run,) = MlflowClient(uri).search_runs(MlflowClient(uri).get_experiment_by_name("ntire-submissions").experiment_id)
    assert run.info.run_name == "submit-tiny" and run.data.params["track"] == "bicubic"
    assert run.data.metrics["x3_runtime_s"] == pytest.approx(results["bicubic"][1].runtime)


def test_missing_checkpoint_falls_back_to_a_quick_model(tmp_path, dataset, checkpoints, monkeypatch):
    import shutil

    import ntire.submission as submission
    from ntire.submission import ModelEntry, QuickTrain, describe, ensure_checkpoint

    calls = []

    def fake_train(spec, *, data_root, track, progress=True):
        calls.append((spec.output, data_root, track))
        return Path(shutil.copytree(checkpoints["mdsr"], Path(spec.output) / "model"))

    monkeypatch.setattr(submission, "quick_train", fake_train)
    spec = QuickTrain(output=str(tmp_path / "quick"))
    entry = ModelEntry(checkpoint=str(tmp_path / "demo" / "model"), scales=(2,), description="the demo", fallback=spec)
    first = ensure_checkpoint(entry, dataset, "unknown")
    again = ensure_checkpoint(entry, dataset, "unknown")
    assert first == again == tmp_path / "quick" / "model"
    assert calls == [(str(tmp_path / "quick"), dataset, "unknown")]  # trained once, then reused
    text = describe(entry, first, "mdsr-b1f8", 1000, False)
    assert "stand-in for the missing" in text and "the demo" not in text and str(first) in text


def test_make_submission_target_calls_ntire_submit():
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(
        ["make", "-n", "submission", "TRACK=unknown", "SCALES=3 4", "SPLIT=valid", "DATA=/d", "MANIFEST=m.yaml"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout
    assert "-m ntire submit --manifest m.yaml --track unknown --scales 3 4 --split valid --data /d" in out
    default = subprocess.run(["make", "-n", "submission"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "-m ntire submit --manifest submissions/sample.yaml --track bicubic" in default
    assert "--scales" not in default and "--split" not in default
