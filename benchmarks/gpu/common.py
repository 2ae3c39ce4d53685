"""Numerics several sections share: TF32 and autocast switches, error limits, relative error, FLOPs."""

from __future__ import annotations

import contextlib
from typing import Any

from benchmarks.gpu.context import Run


@contextlib.contextmanager
def tf32(enabled: bool):
    """TF32 for convolutions and matmuls on or off inside the block (no effect on the CPU)."""
    import torch

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def precisions(run: Run) -> list[tuple[str, bool, bool, float, float]]:
    """(label, TF32, bf16 autocast, forward limit, gradient limit): relative-error limits."""
    if run.cuda:
        # Limits catch a wrong result (errors of order 1), not the rounding of one convolution algorithm or another.
        return [("fp32, TF32 off", False, False, 1e-3, 1e-3), ("fp32, TF32 on", True, False, 2e-2, 5e-2),
                ("bf16 autocast", True, True, 1e-1, 2e-1)]
    return [("fp32", False, False, 1e-4, 1e-4), ("bf16 autocast", False, True, 1e-1, 2e-1)]


def autocast(run: Run, bf16: bool):
    import torch

    return torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=bf16)




def rel_err(y, ref) -> float:
    """||y - ref|| / ||ref - mean(ref)||, in float64 (the constant mean added at the output would
    otherwise make every error look small)."""
    y64, r64 = y.detach().double().cpu(), ref.detach().double().cpu()
    scale = float((r64 - r64.mean()).norm()) or 1.0
    return float((y64 - r64).norm()) / scale


def train_flops_per_patch(config, patch: int) -> float:
    """Analytic FLOPs of one training step per LR patch (ntire.training.step.training_tflop: 3 x the
    forward convolutions' 2*Cin*Cout*k*k per output pixel, at the config's largest scale)."""
    from ntire.training.setup import training_tflop

    return training_tflop(config, batch=1, patch=patch) * 1e12


def model_name(preset: str, config: Any) -> str:
    """`preset`, with the actual size where it differs (a smoke run's `edsr [edsr-b1f8]`)."""
    return preset if config.name == preset else f"{preset} [{config.name}]"


def fp32_name(run: Run) -> str:
    return "fp32 with TF32 convolutions (torch's default)" if run.cuda else "fp32"

