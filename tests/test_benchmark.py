"""The Table 3 report: sets in their published layouts, each under its protocol; bicubic checked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ntire.benchmark import (
    DIV2K_SET,
    available_sets,
    format_markdown,
    run_benchmark,
    write_report,
)
from ntire.config import ModelConfig
from ntire.data.degrade import bicubic_downscale, bicubic_upscale
from ntire.images import image_to_tensor, read_image, tensor_to_image, write_png
from ntire.metrics import score
from ntire.models.build import build_model
from ntire.models.checkpoint import load_model, save_model


def _photo(h: int, w: int, top: int) -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[top : top + h, 150 : 150 + w])


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """`benchmark/Tiny` (HR sizes NOT multiples of 3: modcrop matters) and a DIV2K valid split."""
    root = tmp_path_factory.mktemp("bench")
    for i, (h, w) in enumerate([(40, 44), (37, 41)]):
        hr = _photo(h, w, 60 * i)
        write_png(root / "benchmark" / "Tiny" / "HR" / f"img{i}.png", hr)
        for s in (2, 3):
            lr_dir = root / "benchmark" / "Tiny" / "LR_bicubic" / f"X{s}"
            write_png(lr_dir / f"img{i}x{s}.png", bicubic_downscale(hr, s))
    hr = _photo(48, 48, 200)
    write_png(root / "DIV2K" / "DIV2K_valid_HR" / "0801.png", hr)
    for s in (2, 3):
        write_png(root / "DIV2K" / "DIV2K_valid_LR_bicubic" / f"X{s}" / f"0801x{s}.png", bicubic_downscale(hr, s))
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    config = ModelConfig(kind="mdsr", scales=(2, 3), n_blocks=1, n_feats=8)
    return save_model(tmp_path_factory.mktemp("ckpt") / "mdsr", build_model(config), config)


def _expected(root: Path, set_name: str, scale: int, upscale) -> tuple[float, float]:
    """Mean PSNR/SSIM computed here, independently of the report code."""
    if set_name == DIV2K_SET:
        hrs = sorted((root / "DIV2K" / "DIV2K_valid_HR").glob("*.png"))
        lrs = [root / "DIV2K" / "DIV2K_valid_LR_bicubic" / f"X{scale}" / f"{p.stem}x{scale}.png" for p in hrs]
        protocol = "div2k"
    else:
        hrs = sorted((root / "benchmark" / set_name / "HR").glob("*.png"))
        lrs = [root / "benchmark" / set_name / "LR_bicubic" / f"X{scale}" / f"{p.stem}x{scale}.png" for p in hrs]
        protocol = "benchmark"
    psnrs, ssims = [], []
    for hr_path, lr_path in zip(hrs, lrs, strict=True):
        sr = upscale(read_image(lr_path))
        hr = read_image(hr_path)[: sr.shape[0], : sr.shape[1]]
        s = score(sr, hr, scale=scale, protocol=protocol)
        psnrs.append(s.psnr)
        ssims.append(s.ssim)
    return float(np.mean(psnrs)), float(np.mean(ssims))


def test_report_matches_independent_scores(root, checkpoint, tmp_path):
    model, config = load_model(checkpoint)
    assert available_sets(root) == ["Tiny", DIV2K_SET]
    report = run_benchmark(
        {2: (model, config, str(checkpoint)), 3: (model, config, str(checkpoint))},
        root,
        sets=["Tiny", DIV2K_SET],
        scales=[2, 3],
        self_ensemble=True,
        progress=False,
    )
    assert [(r.set_name, r.scale, r.protocol) for r in report.rows] == [
        ("Tiny", 2, "benchmark"),
        ("Tiny", 3, "benchmark"),
        (DIV2K_SET, 2, "div2k"),
        (DIV2K_SET, 3, "div2k"),
    ]
    for row in report.rows:
        psnr, ssim = _expected(root, row.set_name, row.scale, lambda lr, s=row.scale: bicubic_upscale(lr, s))
        assert row.bicubic == pytest.approx({"psnr": psnr, "ssim": ssim}, abs=1e-9)

        def plain(lr, s=row.scale):
            with torch.no_grad():
                return tensor_to_image(model(image_to_tensor(lr), s))

        psnr, _ = _expected(root, row.set_name, row.scale, plain)
        assert row.model["psnr"] == pytest.approx(psnr, abs=1e-6)
        assert row.model_plus is not None and row.model_plus["psnr"] != row.model["psnr"]

    md, js = write_report(report, tmp_path / "out")
    text = md.read_text()
    assert text == format_markdown(report)
    assert "| set | scale | bicubic | mdsr-b1f8 | mdsr-b1f8+ |" in text
    tiny2 = report.rows[0]
    cell = f"{tiny2.bicubic['psnr']:.2f}/{tiny2.bicubic['ssim']:.4f}".replace("/0.", "/.")
    assert f"| Tiny | x2 | {cell} |" in text
    assert "| DIV2K val | x3 |" in text
    data = json.loads(js.read_text())
    assert data["rows"][0]["bicubic"]["psnr"] == pytest.approx(tiny2.bicubic["psnr"])
    assert data["rows"][0]["per_image"].keys() == {"img0", "img1"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["table3.json", "table3.md"]


def test_missing_set_or_scale_is_named(root, checkpoint):
    from ntire.errors import NtireError

    model, config = load_model(checkpoint)
    models = {2: (model, config, str(checkpoint))}
    with pytest.raises(NtireError, match="Set5"):
        run_benchmark(models, root, sets=["Set5"], scales=[2], self_ensemble=False, progress=False)
    with pytest.raises(NtireError, match="no checkpoint serves x4"):
        run_benchmark(models, root, sets=["Tiny"], scales=[4], self_ensemble=False, progress=False)


def test_benchmark_cli_writes_markdown_and_json(root, checkpoint, tmp_path, capsys):
    from ntire.__main__ import main

    out = tmp_path / "report"
    argv = ["benchmark", "--checkpoint", str(checkpoint), "--root", str(root), "--sets", "Tiny", "--scales", "3"]
    assert main(argv + ["--out", str(out), "--no-mlflow", "--no-progress", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "| Tiny | x3 |" in printed and "+ |" not in printed.splitlines()[0]  # no '+' column without the flag
    data = json.loads((out / "table3.json").read_text())
    assert [(r["set_name"], r["scale"]) for r in data["rows"]] == [("Tiny", 3)]
    assert data["rows"][0]["model_plus"] is None
    # The worst and best image's figures lie beside the table, which names them.
    assert [(f["kind"], f["scale"]) for f in data["figures"]] == [("worst", 3), ("best", 3)]
    assert sorted(p.name for p in out.glob("Tiny_x3_*.png")) == sorted(f["file"] for f in data["figures"])
    assert "and 2 figure(s) beside them" in printed and data["figures"][0]["file"] in (out / "table3.md").read_text()

    plain = tmp_path / "plain"
    assert main(argv + ["--out", str(plain), "--no-mlflow", "--no-progress", "--device", "cpu", "--no-figures"]) == 0
    assert sorted(p.name for p in plain.iterdir()) == ["table3.json", "table3.md"]


def _find(picture: np.ndarray, crop: np.ndarray) -> list[tuple[int, int]]:
    h, w = crop.shape[:2]
    ys, xs = np.nonzero((picture[: picture.shape[0] - h + 1, : picture.shape[1] - w + 1] == crop[0, 0]).all(-1))
    return [(int(y), int(x)) for y, x in zip(ys, xs, strict=True)
            if np.array_equal(picture[y : y + h, x : x + w], crop)]


def test_figures_of_the_worst_and_best_image_beside_the_table(root, checkpoint, tmp_path):
    from ntire.benchmark import extreme_images, write_figures
    from ntire.figures import Box
    from ntire.inference import upscale_image

    model, config = load_model(checkpoint)
    models = {2: (model, config, str(checkpoint))}
    report = run_benchmark(models, root, sets=["Tiny", DIV2K_SET], scales=[2], self_ensemble=True, progress=False)
    out = tmp_path / "out"
    figures = write_figures(report, models, out, self_ensemble=True)
    assert report.figures == figures

    tiny = report.rows[0]
    gains = {n: s["model"]["psnr"] - s["bicubic"]["psnr"] for n, s in tiny.per_image.items()}
    worst, best = min(gains, key=gains.get), max(gains, key=gains.get)
    assert extreme_images(tiny) == [("worst", worst, gains[worst]), ("best", best, gains[best])]
    assert [(f.set_name, f.kind, f.image) for f in figures] == [
        ("Tiny", "worst", worst), ("Tiny", "best", best), (DIV2K_SET, "only", "0801")]
    assert sorted(p.name for p in out.iterdir()) == sorted(f.file for f in figures)
    assert figures[1].file == f"Tiny_x2_best_{best}.png"

    # Each figure shows the model's crop of its box (enlarged by pixel repetition).
    hr = read_image(root / "benchmark" / "Tiny" / "HR" / f"{best}.png")
    sr = upscale_image(model, config, read_image(root / "benchmark" / "Tiny" / "LR_bicubic" / "X2" / f"{best}x2.png"),
                       scale=2)
    box = Box(*map(int, figures[1].box.split(",")))
    k = 192 // max(box.w, box.h)
    picture = read_image(out / figures[1].file)
    assert _find(picture, box.crop(sr).repeat(k, 0).repeat(k, 1))
    assert _find(picture, box.crop(hr).repeat(k, 0).repeat(k, 1))

    md, js = write_report(report, out)
    text = md.read_text()
    assert "Figures: the worst and best image of each set" in text
    assert f"- Tiny x2: worst `{worst}` ({gains[worst]:+.2f} dB): [{figures[0].file}]({figures[0].file})" in text
    assert "- DIV2K val x2: only `0801`" in text
    assert [f["file"] for f in json.loads(js.read_text())["figures"]] == [f.file for f in figures]
