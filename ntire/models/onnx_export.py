"""A model as ONNX files, one per scale, for people who ship it (onnxruntime, TensorRT, OpenVINO...).

Each file is the network at one fixed scale (an MDSR gives one file per scale it serves):

    input  `lr`  float32 (N, 3, H, W), RGB, values in [0, rgb_range] (255 for every ntire and
                 released model; ntire's convention, not 0-1), N, H and W dynamic
    output `sr`  float32 (N, 3, s*H, s*W) on the same 0-rgb_range scale, unrounded and unclipped:
                 rounding and clipping to 8 bits is the caller's job, as `tensor_to_image` does it
                 (round half to even, then clip to 0-255); with `uint8=True` the graph does that
                 itself and `sr` is uint8, exactly what `ntire upscale` writes.

`metadata_props` record `model` (e.g. `edsr-baseline`), `kind`, `scale`, `rgb_range`, `rgb_mean`,
`input`, `output`, `ntire_version` and any caller metadata. The graph is Conv, Relu, Add and
DepthToSpace only, at opset 18 by default (onnxruntime 1.14 and later).

Exported with torch.onnx's torch.export-based exporter (`dynamo=True`, which needs `onnx` and
`onnxscript`): the TorchScript exporter is deprecated in torch 2.9+ and due to be removed. All of
it is the optional extra `pip install 'ntire[onnx]'`, with onnxruntime for `verify_onnx`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ntire import __version__
from ntire.config import ModelConfig
from ntire.errors import ConfigError, NtireError
from ntire.files import atomic_path
from ntire.models.build import unwrap

INPUT_NAME = "lr"
OUTPUT_NAME = "sr"
MIN_TORCH = (2, 6)
"""The first torch whose torch.export-based ONNX exporter takes `dynamic_shapes` and saves files."""
DEFAULT_OPSET = 18
"""The exporter's own opset (torch 2.13): no version conversion, and onnxruntime >= 1.14 runs it."""

TOLERANCE = 1e-2
"""Largest |onnxruntime - torch| on the 0-255 scale `verify_onnx` accepts by default. Measured:
about 3e-5 for EDSR x4 and 2e-4 for MDSR (80 blocks); a wrong graph is off by whole grey levels."""

INSTALL_HINT = "pip install 'ntire[onnx]'"


class ExportError(NtireError):
    """An ONNX export that failed, or whose file does not compute what the torch model does."""


def require_onnx(runtime: bool = False) -> None:
    """Raise ConfigError naming the extra to install unless the exporter's packages (and, with
    `runtime`, onnxruntime) import."""
    needed = ["onnx", "onnxscript"] + (["onnxruntime"] if runtime else [])
    missing = []
    for name in needed:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ConfigError(f"ONNX export needs {', '.join(missing)}, which is not installed: {INSTALL_HINT}")


def check_scale(config: ModelConfig, scale: int, where: str = "the model") -> None:
    """ConfigError unless `config`'s network serves `scale`."""
    if scale not in config.scales:
        served = "/".join(f"x{s}" for s in config.scales)
        raise ConfigError(f"scale x{scale} is not served by {where} ({config.name} upscales {served} only)")


def onnx_paths(out: str | os.PathLike, config: ModelConfig, scales: Sequence[int]) -> dict[int, Path]:
    """Where each scale's file goes: `out` itself if it ends in `.onnx` and one scale is asked for,
    `OUT_x2.onnx, OUT_x3.onnx, ...` beside it for several, and `<model name>_x<s>.onnx` inside
    `out` if it is a folder (any path not ending in `.onnx`)."""
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        return {s: out / f"{config.name}_x{s}.onnx" for s in scales}
    if len(scales) == 1:
        return {scales[0]: out}
    return {s: out.with_name(f"{out.stem}_x{s}{out.suffix}") for s in scales}


class FixedScale(nn.Module):
    """`model` at one scale, taking only the image (what an ONNX graph with one input needs); with
    `uint8`, the output is rounded (half to even) and clipped to 0-255 as `tensor_to_image` does."""

    def __init__(self, model: nn.Module, scale: int, uint8: bool = False) -> None:
        super().__init__()
        self.model = unwrap(model)
        self.scale = int(scale)
        self.uint8 = uint8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x, self.scale)
        if self.uint8:
            y = y.round().clamp(0, 255).to(torch.uint8)
        return y


