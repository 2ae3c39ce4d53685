"""Section 3, training: ntire's fit() beside the plain loop doing the same step, per model and setup;
first the `default` row (what `ntire train` does with no speed flags)."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.gpu.clock import alarm, alarmed
from benchmarks.gpu.common import train_flops_per_patch
from benchmarks.gpu.context import Run, free_memory, reset_accelerate
from benchmarks.gpu.data import wait_data, wait_note
from benchmarks.gpu.plain import Setup, plain_loop
from benchmarks.gpu.report import MEASURED, Section


@dataclass(frozen=True)
class Option:
    name: str
    setup: Setup | None
    """None: fit()'s defaults, no speed option given (the plain loop then follows what fit() chose)."""


# In the order they run: what matters most first, torch.compile (whose first call is slow) last.
OPTIONS = (
    Option("default", None),
    Option("fp32_captured", Setup(bf16=False, channels_last=False, captured=True)),
    Option("bf16_cl_captured", Setup(bf16=True, channels_last=True, captured=True)),
    Option("fp32", Setup(bf16=False, channels_last=False)),
    Option("bf16_cl", Setup(bf16=True, channels_last=True)),
    Option("bf16", Setup(bf16=True, channels_last=False)),
    Option("bf16_cl_compile", Setup(bf16=True, channels_last=True, compiled=True)),
)


class TimedBatches:
    """fit()'s batch iterator, timing each `next` (how long the training loop waited for data)."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.waits: list[float] = []

    def __iter__(self) -> TimedBatches:
        return self

    def __next__(self) -> Any:
        start = time.perf_counter()
        batch = next(self.inner)
        self.waits.append(time.perf_counter() - start)
        return batch

    def close(self) -> None:
        """Stop the loader's workers now (fit() closes its stream as it ends)."""
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def fit_config(run: Run, preset: str, setup: Setup | None, warmup: int, steps: int, shards: str, out: Path) -> Any:
    """The TrainConfig of one case; with `setup` None no precision, layout, compile or capture
    option is given, as a plain `ntire train` gives none."""
    from ntire.config import build_config

    s = run.sizes
    speed: dict[str, Any] = {}
    if setup is not None:
        speed = {"mixed_precision": "bf16" if setup.bf16 else "no", "channels_last": setup.channels_last,
                 "compile": setup.compiled, "capture": setup.captured}
    return build_config(overrides={
        "model": {"preset": preset, "scales": [2], **s.model_overrides},
        "data": {"source": shards, "batch_size": s.batch, "patch_size": s.patch, "shuffle_buffer": s.shuffle_buffer,
                 "num_workers": run.args.num_workers},
        "max_steps": warmup + steps, "log_every": warmup, "save_every": warmup + steps, "eval_every": 0,
        "keep_last": 1, "output_dir": str(out), "tracking": {"enabled": False},
        "progress": setup is None,  # the default row keeps ntire train's default bar: it must cost nothing
        **speed,
    })


def fit_run(run: Run, config: Any, warmup: int, steps: int) -> dict[str, Any]:
    """ntire's fit() with `config`; timed between its log points after `warmup` and at the end.
    Returns the figures, `setup` (fit()'s line saying how it ran) and `resolved` (FitResult.plan as a Setup)."""
    from ntire.training.fit import fit
    from ntire.training.inputs import default_batches

    marks: list[tuple[int, Any, float]] = []
    timed: list[TimedBatches] = []
    loader = default_batches(pin_memory=run.cuda)  # ntire's own loader, as fit() builds it

    def on_log(step: int, metrics: dict[str, float]) -> None:
        marks.append((step, run.clock.mark(), metrics["train/patches_per_s"]))  # the device is idle here

    def batches(config: Any, drawn: int) -> TimedBatches:
        timed.append(TimedBatches(loader(config, drawn)))
        return timed[-1]

    run.reset_peak()
    try:
        result = fit(config, batches=batches, on_log=on_log)
    finally:
        peak = run.peak_gib()
        shutil.rmtree(config.output_dir, ignore_errors=True)
    by_step = {step: (mark, rate) for step, mark, rate in marks}
    if warmup not in by_step or warmup + steps not in by_step:
        raise RuntimeError(f"fit() logged at steps {sorted(by_step)}, expected {warmup} and {warmup + steps}")
    ms = run.clock.ms(by_step[warmup][0], by_step[warmup + steps][0]) / steps
    waits = timed[0].waits[warmup:warmup + steps]
    return {"step_ms": ms, "patches_per_s": run.sizes.batch / (ms / 1e3), "peak_gib": peak,
            "loader_wait_ms_per_step": 1e3 * sum(waits) / max(1, len(waits)),
            "fit_logged_patches_per_s": by_step[warmup + steps][1], "setup": result.setup,
            "resolved": Setup(bf16=result.plan.precision == "bf16", channels_last=result.plan.channels_last,
                              captured=result.plan.captured, compiled=bool(config.compile))}


