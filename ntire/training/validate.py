"""Validation during training: PSNR/SSIM per scale beside the bicubic baseline, and a picture.

The validation images are loaded once per job, split across processes, and their bicubic scores
computed then (the baseline never changes). Each validation super-resolves this process's share,
gathers every process's per-image scores and averages them per scale, so all processes see the
same result. Scores follow the protocol of the data: `div2k` (RGB, scale + 6 border) for DIV2K
valid, `benchmark` (Y channel, scale border) for Set5-like sets. The picture (`comparison`) shows
the first image of each scale: the HR image with a box, and that box's Bicubic, SR and HR crops
labelled with their PSNR/SSIM.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from ntire.config import ModelConfig, TrainConfig
from ntire.figures import comparison_figure, model_label
from ntire.metrics import Score, score
from ntire.models.network import SRNetwork

if TYPE_CHECKING:
    from accelerate import Accelerator

    from ntire.training.tracking import Tracker


@dataclass(frozen=True)
class ValidationImage:
    """One LR/HR pair at one scale, with its bicubic baseline score."""

    name: str
    scale: int
    lr: np.ndarray
    """(h, w, 3) uint8."""
    hr: np.ndarray
    """(h*scale, w*scale, 3) uint8."""
    bicubic: Score
    """Score of the bicubic upscaling of `lr` against `hr`."""
    bicubic_image: np.ndarray | None = None
    """The bicubic upscaling itself, kept only where a comparison picture is made from it."""


@dataclass(frozen=True)
class ScaleValidation:
    """Mean scores over the validation images of one scale."""

    scale: int
    psnr: float
    ssim: float
    bicubic_psnr: float
    bicubic_ssim: float
    images: int
    """Images averaged."""

    def line(self, split: str = "valid") -> str:
        """`x2 valid PSNR 30.12 dB (bicubic 29.40 dB), SSIM 0.9012 (bicubic 0.8800)`."""
        return (
            f"x{self.scale} {split} PSNR {self.psnr:.2f} dB (bicubic {self.bicubic_psnr:.2f} dB), "
            f"SSIM {self.ssim:.4f} (bicubic {self.bicubic_ssim:.4f})"
        )


@dataclass(frozen=True)
class Validation:
    """The result of one validation pass."""

    scales: dict[int, ScaleValidation]
    comparisons: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    """Per scale, the labelled comparison picture of this process's first image of that scale (see
    `comparison`; may be empty)."""
    prefix: str = "valid"
    """The metrics' prefix: `valid`, or `valid_ema` for the averaged weights."""

    @property
    def mean_psnr(self) -> float:
        """PSNR averaged over the scales (what "best checkpoint" ranks by)."""
        return float(np.mean([r.psnr for r in self.scales.values()]))

    def metrics(self) -> dict[str, float]:
        """Flat metrics for tracking: `valid/psnr_x2`, `valid/ssim_x2`, `valid/bicubic_psnr_x2`, ..."""
        out: dict[str, float] = {}
        p = self.prefix
        for s, r in self.scales.items():
            out[f"{p}/psnr_x{s}"] = r.psnr
            out[f"{p}/ssim_x{s}"] = r.ssim
            out[f"{p}/bicubic_psnr_x{s}"] = r.bicubic_psnr
            out[f"{p}/bicubic_ssim_x{s}"] = r.bicubic_ssim
        return out


def load_validation(
    root: str,
    *,
    track: str,
    scales: Sequence[int],
    indices: range | None = None,
    protocol: str = "div2k",
    process_index: int = 0,
    num_processes: int = 1,
) -> list[ValidationImage]:
    """This process's share of the DIV2K `valid` images under `root`, bicubic scores included."""
    from ntire.data.degrade import bicubic_upscale
    from ntire.data.whole_images import validation_images

    everything = validation_images(root, track=track, scales=tuple(scales), split="valid", indices=indices)
    mine = list(everything)[process_index::num_processes]
    images = []
    seen: set[int] = set()
    for name, scale, lr, hr in mine:
        upscaled = bicubic_upscale(lr, scale)
        keep = scale not in seen  # the first image of each scale makes the comparison picture
        seen.add(scale)
        images.append(
            ValidationImage(
                name=name, scale=scale, lr=lr, hr=hr,
                bicubic=score(upscaled, hr, scale=scale, protocol=protocol),
                bicubic_image=upscaled if keep else None,
            )
        )
    return images