def export_metadata(config: ModelConfig, scale: int, uint8: bool = False, extra: Mapping[str, Any] | None = None
                    ) -> dict[str, str]:
    """The `metadata_props` of a file holding `config`'s network at `scale` (all values strings)."""
    out_type = "uint8, rounded and clipped to 0-255" if uint8 else "float32, unrounded and unclipped"
    props = {
        "model": config.name,
        "kind": config.kind,
        "scale": str(scale),
        "rgb_range": f"{config.rgb_range:g}",
        "rgb_mean": ",".join(f"{m:g}" for m in config.rgb_mean),
        "input": f"{INPUT_NAME}: float32 (N, 3, H, W) RGB in [0, {config.rgb_range:g}], N/H/W dynamic",
        "output": f"{OUTPUT_NAME}: {out_type} (N, 3, {scale}*H, {scale}*W) RGB on the same scale",
        "ntire_version": __version__,
    }
    props.update({str(k): str(v) for k, v in (extra or {}).items()})
    return props


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's chatter (torchvision-not-installed notices, deprecation warnings of
    torch internals) that a user cannot act on; errors still raise."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_onnx(
    model: nn.Module,
    config: ModelConfig,
    path: str | os.PathLike,
    *,
    scale: int | None = None,
    opset: int = DEFAULT_OPSET,
    uint8: bool = False,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write `model` (the network `config` describes) at `scale` as one ONNX file at `path`.

    `scale` defaults to the model's only scale (required for a multi-scale MDSR). The file is
    written atomically and self-contained (no external-data file). Raises ConfigError for a scale
    the model does not serve or a missing onnx/onnxscript, ExportError if the exporter fails.
    """
    path = Path(path)
    if scale is None:
        if len(config.scales) != 1:
            raise ConfigError(f"{config.name} serves {len(config.scales)} scales; say which one to export")
        scale = config.scales[0]
    check_scale(config, scale)
    if uint8 and config.rgb_range != 255:
        raise ConfigError(f"uint8 output needs a 0-255 model; {config.name} has rgb_range {config.rgb_range:g}")
    require_onnx()
    if tuple(int(p) for p in torch.__version__.split(".")[:2]) < MIN_TORCH:
        raise ConfigError(f"ONNX export needs torch >= {'.'.join(map(str, MIN_TORCH))}, not {torch.__version__}")
    from torch.export import Dim

    wrapped = FixedScale(model, scale, uint8=uint8).to("cpu").eval()
    # Batch 2 and sizes above 1 so that no dimension is specialised to its example value.
    example = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * config.rgb_range
    dims = {0: Dim("batch"), 2: Dim("height"), 3: Dim("width")}
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                wrapped,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=(dims,),
                opset_version=opset,
                verbose=False,
            )
    except Exception as e:  # the exporter's own errors are many pages long; keep the first line
        first = (str(e).strip().splitlines() or [""])[0]
        raise ExportError(f"{path}: ONNX export of {config.name} x{scale} failed: {type(e).__name__}: {first}") \
            from None
    program.model.metadata_props.update(export_metadata(config, scale, uint8, metadata))
    program.model.doc_string = f"ntire {config.name} x{scale}: super-resolution, 0-{config.rgb_range:g} RGB NCHW"
    with atomic_path(path) as tmp:
        program.save(tmp, external_data=False)
    return path


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The `metadata_props` of an ONNX file, as a dict."""
    require_onnx()
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ExportError(f"{path}: not a readable ONNX file ({e})") from None
    return {p.key: p.value for p in proto.metadata_props}


def run_onnx(path: str | os.PathLike, lr: np.ndarray | torch.Tensor) -> np.ndarray:
    """Run an exported file under onnxruntime on CPU: (N, 3, H, W) in [0, rgb_range] -> its `sr`."""
    require_onnx(runtime=True)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = lr.detach().cpu().numpy() if isinstance(lr, torch.Tensor) else np.asarray(lr)
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0]


def verify_onnx(
    path: str | os.PathLike,
    model: nn.Module,
    config: ModelConfig,
    *,
    scale: int,
    sizes: Sequence[tuple[int, int]] = ((17, 23), (9, 12)),
    tolerance: float = TOLERANCE,
    seed: int = 0,
) -> float:
    """Run `path` under onnxruntime (CPU) and the torch model on random images of each (H, W) in
    `sizes`; return the largest |difference| on the 0-255 scale. Raises ExportError if that exceeds
    `tolerance` or a shape differs. A uint8 file is compared with the torch output rounded and
    clipped as `tensor_to_image` does; one grey level is allowed there, since a float difference
    of 1e-5 flips a value that lies on a rounding boundary."""
    generator = torch.Generator().manual_seed(seed)
    model = unwrap(model).to("cpu").eval()
    worst = 0.0
    for h, w in sizes:
        lr = torch.rand(1, 3, h, w, generator=generator) * config.rgb_range
        with torch.no_grad():
            expected = model(lr, scale).numpy().astype(np.float64)
        got = run_onnx(path, lr)
        if got.shape != expected.shape:
            raise ExportError(f"{path}: onnxruntime gave shape {got.shape} for a {h}x{w} input, torch {expected.shape}")
        allowed = tolerance
        if got.dtype == np.uint8:
            expected = expected.round().clip(0, 255)
            allowed = 1.0
        diff = float(np.abs(got.astype(np.float64) - expected).max()) * 255.0 / config.rgb_range
        worst = max(worst, diff)
        if diff > allowed:
            raise ExportError(
                f"{path}: onnxruntime differs from torch by {diff:.3g} (0-255 scale) on a {h}x{w} input, "
                f"more than {allowed:g}"
            )
    return worst


__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "ExportError",
    "FixedScale",
    "check_scale",
    "export_metadata",
    "export_onnx",
    "onnx_paths",
    "read_onnx_metadata",
    "require_onnx",
    "run_onnx",
    "verify_onnx",
]
