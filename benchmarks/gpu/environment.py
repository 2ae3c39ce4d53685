"""Section 1, environment: versions, and the measured ceilings (matmul TFLOP/s, copy GB/s)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.gpu.common import tf32
from benchmarks.gpu.context import Run, free_memory
from benchmarks.gpu.report import MEASURED, Section
from benchmarks.train_step import cpu_name


def section_environment(run: Run, sec: Section) -> None:
    import torch

    def info(item: str, value: Any, unit: str = "") -> None:
        sec.row(item=item, value=value, unit=unit, figure=MEASURED)

    if run.cuda:
        props = torch.cuda.get_device_properties(run.device)
        info("GPU", torch.cuda.get_device_name(run.device))
        info("compute capability", f"{props.major}.{props.minor}")
        info("multiprocessors", props.multi_processor_count)
        info("GPU memory", round(props.total_memory / 2**30, 1), "GiB")
        info("driver", _driver_version())
        info("CUDA (torch build)", torch.version.cuda)
        info("cuDNN", torch.backends.cudnn.version())
        info("TF32 defaults (cudnn conv / cuda matmul)",
             f"{torch.backends.cudnn.allow_tf32} / {torch.backends.cuda.matmul.allow_tf32}")
        info("cudnn.benchmark", torch.backends.cudnn.benchmark)
    else:
        info("device", f"CPU: {cpu_name()} (smoke run: no GPU)")
        info("torch threads", torch.get_num_threads())
    info("torch", torch.__version__)
    info("accelerate", version("accelerate"))
    info("webdataset", version("webdataset"))
    info("python", platform.python_version())
    info("CPU cores", os.cpu_count())

    n, reps = run.sizes.matmul_n, run.sizes.matmul_reps
    fp32_label = "TF32" if run.cuda else "fp32"
    for key, dtype, label in (("bf16", torch.bfloat16, "bf16"), ("fp32", torch.float32, fp32_label)):
        a = torch.randn(n, n, device=run.device, dtype=dtype)
        b = torch.randn(n, n, device=run.device, dtype=dtype)
        with tf32(True):
            for _ in range(3):
                a @ b
            run.clock.sync()
            start = run.clock.mark()
            for _ in range(reps):
                a @ b
            ms = run.clock.ms(start, run.clock.mark())
        tflops = 2 * n**3 * reps / (ms / 1e3) / 1e12
        run.ceilings[key] = tflops
        sec.row(item=f"{label} matmul {n}^3 (MFU denominator)", value=tflops, unit="TFLOP/s", figure=MEASURED,
                note=f"{reps} reps after 3 warm-up")
        del a, b
    nbytes = run.sizes.copy_mib * 2**20
    src = torch.empty(nbytes, dtype=torch.uint8, device=run.device)
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    run.clock.sync()
    start = run.clock.mark()
    for _ in range(reps):
        dst.copy_(src)
    ms = run.clock.ms(start, run.clock.mark())
    sec.row(item=f"{'device-to-device' if run.cuda else 'memory'} copy {run.sizes.copy_mib} MiB",
            value=2 * nbytes * reps / (ms / 1e3) / 1e9, unit="GB/s", figure=MEASURED, note="bytes read + written")
    peak = _datasheet_peak(torch.cuda.get_device_name(run.device)) if run.cuda else None
    if peak:
        sec.row(item="datasheet dense bf16 peak (reference only)", value=peak, unit="TFLOP/s", figure="datasheet",
                note=f"measured bf16 matmul reaches {100 * run.ceilings['bf16'] / peak:.0f}% of it")
    del src, dst
    free_memory(run)


def _driver_version() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return Path("/proc/driver/nvidia/version").read_text().splitlines()[0].strip()
    except (OSError, IndexError):
        return "unknown (no nvidia-smi, no /proc/driver/nvidia/version)"


def _datasheet_peak(name: str) -> float | None:
    for fragment, peak in (("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0),
                           ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0)):
        if fragment in name:
            return peak
    return None


def version(name: str) -> str:
    try:
        module = __import__(name)
    except ImportError:
        return "not importable"
    return str(getattr(module, "__version__", "?"))

