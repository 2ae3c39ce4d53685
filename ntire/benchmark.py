"""The paper's Table 3 for any checkpoint: PSNR/SSIM on the standard sets, bicubic vs model vs model+.

Each set is scored under its own protocol (see ntire.metrics): the benchmark sets (Set5, Set14,
B100, Urban100, or any set in the same layout) on Y with `scale` border pixels ignored; DIV2K
validation (0801-0900) on RGB with `scale + 6` ignored. SR output is rounded to 8 bits before it
is scored, and the HR image is cropped to the SR size (top-left, MATLAB's modcrop) where the set's
HR sizes are not multiples of the scale.

With figures (`write_figures`), each (set, scale) also gets a paper-style comparison figure
(ntire.figures) of its worst and best image by the model's PSNR gain over bicubic, written beside
table3.md and listed in it.

Layout under `root` (ntire.data.layout): `benchmark/<Set>/HR`, `benchmark/<Set>/LR_bicubic/X<s>`,
and `DIV2K/DIV2K_valid_HR`, `DIV2K/DIV2K_valid_LR_bicubic/X<s>`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ntire.errors import ConfigError, DataError
from ntire.files import atomic_write_text

TABLE3_SETS = ("Set5", "Set14", "B100", "Urban100")
"""The paper's benchmark sets, in its order; DIV2K validation comes last."""

DIV2K_SET = "DIV2K"
"""The name under which DIV2K validation (0801-0900, bicubic LR) is a set of the report."""

Upscale = Callable[[np.ndarray], np.ndarray]
"""uint8 LR image -> uint8 SR image."""


@dataclass
class Row:
    """One set at one scale: mean scores of bicubic, the model, and the model with self-ensemble."""

    set_name: str
    """Set name (`Set5`, ..., `DIV2K`)."""

    scale: int
    """Upscaling factor."""

    protocol: str
    """`benchmark` (Y, shave scale) or `div2k` (RGB, shave scale + 6)."""

    n_images: int
    """Images scored."""

    bicubic: dict[str, float]
    """Mean {"psnr", "ssim"} of MATLAB-bicubic upscaling."""

    model: dict[str, float] | None = None
    """Mean {"psnr", "ssim"} of the model, None if it was not run."""

    model_plus: dict[str, float] | None = None
    """Mean {"psnr", "ssim"} of the model with geometric self-ensemble, None if not run."""

    per_image: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    """Image name -> {"bicubic"/"model"/"model_plus": {"psnr", "ssim"}}."""


@dataclass
class Figure:
    """A comparison figure written beside table3.md for one image of one (set, scale)."""

    set_name: str
    scale: int
    kind: str
    """`worst` or `best` by the model's PSNR gain over bicubic (`only` for a one-image set)."""
    image: str
    """The image's name."""
    gain: float
    """Model PSNR minus bicubic PSNR on the whole image, dB."""
    file: str
    """The PNG's file name, in the report folder."""
    box: str
    """The box shown, `x,y,w,h` in HR pixels."""


@dataclass
class Report:
    """A Table 3 for one model (one checkpoint per scale, or one MDSR for all)."""

    model_name: str
    """The model's name (e.g. `edsr-baseline`), used as the column header."""

    checkpoints: dict[int, str]
    """Scale -> checkpoint path that served it."""

    root: str
    """Dataset root the sets were read from."""

    rows: list[Row]
    """One row per (set, scale), sets in the order asked, scales ascending."""

    figures: list[Figure] = field(default_factory=list)
    """Comparison figures written beside the table (see `write_figures`); empty without."""


def available_sets(root: str | os.PathLike) -> list[str]:
    """The sets present under `root`: benchmark sets (Table 3's first, then others by name), then DIV2K."""
    from ntire.data.layout import benchmark_dir, div2k_dir

    found = []
    bench = benchmark_dir(root)
    if bench.is_dir():
        present = sorted(p.name for p in bench.iterdir() if (p / "HR").is_dir())
        found += [s for s in TABLE3_SETS if s in present] + [s for s in present if s not in TABLE3_SETS]
    if (div2k_dir(root) / "DIV2K_valid_HR").is_dir():
        found.append(DIV2K_SET)
    return found


