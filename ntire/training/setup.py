"""What a training run computes with: its precision, memory layout, and a captured or an eager
step, chosen by what was measured fastest for the model on the device; and the one line a run
prints about it (`StepPlan.line`).

Measured on one H200 (benchmarks/gpu) and on 2-core CPUs (benchmarks/train_step.py): see the
README's "Speed" table. The step itself is ntire.training.step.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ntire.config import ModelConfig, TrainConfig
from ntire.training.distributed import has_gpu, launched_world_size, mixed_precision, uses_cpu, uses_deepspeed

if TYPE_CHECKING:
    from accelerate import Accelerator

EAGER_BF16_MIN_TFLOP = 1.5
"""Eager on CUDA, an update (one micro-batch) below this many TFLOP is launch-bound and runs
faster in fp32 (TF32 convolutions) than in bf16 + channels_last, whose casts are more kernels
(H200: EDSR-baseline, 0.3 TFLOP, 10.4 ms fp32 vs 13.8 ms bf16; EDSR, 8.5 TFLOP, bf16 2x faster)."""


@dataclass(frozen=True)
class StepPlan:
    """How a run's updates are computed."""

    device: str
    """"cuda", "cpu", ..."""
    precision: str
    """Autocast precision: "no", "bf16" or "fp16"."""
    channels_last: bool
    captured: bool
    """Whether updates are replayed from CUDA graphs."""
    why: str
    """Why captured or eager (and why this precision when it was chosen)."""
    fused_adam: bool = False

    @property
    def line(self) -> str:
        """The one line a run prints about it."""
        layout = "channels_last" if self.channels_last else "NCHW"
        precision = {"no": "fp32" + (" (TF32 convolutions)" if self.device == "cuda" else ""),
                     "bf16": "bf16 autocast", "fp16": "fp16 autocast"}.get(self.precision, self.precision)
        how = "captured as CUDA graphs" if self.captured else "eager"
        extras = [x for x, on in (("cudnn.benchmark", self.device == "cuda"), ("fused Adam", self.fused_adam)) if on]
        return f"training step: {how}, {precision}, {layout}{', ' + ', '.join(extras) if extras else ''} ({self.why})"


def eager_reason(*, device: str, capture: bool, processes: int, deepspeed: bool, precision: str,
                 compiled: bool, distributed: bool = False) -> str | None:
    """Why a run cannot capture its step (None: it can). `distributed`: the launch wraps the model
    in DDP (or another distributed wrapper) even with one process, as `accelerate launch
    --multi_gpu --num_processes 1` does."""
    if device != "cuda":
        return f"CUDA graphs need a CUDA device; this run is on {device}"
    if not capture:
        return "capture turned off (--no-capture)"
    if deepspeed:
        return "DeepSpeed owns the optimizer step"
    if processes > 1:
        return f"{processes} processes: DDP's gradient all-reduce is not captured"
    if distributed:
        return "a distributed launch wraps the model in DDP, whose gradient hooks are not captured"
    if precision == "fp16":
        return "fp16's gradient scaler reads its scale on the host every step"
    if compiled:
        return "--compile runs the model's own compiled kernels"
    return None


def training_tflop(model: ModelConfig, *, batch: int, patch: int) -> float:
    """TFLOP of one training update on `batch` LR patches of `patch` pixels, at the largest scale:
    every convolution's 2*Cin*Cout*k*k per output pixel, times 3 (forward, and backward for both
    the inputs and the weights). Counted on the meta device: no memory, no compute."""
    from ntire.models.build import build_model

    flops = 0.0

    def count(module: nn.Module, _: Any, output: torch.Tensor) -> None:
        nonlocal flops
        assert isinstance(module, nn.Conv2d)
        k = module.kernel_size[0] * module.kernel_size[1]
        flops += 2 * module.in_channels // module.groups * module.out_channels * k * output[0, 0].numel()

    with torch.device("meta"):
        net = build_model(model)
    scale = max(model.scales)
    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            net(torch.empty(1, 3, patch, patch, device="meta"), scale)
    finally:
        for hook in hooks:
            hook.remove()
    return 3 * flops * batch / 1e12