def validate(
    model: SRNetwork,
    config: ModelConfig,
    images: Sequence[ValidationImage],
    *,
    device: Any = "cpu",
    protocol: str = "div2k",
    tile: int | None = None,
    gather: Callable[[list], list] = lambda items: items,
    comparison_crop: int = 128,
) -> Validation:
    """Super-resolve `images` with `model` and score them; `gather` collects every process's
    per-image scores (accelerate's `gather_object` when distributed). Leaves `model` in eval mode."""
    from ntire.inference import upscale_image

    rows = []
    comparisons = {}
    for image in images:
        sr = upscale_image(model, config, image.lr, scale=image.scale, tile=tile, device=device)
        s = score(sr, image.hr, scale=image.scale, protocol=protocol)
        rows.append((image.scale, s.psnr, s.ssim, image.bicubic.psnr, image.bicubic.ssim))
        if image.bicubic_image is not None:
            comparisons[image.scale] = comparison(
                image.bicubic_image, sr, image.hr, scale=image.scale, protocol=protocol, crop=comparison_crop,
                name=image.name, model=f"{model_label(config.name)} (this run)",
            )
    rows = gather(rows)
    results = {}
    for scale in sorted({r[0] for r in rows}):
        mine = np.array([r[1:] for r in rows if r[0] == scale], dtype=np.float64)
        means = mine.mean(axis=0)
        results[scale] = ScaleValidation(scale, *map(float, means), images=len(mine))
    return Validation(results, comparisons)


def comparison(
    bicubic: np.ndarray,
    sr: np.ndarray,
    hr: np.ndarray,
    *,
    scale: int,
    protocol: str = "div2k",
    crop: int = 128,
    name: str | None = None,
    model: str = "SR",
) -> np.ndarray:
    """The validation picture: the HR image at the crops' height with the crop's box drawn, then
    the Bicubic, `model` and HR crops, each labelled with the crop's PSNR/SSIM and the image's.

    The crop is the `crop`-pixel square where SR and bicubic differ most, inside the border the
    protocol ignores; its scores are the protocol's over exactly its pixels (ntire.figures).
    """
    picture, _ = comparison_figure(
        hr, bicubic, [(model, sr)], scale=scale, protocol=protocol, box_size=crop, name=name,
        hr_first=False, tile=crop, font_size=13 if crop >= 112 else 11,
    )
    return picture


def run_validation(
    model: nn.Module,
    config: TrainConfig,
    images: list[ValidationImage],
    accelerator: Accelerator,
    tracker: Tracker,
    step: int,
    say: Callable[[str], None],
    *,
    average: Any = None,
) -> Validation:
    """Validate on every process's share, print a line per scale, log metrics and pictures.

    Runs a plain fp32 copy of the weights, whatever the training precision and wrappers (DDP,
    compile, autocast): the scores are those of the exported model under `ntire upscale`. With
    `average` (the run's WeightAverage), the averaged weights instead: printed as "(EMA)", logged
    as `valid_ema/...`.
    """
    from accelerate.utils import gather_object

    from ntire.training.weights import fp32_network

    network = fp32_network(model, config, accelerator, accelerator.device, average)
    gather = gather_object if accelerator.num_processes > 1 else (lambda rows: rows)
    result = validate(
        network,
        config.model,
        images,
        device=accelerator.device,
        tile=config.data.valid_tile,
        gather=gather,
        comparison_crop=config.tracking.comparison_crop,
    )
    label, suffix = (" (EMA)", "_ema") if average is not None else ("", "")
    if average is not None:
        result = Validation(result.scales, result.comparisons, prefix="valid_ema")
    for scale_result in result.scales.values():
        say(f"step {step}{label}: {scale_result.line()}")
    tracker.log_metrics(result.metrics(), step)
    for scale, picture in result.comparisons.items():
        tracker.log_image(picture, f"comparisons/step-{step:08d}_x{scale}{suffix}.png")
    return result


__all__ = ["ScaleValidation", "Validation", "ValidationImage", "comparison", "load_validation", "run_validation",
           "validate"]