def set_pairs(root: str | os.PathLike, set_name: str, scale: int) -> tuple[list[Any], str]:
    """(image pairs, protocol) of a set at `scale`; DataError naming the folder if it is absent."""
    from ntire.data.layout import benchmark_pairs, div2k_pairs

    if set_name == DIV2K_SET:
        return div2k_pairs(root, split="valid", track="bicubic", scales=(scale,)), "div2k"
    return benchmark_pairs(root, set_name, (scale,)), "benchmark"


def _score(sr: np.ndarray, hr: np.ndarray, scale: int, protocol: str, name: str) -> dict[str, float]:
    from ntire.metrics import score_sr

    s = score_sr(sr, hr, scale=scale, protocol=protocol, name=name)
    return {"psnr": s.psnr, "ssim": s.ssim}


def _mean(values: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(v[k] for v in values) / len(values) for k in ("psnr", "ssim")}


def score_set(
    pairs: list[Any],
    *,
    set_name: str,
    scale: int,
    protocol: str,
    model: Upscale | None = None,
    model_plus: Upscale | None = None,
    progress: bool = False,
) -> Row:
    """Score bicubic, `model` and `model_plus` (either may be None) on a set's pairs at `scale`."""
    from tqdm import tqdm

    from ntire.data.degrade import bicubic_upscale
    from ntire.images import read_image

    per_image: dict[str, dict[str, dict[str, float]]] = {}
    for pair in tqdm(pairs, desc=f"{set_name} x{scale}", unit="image", disable=not progress, leave=False):
        lr, hr = read_image(pair.lr[scale]), read_image(pair.hr)
        where = str(pair.lr[scale])
        scores = {"bicubic": _score(bicubic_upscale(lr, scale), hr, scale, protocol, where)}
        if model is not None:
            scores["model"] = _score(model(lr), hr, scale, protocol, where)
        if model_plus is not None:
            scores["model_plus"] = _score(model_plus(lr), hr, scale, protocol, where)
        per_image[pair.name] = scores
    if not per_image:
        raise DataError(f"{set_name} x{scale}: no images")
    return Row(
        set_name=set_name,
        scale=scale,
        protocol=protocol,
        n_images=len(per_image),
        bicubic=_mean([s["bicubic"] for s in per_image.values()]),
        model=_mean([s["model"] for s in per_image.values()]) if model is not None else None,
        model_plus=_mean([s["model_plus"] for s in per_image.values()]) if model_plus is not None else None,
        per_image=per_image,
    )


def run_benchmark(
    models: dict[int, tuple[Any, Any, str]],
    root: str | os.PathLike,
    *,
    sets: list[str],
    scales: list[int],
    self_ensemble: bool,
    tile: int | None = None,
    device: Any = "cpu",
    max_batch: int = 4,
    progress: bool = True,
) -> Report:
    """Score every (set, scale): bicubic, the model and, with `self_ensemble`, the model+.

    `models` maps each scale to (network, ModelConfig, checkpoint path). Missing sets raise
    DataError naming the folder.
    """
    from ntire.inference import upscale_image

    for s in scales:
        if s not in models:
            raise ConfigError(f"no checkpoint serves x{s} (served: {', '.join(f'x{t}' for t in sorted(models))})")
    rows = []
    for set_name in sets:
        for scale in scales:
            net, config, _ = models[scale]
            pairs, protocol = set_pairs(root, set_name, scale)

            def upscale(lr: np.ndarray, ensemble: bool, net=net, config=config, scale=scale) -> np.ndarray:
                return upscale_image(
                    net, config, lr, scale=scale, tile=tile, self_ensemble=ensemble, device=device, max_batch=max_batch
                )

            rows.append(
                score_set(
                    pairs,
                    set_name=set_name,
                    scale=scale,
                    protocol=protocol,
                    model=lambda lr, f=upscale: f(lr, False),
                    model_plus=(lambda lr, f=upscale: f(lr, True)) if self_ensemble else None,
                    progress=progress,
                )
            )
    names = sorted({models[s][1].name for s in scales})
    return Report(
        model_name=" / ".join(names),
        checkpoints={s: str(models[s][2]) for s in scales},
        root=str(root),
        rows=rows,
    )


