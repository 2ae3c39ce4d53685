"""What a track's submissions amount to: one `SubmissionResult` per scale, scored on the valid split.

On the valid split (HR known) the SR images, MATLAB-bicubic upscaling and the other self-ensemble
setting are scored under the DIV2K protocol (RGB, scale + 6 border pixels ignored), so the table
shows what the model and its self-ensemble gain over bicubic. `write_report` writes the table and
every number (`table.txt`, `results.json`); `log_results` logs them as one MLflow run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ntire.files import atomic_write_text
from ntire.submission.predict import LRInput

MLFLOW_EXPERIMENT = "ntire-submissions"


@dataclass
class SubmissionResult:
    """One track/scale submission: the zip made, how, and (valid split) its scores."""

    track: str
    scale: int
    zip_path: Path
    folder: Path
    checkpoint: Path
    model_name: str
    self_ensemble: bool
    n_images: int
    runtime: float
    done: int
    skipped: int
    device: str
    scores: dict[str, dict[str, float]] | None = None
    """On the valid split: {"bicubic": .., "model": .., "model+": ..} each {"psnr", "ssim"}."""


# --------------------------------------------------------------------------------------------
# Scoring (valid split)


def score_folder(sr_dir: Path, inputs: list[LRInput], scale: int) -> dict[str, float]:
    """Mean PSNR/SSIM of `sr_dir`'s images against the inputs' HR images, DIV2K protocol."""
    from ntire.images import read_image
    from ntire.metrics import score_sr

    scores = []
    for item in inputs:
        sr_path = sr_dir / item.sr_name
        s = score_sr(read_image(sr_path), read_image(item.hr), scale=scale, protocol="div2k",
                     name=str(sr_path), hr_name=str(item.hr))
        scores.append(s)
    return _mean(scores)


def score_bicubic(inputs: list[LRInput], scale: int) -> dict[str, float]:
    """Mean PSNR/SSIM of MATLAB-bicubic upscaling of the LR inputs, DIV2K protocol."""
    from ntire.data.degrade import bicubic_upscale
    from ntire.images import read_image
    from ntire.metrics import score_sr

    scores = []
    for item in inputs:
        up = bicubic_upscale(read_image(item.path), scale)
        scores.append(score_sr(up, read_image(item.hr), scale=scale, protocol="div2k",
                               name=f"bicubic upscaling of {item.path}", hr_name=str(item.hr)))
    return _mean(scores)


def _mean(scores: list[Any]) -> dict[str, float]:
    return {k: sum(getattr(s, k) for s in scores) / len(scores) for k in ("psnr", "ssim")}


# --------------------------------------------------------------------------------------------
# The table, results.json, MLflow


def format_results(results: list[SubmissionResult]) -> str:
    """A table of the submissions made: zip, images, runtime; with scores on the valid split."""
    scored = any(r.scores for r in results)
    head = ["track", "scale", "images", "made", "s/image", "ensemble"]
    if scored:
        head += ["bicubic", "model", "model+", "gain(+)"]
    head += ["zip"]
    rows = []
    for r in results:
        ensemble = "on" if r.self_ensemble else "off"
        row = [r.track, f"x{r.scale}", str(r.n_images), str(r.done), f"{r.runtime:.3f}", ensemble]
        if scored:
            s = r.scores or {}
            gain = s["model+"]["psnr"] - s["model"]["psnr"] if "model" in s and "model+" in s else None
            row += [_cell(s.get(k)) for k in ("bicubic", "model", "model+")]
            row.append("-" if gain is None else f"{gain:+.2f} dB")
        row.append(str(r.zip_path))
        rows.append(row)
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in [head, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    note = ""
    if scored:
        note = "\nPSNR dB / SSIM, DIV2K protocol (RGB, scale+6 border pixels ignored); model+ = self-ensemble x8"
    return "\n".join(lines) + note


def _cell(s: dict[str, float] | None) -> str:
    if not s:
        return "-"
    psnr = "inf" if math.isinf(s["psnr"]) else f"{s['psnr']:.2f}"
    return f"{psnr}/{s['ssim']:.4f}".replace("/0.", "/.")


def results_metrics(results: list[SubmissionResult]) -> dict[str, float]:
    """Flat MLflow metrics for a track's results: `x2_runtime_s`, `x2_psnr_model_plus`, ..."""
    metrics: dict[str, float] = {}
    for r in results:
        metrics[f"x{r.scale}_runtime_s"] = r.runtime
        for variant, s in (r.scores or {}).items():
            # MLflow metric names cannot hold '+'.
            key = variant.replace("+", "_plus")
            metrics[f"x{r.scale}_psnr_{key}"] = s["psnr"]
            metrics[f"x{r.scale}_ssim_{key}"] = s["ssim"]
    return metrics


def write_report(results: list[SubmissionResult], report_dir: Path) -> None:
    """Write the results table (`table.txt`) and every number (`results.json`) to `report_dir`."""
    rows = []
    for r in results:
        fields = ("track", "scale", "model_name", "self_ensemble", "n_images", "runtime", "device", "scores")
        row = {k: getattr(r, k) for k in fields}
        row.update(zip=str(r.zip_path), checkpoint=str(r.checkpoint))
        rows.append(row)
    atomic_write_text(report_dir / "results.json", json.dumps(rows, indent=1) + "\n")
    atomic_write_text(report_dir / "table.txt", format_results(results) + "\n")


def log_results(
    results: list[SubmissionResult],
    *,
    run_name: str,
    params: dict[str, Any],
    report_dir: Path,
    uri: str | None = None,
    data: str | Path | None = None,
    say: Callable[[str], None] = print,
) -> str | None:
    """Log a track's results as one MLflow run (metrics per scale, `report_dir` as artifacts) in
    the `ntire-submissions` experiment; the run id, or None when MLflow is missing or unreachable
    (said through `say`). Tagged with where it came from (ntire.training.tracking.provenance_tags):
    code, versions, host, the device the results were made on, and the identity of the data
    folder, `data` (default: `params["data"]`, which `ntire submit` sets)."""
    from ntire.training.tracking import log_report

    data = data if data is not None else params.get("data")
    devices = sorted({r.device for r in results})
    return log_report(
        experiment=MLFLOW_EXPERIMENT,
        run_name=run_name,
        params=params,
        metrics=results_metrics(results),
        report_dir=report_dir,
        uri=uri,
        data=data,
        tags={"ntire.device": ",".join(devices)} if devices else None,
        say=say,
    )


__all__ = [
    "MLFLOW_EXPERIMENT",
    "SubmissionResult",
    "format_results",
    "log_results",
    "results_metrics",
    "score_bicubic",
    "score_folder",
    "write_report",
]
