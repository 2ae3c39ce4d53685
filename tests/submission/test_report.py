"""report: valid-split scores against bicubic and the other ensemble setting, the table, results.json
and the MLflow run."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from ntire.data.degrade import bicubic_upscale
from ntire.images import read_image
from ntire.metrics import score
from ntire.submission.manifest import load_manifest
from ntire.submission.report import format_results, log_results, results_metrics, write_report

VALID = ("0801", "0802")  # the conftest dataset's valid images


def test_valid_split_scores_bicubic_model_and_ensemble(tmp_path, dataset, write_manifest, build):
    manifest = load_manifest(write_manifest(tmp_path))
    (r,) = build(manifest, tmp_path / "out", "bicubic", scales=(4,), split="valid")
    assert set(r.scores) == {"bicubic", "model", "model+"}
    want = []
    for name in VALID:
        lr = read_image(dataset / "DIV2K" / "DIV2K_valid_LR_bicubic" / "X4" / f"{name}x4.png")
        hr = read_image(dataset / "DIV2K" / "DIV2K_valid_HR" / f"{name}.png")
        want.append(score(bicubic_upscale(lr, 4), hr, scale=4, protocol="div2k").psnr)
    assert r.scores["bicubic"]["psnr"] == pytest.approx(np.mean(want), abs=1e-9)
    assert (tmp_path / "out" / "bicubic" / "x4" / "alt").is_dir()  # the plain run, not zipped
    assert sorted(zipfile.ZipFile(r.zip_path).namelist()) == ["0801x4.png", "0802x4.png", "readme.txt"]
    assert json.loads((tmp_path / "out" / "bicubic" / "x4" / "scores.json").read_text()) == r.scores

    table = format_results([r])
    assert "bicubic" in table.splitlines()[0] and "gain(+)" in table.splitlines()[0]
    gain = r.scores["model+"]["psnr"] - r.scores["model"]["psnr"]
    assert f"{gain:+.2f} dB" in table and "DIV2K protocol" in table
    metrics = results_metrics([r])
    assert metrics["x4_psnr_model_plus"] == r.scores["model+"]["psnr"]
    assert metrics["x4_ssim_bicubic"] == r.scores["bicubic"]["ssim"]


def test_a_mis_sized_sr_image_is_an_error_naming_it(tmp_path, dataset):
    from PIL import Image

    from ntire.errors import DataError
    from ntire.submission.predict import lr_inputs
    from ntire.submission.report import score_folder

    inputs = lr_inputs(dataset, "valid", "bicubic", 2)
    sr = tmp_path / "sr"
    sr.mkdir()
    for item in inputs:
        Image.new("RGB", (7, 7)).save(sr / item.sr_name)
    with pytest.raises(DataError, match="0801x2.png: SR image is 7x7"):
        score_folder(sr, inputs, 2)


def test_report_files_and_test_split_table(tmp_path, built):
    _, _, results = built
    write_report(results["unknown"], tmp_path / "report")
    rows = json.loads((tmp_path / "report" / "results.json").read_text())
    assert [(row["track"], row["scale"], row["self_ensemble"]) for row in rows] == [
        ("unknown", 2, False), ("unknown", 3, False), ("unknown", 4, False)
    ]
    assert rows[0]["model_name"] == "edsr-b1f8" and rows[0]["scores"] is None
    table = (tmp_path / "report" / "table.txt").read_text()
    assert "gain(+)" not in table and str(results["unknown"][0].zip_path) in table  # test split: no scores


def test_results_are_logged_to_mlflow(tmp_path, built):
    from mlflow.tracking import MlflowClient

    _, _, results = built
    report = tmp_path / "report"
    write_report(results["bicubic"], report)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # an absolute path: four slashes
    said: list[str] = []
    run_id = log_results(
        results["bicubic"], run_name="submit-tiny", params={"track": "bicubic"}, report_dir=report, uri=uri,
        say=said.append,
    )
    assert any("logged to MLflow" in s for s in said), said
    (run,) = MlflowClient(uri).search_runs(MlflowClient(uri).get_experiment_by_name("ntire-submissions").experiment_id)
    assert run.info.run_id == run_id
    assert run.info.run_name == "submit-tiny" and run.data.params["track"] == "bicubic"
    assert run.data.metrics["x3_runtime_s"] == pytest.approx(results["bicubic"][1].runtime)
    # Where it came from: code, versions, host, the device; the data folder when given.
    tags = run.data.tags
    assert {"ntire.code.commit", "ntire.code.dirty", "ntire.version.torch", "ntire.host"} <= set(tags)
    assert tags["ntire.device"] == ",".join(sorted({r.device for r in results["bicubic"]}))
    assert "ntire.data.source" not in tags  # no params["data"] here
    run_id = log_results(results["bicubic"], run_name="submit-tiny-2", params={"data": str(report)},
                         report_dir=report, uri=uri, say=said.append)
    tags = MlflowClient(uri).get_run(run_id).data.tags
    assert tags["ntire.data.source"] == str(report.resolve()) and tags["ntire.data.files"] == "2"