def extreme_images(row: Row) -> list[tuple[str, str, float]]:
    """[(kind, image name, gain)] for the worst and the best image of `row` by the model's PSNR gain
    over bicubic (one `only` entry for a one-image set; none without model scores)."""
    gains = {}
    for name, scores in row.per_image.items():
        if "model" in scores:
            gain = scores["model"]["psnr"] - scores["bicubic"]["psnr"]
            gains[name] = gain if math.isfinite(gain) else 0.0
    if not gains:
        return []
    worst, best = min(gains, key=gains.__getitem__), max(gains, key=gains.__getitem__)
    if worst == best:
        return [("only", worst, gains[worst])]
    return [("worst", worst, gains[worst]), ("best", best, gains[best])]


def figure_file(set_name: str, scale: int, kind: str, image: str) -> str:
    """`Set5_x2_best_baby.png`."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in image)
    return f"{set_name}_x{scale}_{kind}_{safe}.png"


def write_figures(
    report: Report,
    models: dict[int, tuple[Any, Any, str]],
    out_dir: str | os.PathLike,
    *,
    self_ensemble: bool,
    tile: int | None = None,
    device: Any = "cpu",
    max_batch: int = 4,
    box_size: int = 96,
) -> list[Figure]:
    """Write the comparison figure of each row's worst and best image (`extreme_images`) to
    `out_dir` and record them in `report.figures` (which `format_markdown` then lists).

    Each figure (ntire.figures.comparison_figure) shows the HR image with the box where the model
    differs most from bicubic, then the box's HR, bicubic, model and (with `self_ensemble`) model+
    crops, each labelled with the box's and the whole image's PSNR/SSIM under the row's protocol.
    The two images are read and super-resolved again (the scoring pass keeps no images).
    """
    from ntire.data.degrade import bicubic_upscale
    from ntire.figures import comparison_figure, model_label
    from ntire.images import read_image, write_png
    from ntire.inference import upscale_image

    out_dir = Path(out_dir)
    figures = []
    for row in report.rows:
        extremes = extreme_images(row)
        if not extremes:
            continue
        net, config, _ = models[row.scale]
        pairs = {p.name: p for p in set_pairs(report.root, row.set_name, row.scale)[0]}
        for kind, name, gain in extremes:
            pair = pairs[name]
            lr = read_image(pair.lr[row.scale])
            methods = []
            for plus in (False, True) if self_ensemble else (False,):
                sr = upscale_image(net, config, lr, scale=row.scale, tile=tile, self_ensemble=plus, device=device,
                                   max_batch=max_batch)
                methods.append((model_label(config.name, scale=row.scale, plus=plus), sr))
            hr = read_image(pair.hr)[: sr.shape[0], : sr.shape[1]]  # modcrop, as scored
            set_label = "DIV2K val" if row.set_name == DIV2K_SET else row.set_name
            title = (f"{set_label} x{row.scale}, {kind} image by {model_label(config.name)}'s PSNR gain over "
                     f"bicubic: {name} ({gain:+.2f} dB)")
            picture, box = comparison_figure(
                hr, bicubic_upscale(lr, row.scale), methods, scale=row.scale, protocol=row.protocol,
                box_size=box_size, name=f"{set_label} {name}", title=title,
            )
            file = figure_file(row.set_name, row.scale, kind, name)
            write_png(out_dir / file, picture)
            figures.append(Figure(row.set_name, row.scale, kind, name, gain, file, str(box)))
    report.figures = figures
    return figures


def _cell(s: dict[str, float] | None) -> str:
    if s is None:
        return "-"
    psnr = "inf" if math.isinf(s["psnr"]) else f"{s['psnr']:.2f}"
    ssim = f"{s['ssim']:.4f}"
    return f"{psnr}/{ssim[1:] if ssim.startswith('0.') else ssim}"  # the paper's 33.66/.9299


def format_markdown(report: Report) -> str:
    """The report as a Markdown table shaped like the paper's Table 3 (PSNR dB / SSIM)."""
    plus = any(r.model_plus is not None for r in report.rows)
    head = ["set", "scale", "bicubic", report.model_name] + ([f"{report.model_name}+"] if plus else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report.rows:
        name = "DIV2K val" if r.set_name == DIV2K_SET else r.set_name
        cells = [name, f"x{r.scale}", _cell(r.bicubic), _cell(r.model)] + ([_cell(r.model_plus)] if plus else [])
        lines.append("| " + " | ".join(cells) + " |")
    protocols = sorted({r.protocol for r in report.rows})
    notes = {
        "benchmark": "benchmark sets: Y channel (BT.601), `scale` border pixels ignored",
        "div2k": "DIV2K val: RGB, `scale + 6` border pixels ignored",
    }
    checkpoints = ", ".join(f"x{s}: `{c}`" for s, c in sorted(report.checkpoints.items()))
    footer = [
        "",
        "PSNR (dB) / SSIM; " + "; ".join(notes[p] for p in protocols)
        + ("; + is geometric self-ensemble x8" if plus else "") + ".",
        f"Checkpoints: {checkpoints}. Data: `{report.root}`.",
    ]
    if report.figures:
        footer += [
            "",
            "Figures: the worst and best image of each set by the model's PSNR gain over bicubic; each shows the "
            "HR image with a box (where the model differs most from bicubic), then the box's HR, bicubic and "
            "model crops, labelled with the box's and the whole image's PSNR/SSIM.",
            "",
        ]
        by_row: dict[tuple[str, int], list[Figure]] = {}
        for f in report.figures:
            by_row.setdefault((f.set_name, f.scale), []).append(f)
        for (set_name, scale), figures in by_row.items():
            name = "DIV2K val" if set_name == DIV2K_SET else set_name
            cells = [f"{f.kind} `{f.image}` ({f.gain:+.2f} dB): [{f.file}]({f.file})" for f in figures]
            footer.append(f"- {name} x{scale}: " + "; ".join(cells))
    return "\n".join(lines + footer) + "\n"


def report_to_json(report: Report) -> dict[str, Any]:
    """The report as plain JSON data (inf PSNR written as the string "inf")."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return clean(asdict(report))


def write_report(report: Report, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write `table3.md` and `table3.json` to `out_dir` (atomically); returns both paths."""
    out_dir = Path(out_dir)
    md, js = out_dir / "table3.md", out_dir / "table3.json"
    atomic_write_text(md, format_markdown(report))
    atomic_write_text(js, json.dumps(report_to_json(report), indent=1) + "\n")
    return md, js


def report_metrics(report: Report) -> dict[str, float]:
    """Flat MLflow metrics: `Set5_x2_psnr_bicubic`, `DIV2K_x4_ssim_model_plus`, ..."""
    metrics = {}
    for r in report.rows:
        for key in ("bicubic", "model", "model_plus"):
            s = getattr(r, key)
            if s is not None:
                metrics[f"{r.set_name}_x{r.scale}_psnr_{key}"] = s["psnr"]
                metrics[f"{r.set_name}_x{r.scale}_ssim_{key}"] = s["ssim"]
    return metrics


__all__ = [
    "DIV2K_SET",
    "Figure",
    "Report",
    "Row",
    "TABLE3_SETS",
    "available_sets",
    "extreme_images",
    "figure_file",
    "format_markdown",
    "report_metrics",
    "report_to_json",
    "run_benchmark",
    "score_set",
    "set_pairs",
    "write_figures",
    "write_report",
]