def section_training(run: Run, sec: Section) -> str | None:
    import torch

    info = wait_data(run)
    sec.notes.append(wait_note(info))
    s = run.sizes
    sec.notes.append(f"batch {s.batch}, {s.patch}x{s.patch} LR patches, x2; fit() with {run.args.num_workers} loader "
                     f"workers, tracking off, no validation; plain = the same model, loss (L1) and Adam (the config's "
                     f"lr, betas, eps, weight decay and clipping; fused on a GPU) with cudnn.benchmark on, on one "
                     f"random batch already on the device: eager, or captured = the whole step as one CUDA graph "
                     f"(torch.cuda.graph, capturable Adam). default = ntire train with no speed flags, beside the "
                     f"plain loop of the precision and layout it chose, captured when it captured. TFLOP/s from the "
                     f"analytic conv FLOPs; MFU against the measured matmul ceiling of the same precision (TF32 for "
                     f"fp32); loader kept up = fit()/plain >= 0.9 or the loop waited < 10% of a step for batches")
    if not run.cuda:
        sec.notes.append("captured rows: skipped on the CPU (CUDA graphs need a CUDA device); the default row "
                         "runs eager here")
    if s.compile_backend:
        sec.notes.append(f"torch.compile runs with backend={s.compile_backend!r} in this smoke run (inductor's "
                         f"C++ code generation would take minutes on 2 cores)")
    flops = {p: train_flops_per_patch(run.model_config(p, (2,)), s.patch) for p in s.train_models}
    for p in s.train_models:
        sec.notes.append(f"{p}: {flops[p] / 1e9:.3g} GFLOP per patch per training step; "
                         f"{s.steps[p][0]} warm-up + {s.steps[p][1]} timed updates")
    later = run.later_need("training")
    defaults: dict[str, Setup] = {}
    compile_skip: str | None = None
    for option in OPTIONS:
        for preset in s.train_models:
            setup = option.setup
            compiled = setup is not None and setup.compiled
            label = "default" if setup is None else setup.label(run.cuda)
            if setup is not None and setup.captured and not run.cuda:
                continue  # said once in the notes
            if setup is not None and defaults.get(preset) == setup:
                sec.notes.append(f"{preset} / {label}: measured as its default row")
                continue
            compile_limit = run.args.compile_limit_s
            need = s.case_s["compile"] + (0 if run.smoke else compile_limit) if compiled else s.case_s[preset]
            left = run.remaining() - later
            if left < need:
                sec.notes.append(f"{preset} / {label}: skipped, {left:.0f} s left for training (after keeping "
                                 f"{later:.0f} s for the later sections) < {need:.0f} s needed")
                continue
            if compiled and compile_skip:
                sec.notes.append(f"{preset} / {label}: skipped ({compile_skip})")
                continue
            warmup, steps = s.steps[preset]
            out = run.work / f"fit-{preset}-{option.name}"
            shutil.rmtree(out, ignore_errors=True)
            config = fit_config(run, preset, setup, warmup, steps, info["shards_dir"], out)
            row = sec.row(model=preset, option=label)
            started = time.perf_counter()
            benchmark = torch.backends.cudnn.benchmark
            fitted: dict[str, Any] = {}
            try:  # no case may eat into the time kept for the later sections
                with alarm(left - 3):  # before the section's own alarm
                    if setup is None:  # fit() first: the plain loop follows what it chose
                        fitted = fit_run(run, config, warmup, steps)
                        setup = defaults[preset] = fitted["resolved"]
                        label = row["option"] = f"default: {setup.label(run.cuda)}"
                        row["fit_setup"] = fitted["setup"]
                    plain = plain_loop(run, preset, setup, config.optim, warmup, steps, compile_limit)
                    if "skipped" not in plain and not fitted:
                        fitted = fit_run(run, config, warmup, steps)
            except Exception as e:
                if not alarmed(e):
                    raise
                reset_accelerate()  # in case fit() was stopped before it released its Accelerator
                row.update(figure=MEASURED, note=f"stopped after {time.perf_counter() - started:.0f} s: the time left "
                                                 f"for training ran out")
                run.report.write()
                continue
            finally:
                torch.backends.cudnn.benchmark = benchmark  # fit() may turn it on for its run
                if compiled:
                    torch._dynamo.reset()
                free_memory(run)
            if compiled:
                row["compile_first_step_s"] = plain["first_step_s"]
            if "skipped" in plain:
                if compiled:
                    compile_skip = plain["skipped"]
                row.update(figure=MEASURED, note=f"not timed: {plain['skipped']}")
                run.report.write()
                continue
            row.update(measured_row(run, plain, fitted, flops[preset], setup))
            row["case_wall_s"] = time.perf_counter() - started
            run.report.write()
    if not sec.rows:
        return "skipped"
    return None


def measured_row(run: Run, plain: dict[str, Any], fitted: dict[str, Any], flops: float, setup: Setup) -> dict[str, Any]:
    ceiling = run.ceilings.get("bf16" if setup.bf16 else "fp32")
    tf_plain = flops * plain["patches_per_s"] / 1e12
    tf_fit = flops * fitted["patches_per_s"] / 1e12
    ratio = fitted["patches_per_s"] / plain["patches_per_s"]
    return dict(
        plain_patches_s=plain["patches_per_s"], fit_patches_s=fitted["patches_per_s"], fit_over_plain=ratio,
        plain_step_ms=plain["step_ms"], fit_step_ms=fitted["step_ms"],
        plain_tflops=tf_plain, fit_tflops=tf_fit,
        plain_mfu_pct=100 * tf_plain / ceiling if ceiling else None,
        fit_mfu_pct=100 * tf_fit / ceiling if ceiling else None,
        plain_peak_gib=plain["peak_gib"], fit_peak_gib=fitted["peak_gib"],
        loader_wait_ms_step=fitted["loader_wait_ms_per_step"],
        loader_kept_up=ratio >= 0.9 or fitted["loader_wait_ms_per_step"] < 0.1 * fitted["step_ms"],
        fit_logged_patches_s=fitted["fit_logged_patches_per_s"], fit_setup=fitted["setup"],
        figure=MEASURED,
    )
