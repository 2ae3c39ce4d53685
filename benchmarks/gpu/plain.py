"""The plain training loops fit() is measured against: the same model, loss (L1 by default), Adam
and clipping as the run's config, on one batch already on the device, eager or captured whole as one CUDA graph."""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass
from typing import Any

from benchmarks.gpu.clock import alarm, alarmed
from benchmarks.gpu.context import Run

CAPTURE_WARMUP = 3
"""Eager steps on a side stream before the capture (cuDNN's benchmark and Adam's state settle there)."""


@dataclass(frozen=True)
class Setup:
    """How a training step runs."""

    bf16: bool
    """bf16 autocast (the loss in fp32), else fp32 (TF32 convolutions on a GPU, torch's default)."""
    channels_last: bool
    captured: bool = False
    """The whole step (forward, backward, clipping, Adam) replayed as one CUDA graph."""
    compiled: bool = False
    """The model through torch.compile (eager around it)."""

    def label(self, cuda: bool) -> str:
        parts = ["bf16 autocast" if self.bf16 and not self.channels_last else "bf16" if self.bf16
                 else "fp32 (TF32 convs)" if cuda else "fp32"]
        if self.channels_last:
            parts.append("channels_last")
        if self.compiled:
            parts.append("compile")
        return " + ".join(parts) + (", captured" if self.captured else ", eager")


def plain_loop(run: Run, preset: str, setup: Setup, optim: Any, warmup: int, steps: int,
               compile_limit: float) -> dict[str, Any]:
    """Time `steps` updates after `warmup` ones: forward (autocast like Accelerate), the loss in fp32,
    backward, clipping when `optim.grad_clip` says so, Adam (`optim`'s settings; fused on a GPU),
    with `cudnn.benchmark` on (the patch shape never changes). Captured: after CAPTURE_WARMUP eager
    steps on a side stream, one step is captured with torch.cuda.graph (capturable Adam, its lr a
    device tensor as a schedule needs) and replayed. Returns {"skipped": why} when a compile's first
    step outlasts `compile_limit` seconds (stopped by SIGALRM) or a capture is asked on the CPU.
    """
    import torch

    if setup.captured and not run.cuda:
        return {"skipped": "CUDA graphs need a CUDA device"}
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        return _plain_loop(run, preset, setup, optim, warmup, steps, compile_limit)
    finally:
        torch.backends.cudnn.benchmark = saved


def _plain_loop(run: Run, preset: str, setup: Setup, optim: Any, warmup: int, steps: int,
                compile_limit: float) -> dict[str, Any]:
    import torch

    from ntire.models.build import build_model
    from ntire.training.losses import make_loss

    s = run.sizes
    torch.manual_seed(0)
    model_config = run.model_config(preset, (2,))
    model = build_model(model_config).to(run.device)
    loss_fn = make_loss(optim.loss, eps=optim.loss_eps, rgb_range=model_config.rgb_range)
    if setup.channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if setup.compiled else model
    lr_value: Any = torch.tensor(optim.lr, device=run.device) if setup.captured else optim.lr
    optimizer = torch.optim.Adam(model.parameters(), lr=lr_value, betas=optim.betas, eps=optim.eps,
                                 weight_decay=optim.weight_decay, fused=True if run.cuda else None,
                                 capturable=setup.captured)
    lr = torch.randint(0, 256, (s.batch, 3, s.patch, s.patch), dtype=torch.uint8).to(run.device).float()
    hr = torch.randint(0, 256, (s.batch, 3, s.patch * 2, s.patch * 2), dtype=torch.uint8).to(run.device).float()
    if setup.channels_last:
        lr = lr.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        # Autocast's weight-cast cache must be off in a graph (its casts are replayed, not cached).
        with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=setup.bf16,
                            cache_enabled=not setup.captured):
            sr = forward(lr)
        loss_fn(sr.float(), hr).backward()
        if optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
        optimizer.step()

    def eager_step() -> None:
        step()
        optimizer.zero_grad(set_to_none=True)

    run.reset_peak()
    started = time.perf_counter()
    if setup.captured:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), warnings.catch_warnings():
            # Adam warns that a capturable instance runs uncaptured: these steps are meant to.
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            for _ in range(CAPTURE_WARMUP):
                eager_step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # Gradients are None here, so backward in the graph allocates them from the graph's pool
        # and every replay writes them afresh (no zero_grad inside).
        with torch.cuda.graph(graph):
            step()
        one_step = graph.replay
        one_step()
        run.clock.sync()
    else:
        one_step = eager_step
        try:
            with alarm(compile_limit) if setup.compiled else contextlib.nullcontext():
                one_step()
                run.clock.sync()
        except Exception as e:
            if not (setup.compiled and alarmed(e)):
                raise
            return {"first_step_s": time.perf_counter() - started,
                    "skipped": f"compile's first step was stopped after {compile_limit:.0f} s"}
    first_s = time.perf_counter() - started
    if setup.compiled and first_s > compile_limit:  # the alarm was swallowed somewhere (eager fallback)
        return {"first_step_s": first_s,
                "skipped": f"compile's first step took {first_s:.0f} s > {compile_limit:.0f} s"}
    result: dict[str, Any] = {"first_step_s": first_s}
    for _ in range(warmup - 1):
        one_step()
    run.clock.sync()
    start = run.clock.mark()
    for _ in range(steps):
        one_step()
    ms = run.clock.ms(start, run.clock.mark()) / steps
    result.update(step_ms=ms, patches_per_s=s.batch / (ms / 1e3), peak_gib=run.peak_gib())
    return result