def choose_setup(config: TrainConfig, *, device: str, processes: int, deepspeed: bool,
                 native_bf16: Callable[[], bool], distributed: bool = False) -> tuple[str | None, bool | None, str]:
    """The precision and layout a run uses where the config says `auto` (precision) or nothing
    (channels_last), by what was measured fastest for the model on the device; and why.

    - CPU: bf16 + channels_last where the CPU has bf16 natively (2.5x fp32 on AVX512-BF16), else
      fp32 (emulated bf16 is over 10x slower).
    - CUDA, captured step: bf16 + channels_last (H200: EDSR-baseline 3,899 patches/s vs 2,248 in
      fp32; EDSR 47.6% MFU).
    - CUDA, eager step: bf16 + channels_last when an update is compute-bound
      (>= EAGER_BF16_MIN_TFLOP), else fp32 with TF32 convolutions, NCHW.

    Returns (mixed_precision, channels_last, why); mixed_precision None leaves it to
    `accelerate launch`, channels_last None to the precision the launch settles on.
    """
    precision, channels_last = config.mixed_precision, config.channels_last
    if precision != "auto":
        return precision, channels_last, "precision as configured"
    if device != "cuda":
        bf16 = native_bf16()
        why = "auto: bf16 is native on this CPU" if bf16 else "auto: fp32, this CPU has no native bf16"
        return ("bf16" if bf16 else "no"), (bf16 if channels_last is None else channels_last), why
    if not native_bf16():
        return "no", (False if channels_last is None else channels_last), "auto: fp32, no native bf16 on this GPU"
    reason = eager_reason(device=device, capture=config.capture, processes=processes, deepspeed=deepspeed,
                          precision="bf16", compiled=config.compile, distributed=distributed)
    tflop = training_tflop(config.model, batch=config.data.batch_size, patch=config.data.patch_size)
    if reason is None or tflop >= EAGER_BF16_MIN_TFLOP:
        why = ("auto: bf16 + channels_last, fastest with a captured step" if reason is None else
               f"auto: bf16 + channels_last, {tflop:.2g} TFLOP per update is compute-bound")
        return "bf16", (True if channels_last is None else channels_last), why
    why = (f"auto: fp32, an eager update of {tflop:.2g} TFLOP is launch-bound and bf16's casts cost "
           f"more than they save")
    return "no", (False if channels_last is None else channels_last), why


def native_bf16() -> bool:
    """Whether the training device computes bf16 natively (fast) rather than by emulation."""
    if has_gpu() and not uses_cpu():
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    # Private probes, guarded: without AVX512-BF16 or AMX, CPU bf16 convolutions are emulated
    # (measured over 10x slower than fp32 on an AVX2-only EPYC).
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe() for probe in probes if probe is not None)


def resolve_setup(config: TrainConfig, accelerator: Accelerator | None) -> tuple[TrainConfig, str]:
    """`config` with `auto` precision and an unset layout resolved to what is fastest for its model
    on the device this launch gives it (ntire.training.step.choose_setup), and why."""
    if config.mixed_precision == "auto":
        launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").strip().lower()
        if launcher in ("bf16", "fp16", "fp8"):  # `accelerate launch --mixed_precision X` asked
            return dataclasses.replace(config, mixed_precision=None), f"precision {launcher} as accelerate launch says"
    if accelerator is not None:
        device, processes = accelerator.device.type, accelerator.num_processes
        deepspeed = getattr(accelerator.state, "deepspeed_plugin", None) is not None
        distributed = getattr(accelerator.distributed_type, "value", str(accelerator.distributed_type)) != "NO"
    else:
        device = "cuda" if torch.cuda.is_available() and not uses_cpu() else "cpu"
        processes, deepspeed = launched_world_size(), uses_deepspeed()
        # torchrun (what `accelerate launch --multi_gpu` runs) sets LOCAL_RANK, and Accelerate then
        # wraps the model in DDP even for one process.
        distributed = "LOCAL_RANK" in os.environ
    precision, channels_last, why = choose_setup(config, device=device, processes=processes, deepspeed=deepspeed,
                                                 native_bf16=native_bf16, distributed=distributed)
    return dataclasses.replace(config, mixed_precision=precision, channels_last=channels_last), why


def step_plan(config: TrainConfig, accelerator: Accelerator, setup_why: str) -> StepPlan:
    """How this run's updates are computed: captured where it can be, else eager and why."""
    device = accelerator.device.type
    deepspeed = getattr(accelerator.state, "deepspeed_plugin", None) is not None
    precision = mixed_precision(accelerator)
    distributed = getattr(accelerator.distributed_type, "value", str(accelerator.distributed_type)) != "NO"
    eager = eager_reason(device=device, capture=config.capture, processes=accelerator.num_processes,
                         deepspeed=deepspeed, precision=precision, compiled=config.compile, distributed=distributed)
    return StepPlan(
        device=device,
        precision=precision,
        channels_last=bool(config.channels_last),
        captured=eager is None,
        why="; ".join(x for x in (eager, setup_why) if x),
        fused_adam=device == "cuda" and not deepspeed,  # DeepSpeed wraps the optimizer its own way
    )


def resolve_channels_last(asked: bool | None, precision: str, native_bf16: Callable[[], bool]) -> bool:
    """`channels_last` as a run uses it: as asked, or by default exactly when it computes in bf16
    on hardware that has bf16 natively (where the layout was measured to pay)."""
    if asked is not None:
        return asked
    return precision == "bf16" and native_bf16()


__all__ = ["EAGER_BF16_MIN_TFLOP", "StepPlan", "choose_setup", "eager_reason", "native_bf16", "resolve_channels_last",
           "resolve_setup", "step_plan", "training_tflop"]
