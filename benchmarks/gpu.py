"""GPU proof: one prepared script that checks and measures every GPU path of ntire in under 6 minutes.

    PYTHONPATH=. python3 benchmarks/gpu.py --out OUT [--wheels DIR] [--budget-s 330]
    .venv/bin/python benchmarks/gpu.py --smoke --out OUT        # the same on the CPU, tiny, seconds

Written for a short, one-piece loan of a GPU machine (one H100/H200, 16 cores, no network, no
venv: python3 with torch, accelerate, safetensors, numpy, scipy, pillow, scikit-image, pyyaml,
tqdm; no webdataset, mlflow, ray or deepspeed). Sections, in this order:

1. environment: GPU, driver, CUDA, cuDNN, torch versions; measured ceilings: a bf16 and a TF32
   8192^3 matmul (TFLOP/s, the MFU denominators) and a device-to-device copy (GB/s).
2. correctness: EDSR, EDSR-baseline and MDSR forward on the GPU against a float64 CPU reference
   (fp32 with TF32 off and on, bf16 autocast); tiled == whole image (`ntire.inference.upscale_image`,
   fp32, TF32 off); self-ensemble on the GPU == on the CPU; one training step's loss and gradients
   against the float64 CPU step.
3. training: a plain PyTorch loop against ntire's `fit()` on WebDataset shards of 16 synthetic
   DIV2K-sized images (2040x1356, bicubic x2 LR, made in the background while sections 1-2 run),
   EDSR-baseline and EDSR, batch 16, 48x48, x2: fp32 (TF32 convolutions, torch's default), bf16,
   bf16 + channels_last, and + torch.compile (after the others, skipped with a note when its first
   call takes longer than --compile-limit-s or the budget cannot hold it). Patches/s, step ms,
   TFLOP/s (analytic: 2*Cin*Cout*k*k per output pixel of every conv, x3 for a training step),
   MFU against the measured matmul ceiling, fit()/plain, peak memory, and the loader: the time
   fit() waited for batches (its batch iterator is wrapped).
4. mdsr: one update per scale through `ntire.training.step.TrainStep`, and branch isolation: an x3
   update leaves the x2/x4 branches' weights and Adam state untouched.
5. inference: EDSR x2/x3/x4 on the LR of a 2040x1356 image: whole image, tiled (512, as the
   submission manifest), tiled + x8 self-ensemble; MP/s (output megapixels per second), peak
   memory, PNG read/write; and the PROJECTED time of all six challenge submissions (2 tracks x 3
   scales, x8 ensemble on the bicubic track only) for the 100 DIV2K test images (goal < 10 min).
6. accelerate: `accelerate launch` (cluster/accelerate/multi_gpu.yaml with --num_processes 1: one
   DDP process over NCCL on the GPU) of ntire/train.py for 3 steps, then `python -m ntire upscale`
   with the exported model, compared with the same model run in this process.

Every figure is timed with CUDA events after a warm-up (perf_counter on the CPU) and every row says
whether it is `measured` here or `projected` from measured figures. `report.json` and `report.md`
are rewritten under --out after each section (and each training case), so a run cut short still
reports; a section that raises records its error and a traceback tail, and the next one runs.
The logs of the processes it starts are kept in OUT/logs/.

Time: a global deadline (--budget-s, default 330 s from start) skips a section with a note when
less than its minimum is left. Nothing may eat the time kept for the sections after it: a section,
each training case and compile's first step are stopped by SIGALRM when their time is up (and
reported as such); the training section, whose cases run longest, starts a case only when it fits
(compile cases last). The last section may overrun the deadline by --grace-s at most. SIGTERM (as
`timeout` sends) writes the report and exits 143. Exit status: 0 when every section that ran passed
its checks, 1 when a section failed or a check did, 2 without a CUDA device (unless --smoke).

`--smoke` runs every section on the CPU in seconds with tiny sizes (tiny images, 1 block of 8
features, 2-3 steps, a 256^3 matmul; torch.compile with the "eager" backend), so the script cannot
rot while no GPU is around (tests/benchmarks/test_gpu.py runs it). Its figures only show that the
code runs; they say nothing about speed.

`--wheels DIR`: the GPU machine has no webdataset (which ntire's shard code imports). A wheel of a
pure-Python package is a zip file Python imports from directly, so every `DIR/*.whl` is put first
on sys.path (after the repository root) before ntire's data code is imported, and on PYTHONPATH
for the processes this script starts. webdataset needs braceexpand too. Make the folder on any
machine where both are installed (no network needed), then carry it along:

    .venv/bin/python benchmarks/gpu.py --make-wheels .whl     # .whl/: ignored by git
    PYTHONPATH=. timeout -s TERM 350 python3 benchmarks/gpu.py --out "$OUT" --wheels .whl

(`pip download --no-deps -d .whl webdataset braceexpand` gives the published wheels instead.)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(Path(__file__).resolve().parent))  # the sibling benchmark scripts

from train_step import cpu_name  # noqa: E402 - after the path set-up above

SECTIONS = ("environment", "correctness", "training", "mdsr", "inference", "accelerate")
MEASURED, PROJECTED = "measured", "projected"
MAIN_PID = os.getpid()
WHEEL_PACKAGES = ("webdataset", "braceexpand")


# ---------------------------------------------------------------------------------------------
# Sizes: the GPU run and the CPU smoke run differ only here


@dataclass(frozen=True)
class Sizes:
    """Everything whose size differs between the GPU run and the smoke run."""

    model_overrides: dict[str, Any]
    """Applied to every preset (smoke: 1 block of 8 features)."""
    need_s: dict[str, float]
    """Least time left for a section to start (the training section also leaves the later ones theirs)."""
    matmul_n: int
    matmul_reps: int
    copy_mib: int
    ref_side: int
    """LR side of the float64 reference forward passes."""
    grad_batch: int
    grad_patch: int
    tile_image: tuple[int, int]
    """(H, W) LR of the tiled == whole check; larger than a tile plus twice the EDSR overlap."""
    tile: int
    ensemble_image: tuple[int, int]
    images: int
    """Synthetic training images."""
    hr_size: tuple[int, int]
    """(H, W) of every synthetic HR image (DIV2K: 1356 x 2040)."""
    batch: int
    patch: int
    train_models: tuple[str, ...]
    """Presets of the training section (the smoke run's tiny ones would all run the same code)."""
    steps: dict[str, tuple[int, int]]
    """(warm-up, timed) updates per model preset."""
    shuffle_buffer: int
    compile_backend: str | None
    """torch.compile backend forced in this run (None: torch's default, inductor)."""
    mdsr_steps: tuple[int, int]
    infer_hr: tuple[int, int]
    infer_tile: int
    infer_reps: int
    accel_batch: int
    accel_patch: int
    case_s: dict[str, float]
    """Guessed seconds of one training case (plain + fit), per model, and for a compile case."""


GPU = Sizes(
    model_overrides={},
    need_s={"environment": 10, "correctness": 30, "training": 40, "mdsr": 10, "inference": 30, "accelerate": 45},
    matmul_n=8192, matmul_reps=10, copy_mib=1024,
    ref_side=32, grad_batch=2, grad_patch=24,
    tile_image=(240, 300), tile=100, ensemble_image=(64, 80),
    images=16, hr_size=(1356, 2040), batch=16, patch=48,
    train_models=("edsr-baseline", "edsr"), steps={"edsr-baseline": (10, 30), "edsr": (5, 15)},
    shuffle_buffer=256, compile_backend=None,
    mdsr_steps=(2, 5), infer_hr=(1356, 2040), infer_tile=512, infer_reps=2,
    accel_batch=4, accel_patch=24,
    case_s={"edsr-baseline": 10, "edsr": 15, "compile": 30},
)

SMOKE = Sizes(
    model_overrides={"n_blocks": 1, "n_feats": 8},
    need_s={"environment": 2, "correctness": 3, "training": 5, "mdsr": 2, "inference": 2, "accelerate": 15},
    matmul_n=256, matmul_reps=3, copy_mib=8,
    ref_side=16, grad_batch=2, grad_patch=12,
    tile_image=(40, 52), tile=12, ensemble_image=(20, 24),
    images=4, hr_size=(72, 96), batch=4, patch=16,
    train_models=("edsr-baseline",), steps={"edsr-baseline": (1, 2)}, shuffle_buffer=16, compile_backend="eager",
    mdsr_steps=(1, 2), infer_hr=(72, 96), infer_tile=16, infer_reps=1,
    accel_batch=2, accel_patch=12,
    case_s={"edsr-baseline": 3, "edsr": 3, "compile": 5},
)

# name -> (label, bf16 autocast, channels_last, torch.compile); compile cases run after the others.
OPTIONS = {
    "fp32": ("fp32 (TF32 convs)", False, False, False),
    "bf16": ("bf16 autocast", True, False, False),
    "bf16_cl": ("bf16 + channels_last", True, True, False),
    "bf16_cl_compile": ("bf16 + channels_last + compile", True, True, True),
}


# ---------------------------------------------------------------------------------------------
# The report: rewritten after every section, so a run cut short still says what it found


@dataclass
class Section:
    name: str
    status: str = "pending"
    """pending, running, ok, error, skipped or interrupted."""
    seconds: float | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    traceback: str | None = None

    def row(self, **fields: Any) -> dict[str, Any]:
        self.rows.append(fields)
        return fields

    def check(self, item: str, ok: bool, **fields: Any) -> bool:
        """A row whose `check` column says pass or FAIL."""
        self.rows.append({"item": item, **fields, "check": "pass" if ok else "FAIL"})
        return ok

    @property
    def failed_checks(self) -> int:
        return sum(1 for r in self.rows if r.get("check") == "FAIL")


class Report:
    def __init__(self, out: Path, meta: dict[str, Any]):
        self.out = out
        self.meta = meta
        self.started = time.monotonic()
        self.sections = {name: Section(name) for name in SECTIONS}
        self.current: Section | None = None

    def summary(self) -> dict[str, Any]:
        statuses = [s.status for s in self.sections.values()]
        return {
            "ok": statuses.count("ok"),
            "error": statuses.count("error") + statuses.count("interrupted"),
            "skipped": statuses.count("skipped"),
            "failed_checks": sum(s.failed_checks for s in self.sections.values()),
            "elapsed_s": round(time.monotonic() - self.started, 1),
        }

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        data = {**self.meta, "summary": self.summary(), "sections": [asdict(s) for s in self.sections.values()]}
        _atomic_write(self.out / "report.json", json.dumps(data, indent=1, default=str) + "\n")
        _atomic_write(self.out / "report.md", self.markdown())

    def markdown(self) -> str:
        m, s = self.meta, self.summary()
        lines = [
            f"# ntire GPU proof: {m['device']}",
            "",
            f"- mode: {m['mode']}",
            f"- device: {m['device']}; torch {m['torch']}; python {m['python']}; {m['cpu_cores']} CPU cores",
            f"- started {m['started_utc']}; elapsed {s['elapsed_s']} s of a {m['budget_s']} s budget",
            "- figures: **measured** = timed or computed on this machine in this run (CUDA events after a "
            "warm-up on a GPU, perf_counter on the CPU); **projected** = extrapolated from measured "
            "figures, as the row's note says",
            f"- result: {s['ok']} sections ok, {s['error']} failed, {s['skipped']} skipped; "
            f"{s['failed_checks']} failed checks",
        ]
        for note in m.get("notes", []):
            lines.append(f"- {note}")
        for i, sec in enumerate(self.sections.values(), 1):
            took = f", {sec.seconds:.1f} s" if sec.seconds is not None else ""
            lines += ["", f"## {i}. {sec.name}: {sec.status}{took}", ""]
            if sec.error:
                lines += [f"**error**: {_cell(sec.error)}", "", "```", (sec.traceback or "").rstrip(), "```", ""]
            lines += [f"- {note}" for note in sec.notes]
            if sec.notes:
                lines.append("")
            if sec.rows:
                columns: list[str] = []
                for row in sec.rows:
                    columns += [k for k in row if k not in columns]
                lines.append("| " + " | ".join(columns) + " |")
                lines.append("|" + "---|" * len(columns))
                for row in sec.rows:
                    lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
        return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# The run: device, clock, deadline, background data, child processes


class DeadlineExceeded(Exception):
    """Raised by SIGALRM (see `alarm`): a section, a training case or compile's first step ran out of time."""


def alarmed(error: BaseException) -> bool:
    """Whether `error` is, or was raised while handling or because of, a DeadlineExceeded: torch.compile
    wraps what its compiler raises (BackendCompilerFailed), so the alarm may arrive in disguise."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, DeadlineExceeded):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__ or getattr(current, "inner_exception", None)
    return False


@contextlib.contextmanager
def alarm(seconds: float):
    """Raise DeadlineExceeded in this (main) thread after `seconds` inside the block; an enclosing
    alarm that would fire sooner still does, and is re-armed with what is left of it afterwards."""
    outer, _ = signal.getitimer(signal.ITIMER_REAL)
    started = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, max(0.5, min(seconds, outer) if outer else seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, max(0.5, outer - (time.monotonic() - started)) if outer else 0)


class Clock:
    """CUDA events on a GPU, perf_counter on the CPU; `ms(a, b)` waits for `b`."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def mark(self) -> Any:
        if self.cuda:
            import torch

            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def ms(self, a: Any, b: Any) -> float:
        if self.cuda:
            b.synchronize()
            return float(a.elapsed_time(b))
        return (b - a) * 1e3

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()


@dataclass
class Run:
    args: argparse.Namespace
    sizes: Sizes
    device: Any
    clock: Clock
    report: Report
    work: Path
    deadline: float
    wheels: list[str]
    ceilings: dict[str, float] = field(default_factory=dict)
    """Measured matmul TFLOP/s: "bf16" and "fp32" (TF32 on a GPU)."""
    data_proc: subprocess.Popen | None = None
    data_dir: Path | None = None
    data_info: dict[str, Any] | None = None
    children: list[subprocess.Popen] = field(default_factory=list)

    @property
    def smoke(self) -> bool:
        return bool(self.args.smoke)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def later_need(self, name: str) -> float:
        """The time kept for the selected sections after `name`."""
        later = SECTIONS[SECTIONS.index(name) + 1:]
        return sum(self.sizes.need_s[n] for n in later if n in self.args.sections)

    def model_config(self, preset: str, scales: tuple[int, ...]):
        from ntire.config import ModelConfig

        return ModelConfig.preset(preset, scales, **self.sizes.model_overrides)

    def peak_gib(self) -> float | None:
        if not self.cuda:
            return None
        import torch

        return torch.cuda.max_memory_allocated() / 2**30

    def reset_peak(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("MLFLOW_TRACKING_URI", None)
        parts = [str(ROOT), *self.wheels, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
        return env

    def wait_data(self) -> dict[str, Any]:
        """The synthetic dataset and its shards (made by a background process started first)."""
        if self.data_info is not None:
            return self.data_info
        assert self.data_proc is not None and self.data_dir is not None
        try:
            rc = self.data_proc.wait(timeout=max(1.0, self.remaining()))
        except subprocess.TimeoutExpired:
            raise RuntimeError("the synthetic dataset was not ready before the deadline") from None
        log = (self.data_dir / "make-data.log").read_text() if (self.data_dir / "make-data.log").exists() else ""
        (self.report.out / "logs").mkdir(parents=True, exist_ok=True)
        _atomic_write(self.report.out / "logs" / "make-data.log", log)
        if rc != 0:
            raise RuntimeError(f"making the synthetic dataset failed (exit {rc}): {log.strip()[-1500:]}")
        self.data_info = json.loads((self.data_dir / "data.json").read_text())
        return self.data_info


def wait_note(info: dict[str, Any]) -> str:
    return (f"data: {info['images']} synthetic {info['hr_size'][1]}x{info['hr_size'][0]} RGB images in DIV2K layout, "
            f"bicubic x2 LR by ntire.data.degrade, {info['shards']} shards by ntire.data.shards.write_shards "
            f"(made in a background process in {info['seconds']:.1f} s while the first sections ran)")


# ---------------------------------------------------------------------------------------------
# Shared helpers


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


def synth_image(seed: int, height: int, width: int):
    """A random-ish photo stand-in: smooth colour fields (bicubic-enlarged noise) plus grain."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 24), max(2, width // 24), 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC), dtype=np.float32)
    grain = rng.normal(0.0, 6.0, (height, width, 3)).astype(np.float32)
    return np.clip(base + grain, 0, 255).astype(np.uint8)


def rel_err(y, ref) -> float:
    """||y - ref|| / ||ref - mean(ref)||, in float64 (the constant mean added at the output would
    otherwise make every error look small)."""
    y64, r64 = y.detach().double().cpu(), ref.detach().double().cpu()
    scale = float((r64 - r64.mean()).norm()) or 1.0
    return float((y64 - r64).norm()) / scale


def train_flops_per_patch(config, patch: int) -> float:
    """Analytic FLOPs of one training step per LR patch: 3 x the forward convolutions' 2*Cin*Cout*k*k
    per output pixel (forward, gradients of inputs and of weights), as benchmarks/train_step.py counts."""
    import torch
    from torch import nn

    from ntire.models.build import build_model

    total = 0

    def count(module: nn.Conv2d, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1]
        pixels = output.shape[-2] * output.shape[-1]
        total += 2 * (module.in_channels // module.groups) * module.out_channels * k * pixels

    with torch.device("meta"):
        model = build_model(config)
        hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d)]
        model(torch.empty(1, 3, patch, patch), config.scales[0])
        for h in hooks:
            h.remove()
    return 3.0 * total


def model_name(preset: str, config: Any) -> str:
    """`preset`, with the actual size where it differs (a smoke run's `edsr [edsr-b1f8]`)."""
    return preset if config.name == preset else f"{preset} [{config.name}]"


def fp32_name(run: Run) -> str:
    return "fp32 with TF32 convolutions (torch's default)" if run.cuda else "fp32"


def reset_accelerate() -> None:
    """Forget a process-wide Accelerate state left by an interrupted fit() (as fit()'s own end does)."""
    with contextlib.suppress(Exception):
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)


def free_memory(run: Run) -> None:
    import gc

    gc.collect()
    if run.cuda:
        import torch

        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# 1. environment


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
    info("accelerate", _version("accelerate"))
    info("webdataset", _version("webdataset"))
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


def _version(name: str) -> str:
    try:
        module = __import__(name)
    except ImportError:
        return "not importable"
    return str(getattr(module, "__version__", "?"))


def section_correctness(run: Run, sec: Section) -> None:
    import torch

    from ntire.models.build import build_model

    sec.notes.append("relative error = ||out - ref|| / ||ref - mean(ref)|| against float64 on the CPU (the "
                     "mean shifts run in fp32 by design, in the reference too); max |err| on the 0-255 scale")
    side = run.sizes.ref_side
    for preset, scales in (("edsr-baseline", (2,)), ("edsr", (2,)), ("mdsr", (2, 3, 4))):
        config = run.model_config(preset, scales)
        torch.manual_seed(0)
        model = build_model(config).eval()
        reference = copy.deepcopy(model).double()
        x = torch.randint(0, 256, (1, 3, side, side), generator=torch.Generator().manual_seed(1)).float()
        model = model.to(run.device)
        for scale in scales:
            with torch.no_grad():
                ref = reference(x.double(), scale)
                for label, use_tf32, bf16, limit, _ in precisions(run):
                    with tf32(use_tf32), autocast(run, bf16):
                        y = model(x.to(run.device), scale).float()
                    err = rel_err(y, ref)
                    sec.check(f"{model_name(preset, config)} x{scale} forward {side}x{side}", err <= limit,
                              precision=label, rel_err=err, max_abs_err=float((y.double().cpu() - ref).abs().max()),
                              limit=limit, figure=MEASURED)
        del model, reference
        free_memory(run)
    _check_tiling(run, sec)
    _check_self_ensemble(run, sec)
    _check_training_step(run, sec)


def _check_tiling(run: Run, sec: Section) -> None:
    import numpy as np
    import torch

    from ntire.images import image_to_tensor
    from ntire.inference import tile_layout, upscale_image, upscale_tensor
    from ntire.models.build import build_model, receptive_field_radius

    config = run.model_config("edsr", (2,))
    torch.manual_seed(0)
    model = build_model(config).eval().to(run.device)
    h, w = run.sizes.tile_image
    image = synth_image(3, h, w)
    tiles, _, _ = tile_layout(h, w, run.sizes.tile, receptive_field_radius(config))
    with tf32(False):
        whole = upscale_image(model, config, image, scale=2, device=run.device)
        tiled = upscale_image(model, config, image, scale=2, tile=run.sizes.tile, device=run.device)
        x = image_to_tensor(image).to(run.device)
        whole_f = upscale_tensor(model, x, scale=2)
        tiled_f = upscale_tensor(model, x, scale=2, tile=run.sizes.tile, config=config)
    diff = np.abs(whole.astype(np.int16) - tiled.astype(np.int16))
    float_diff = float((whole_f - tiled_f).abs().max())
    sec.check(f"{model_name('edsr', config)} x2 tiled == whole ({w}x{h} LR, tile {run.sizes.tile}, {tiles} tiles, "
              "fp32 TF32 off)",
              tiles > 1 and int(diff.max()) <= 1 and float_diff <= 5e-3,
              max_abs_err=float_diff, uint8_max_diff=int(diff.max()), uint8_pixels_differing=int((diff > 0).sum()),
              bitwise_equal=bool(torch.equal(whole_f, tiled_f)), limit=5e-3, figure=MEASURED,
              note="float output within 5e-3 and 8-bit output within 1 (a value may round the other way)")
    del model
    free_memory(run)


def _check_self_ensemble(run: Run, sec: Section) -> None:
    import numpy as np
    import torch

    from ntire.images import image_to_tensor
    from ntire.inference import upscale_image, upscale_tensor
    from ntire.models.build import build_model

    config = run.model_config("edsr-baseline", (2,))
    torch.manual_seed(0)
    cpu_model = build_model(config).eval()
    dev_model = copy.deepcopy(cpu_model).to(run.device)
    h, w = run.sizes.ensemble_image
    image = synth_image(4, h, w)
    x = image_to_tensor(image)
    with tf32(False):
        on_cpu = upscale_image(cpu_model, config, image, scale=2, self_ensemble=True, device="cpu")
        on_dev = upscale_image(dev_model, config, image, scale=2, self_ensemble=True, device=run.device)
        float_diff = float((upscale_tensor(cpu_model, x, scale=2, self_ensemble=True)
                            - upscale_tensor(dev_model, x.to(run.device), scale=2, self_ensemble=True).cpu())
                           .abs().max())
    diff = np.abs(on_cpu.astype(np.int16) - on_dev.astype(np.int16))
    sec.check(f"{model_name('edsr-baseline', config)} x2 x8 self-ensemble {run.device.type} == cpu ({w}x{h} LR, "
              "fp32 TF32 off)",
              int(diff.max()) <= 1 and float_diff <= 1e-2, max_abs_err=float_diff, uint8_max_diff=int(diff.max()),
              uint8_pixels_differing=int((diff > 0).sum()), limit=1e-2, figure=MEASURED,
              note="equal within rounding: float within 1e-2, 8-bit within 1")
    del dev_model
    free_memory(run)


def _check_training_step(run: Run, sec: Section) -> None:
    import torch
    import torch.nn.functional as F

    from ntire.models.build import build_model

    b, p = run.sizes.grad_batch, run.sizes.grad_patch
    for preset, scale, scales in (("edsr-baseline", 2, (2,)), ("edsr", 2, (2,)), ("mdsr", 3, (2, 3, 4))):
        config = run.model_config(preset, scales)
        torch.manual_seed(0)
        model = build_model(config)
        reference = copy.deepcopy(model).double()
        g = torch.Generator().manual_seed(2)
        lr = torch.randint(0, 256, (b, 3, p, p), generator=g).float()
        hr = torch.randint(0, 256, (b, 3, p * scale, p * scale), generator=g).float()
        ref_loss = F.l1_loss(reference(lr.double(), scale), hr.double())
        ref_loss.backward()
        ref_grads = {n: q.grad for n, q in reference.named_parameters()}
        model = model.to(run.device)
        for label, use_tf32, bf16, _, limit in precisions(run):
            model.zero_grad(set_to_none=True)
            with tf32(use_tf32):
                with autocast(run, bf16):
                    sr = model(lr.to(run.device), scale)
                loss = F.l1_loss(sr.float(), hr.to(run.device))
                loss.backward()
            grads = {n: q.grad for n, q in model.named_parameters()}
            same_none = all((grads[n] is None) == (ref_grads[n] is None) for n in ref_grads)
            num = den = 0.0
            worst = 0.0
            for n, ref_g in ref_grads.items():
                if ref_g is None or grads[n] is None:
                    continue
                d = float((grads[n].double().cpu() - ref_g).norm()) ** 2
                r = float(ref_g.norm()) ** 2
                num, den = num + d, den + r
                if r > 0:
                    worst = max(worst, math.sqrt(d / r))
            grad_err = math.sqrt(num / den) if den else 0.0
            loss_err = abs(loss.item() - ref_loss.item()) / abs(ref_loss.item())
            sec.check(f"{model_name(preset, config)} x{scale} training step (batch {b}, {p}x{p}) vs float64 cpu",
                      same_none and grad_err <= limit and loss_err <= limit, precision=label,
                      loss_rel_err=loss_err, rel_err=grad_err, worst_param_rel_err=worst, limit=limit,
                      figure=MEASURED, note="rel_err: all gradients together" +
                      ("" if same_none else "; the parameters without a gradient differ"))
        del model, reference
        free_memory(run)


# ---------------------------------------------------------------------------------------------
# 3. training throughput


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
        """Stop the loader's workers now; fit() calls this as it ends.

        TrainBatches has no close() (yet): its generator and DataLoader iterator form a reference
        cycle, so without this the workers are only stopped at some later garbage collection, which
        then stalls about 5 s (DataLoader's worker join timeout), possibly inside a timed region.
        """
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()
            return
        it = getattr(self.inner, "_it", None)
        if it is not None:
            it.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def plain_loop(run: Run, preset: str, option: str, warmup: int, steps: int, compile_limit: float) -> dict[str, Any]:
    """The bare loop: forward (autocast like Accelerate), L1 in fp32, backward, Adam, zero_grad.

    With torch.compile, the first step (the compilation) is stopped after `compile_limit` seconds.
    """
    import torch
    import torch.nn.functional as F

    from ntire.models.build import build_model

    _, bf16, channels_last, compiled = OPTIONS[option]
    s = run.sizes
    torch.manual_seed(0)
    model = build_model(run.model_config(preset, (2,))).to(run.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if compiled else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8)
    lr = torch.randint(0, 256, (s.batch, 3, s.patch, s.patch), dtype=torch.uint8).to(run.device).float()
    hr = torch.randint(0, 256, (s.batch, 3, s.patch * 2, s.patch * 2), dtype=torch.uint8).to(run.device).float()
    if channels_last:
        lr = lr.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with autocast(run, bf16):
            sr = forward(lr)
        F.l1_loss(sr.float(), hr).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    run.reset_peak()
    started = time.perf_counter()
    try:
        with alarm(compile_limit) if compiled else contextlib.nullcontext():
            step()
            run.clock.sync()
    except Exception as e:
        if not (compiled and alarmed(e)):
            raise
        return {"first_step_s": time.perf_counter() - started,
                "skipped": f"compile's first step was stopped after {compile_limit:.0f} s"}
    first_s = time.perf_counter() - started
    if compiled and first_s > compile_limit:  # the alarm was swallowed somewhere (eager fallback)
        return {"first_step_s": first_s,
                "skipped": f"compile's first step took {first_s:.0f} s > {compile_limit:.0f} s"}
    result: dict[str, Any] = {"first_step_s": first_s}
    for _ in range(warmup - 1):
        step()
    run.clock.sync()
    start = run.clock.mark()
    for _ in range(steps):
        step()
    ms = run.clock.ms(start, run.clock.mark()) / steps
    result.update(step_ms=ms, patches_per_s=s.batch / (ms / 1e3), peak_gib=run.peak_gib())
    return result


def fit_run(run: Run, preset: str, option: str, warmup: int, steps: int, shards: str) -> dict[str, Any]:
    """ntire's fit() on the shards; timed between its metrics records after `warmup` and at the end."""
    import ntire.training.fit as fit_module
    from ntire.config import build_config

    _, bf16, channels_last, compiled = OPTIONS[option]
    s = run.sizes
    out = run.work / f"fit-{preset}-{option}"
    shutil.rmtree(out, ignore_errors=True)
    config = build_config(overrides={
        "model": {"preset": preset, "scales": [2], **s.model_overrides},
        "data": {"source": shards, "batch_size": s.batch, "patch_size": s.patch, "shuffle_buffer": s.shuffle_buffer,
                 "num_workers": run.args.num_workers},
        "max_steps": warmup + steps, "log_every": warmup, "save_every": warmup + steps, "eval_every": 0,
        "keep_last": 1, "output_dir": str(out), "mixed_precision": "bf16" if bf16 else "no",
        "channels_last": channels_last, "compile": compiled, "progress": False, "tracking": {"enabled": False},
    })
    marks: list[tuple[int, Any, float]] = []
    timed: list[TimedBatches] = []
    append, batches = fit_module._append_jsonl, fit_module.training_batches

    def timed_append(out_dir: Path, main: bool, record: dict[str, Any]) -> None:
        if "train/loss" in record:  # written after fit() read the loss: the device is idle here
            marks.append((record["step"], run.clock.mark(), record["train/patches_per_s"]))
        append(out_dir, main, record)

    def timed_batches(*a: Any, **k: Any) -> TimedBatches:
        timed.append(TimedBatches(batches(*a, **k)))
        return timed[-1]

    fit_module._append_jsonl, fit_module.training_batches = timed_append, timed_batches
    run.reset_peak()
    try:
        fit_module.fit(config)
    finally:
        fit_module._append_jsonl, fit_module.training_batches = append, batches
        peak = run.peak_gib()
        shutil.rmtree(out, ignore_errors=True)
    by_step = {step: (mark, rate) for step, mark, rate in marks}
    if warmup not in by_step or warmup + steps not in by_step:
        raise RuntimeError(f"fit() logged at steps {sorted(by_step)}, expected {warmup} and {warmup + steps}")
    ms = run.clock.ms(by_step[warmup][0], by_step[warmup + steps][0]) / steps
    waits = timed[0].waits[warmup:warmup + steps]
    return {"step_ms": ms, "patches_per_s": s.batch / (ms / 1e3), "peak_gib": peak,
            "loader_wait_ms_per_step": 1e3 * sum(waits) / max(1, len(waits)),
            "fit_logged_patches_per_s": by_step[warmup + steps][1]}


def section_training(run: Run, sec: Section) -> str | None:
    import torch

    info = run.wait_data()
    sec.notes.append(wait_note(info))
    s = run.sizes
    sec.notes.append(f"batch {s.batch}, {s.patch}x{s.patch} LR patches, x2; fit() with {run.args.num_workers} loader "
                     f"workers, tracking off, no validation; plain = the same model, Adam and L1 on one random batch "
                     f"already on the device. TFLOP/s from the analytic conv FLOPs; MFU against the measured "
                     f"matmul ceiling of the same precision (TF32 for fp32); loader kept up = fit()/plain >= 0.9 "
                     f"or the loop waited < 10% of a step for batches")
    if s.compile_backend:
        sec.notes.append(f"torch.compile runs with backend={s.compile_backend!r} in this smoke run (inductor's "
                         f"C++ code generation would take minutes on 2 cores)")
    flops = {p: train_flops_per_patch(run.model_config(p, (2,)), s.patch) for p in s.train_models}
    for p in s.train_models:
        sec.notes.append(f"{p}: {flops[p] / 1e9:.3g} GFLOP per patch per training step; "
                         f"{s.steps[p][0]} warm-up + {s.steps[p][1]} timed updates")
    later = run.later_need("training")
    cases = [(p, o) for o in OPTIONS if not OPTIONS[o][3] for p in s.train_models]
    cases += [(p, o) for o in OPTIONS if OPTIONS[o][3] for p in s.train_models]
    compile_skip: str | None = None
    for preset, option in cases:
        label, bf16, _, compiled = OPTIONS[option]
        label = label if run.cuda else label.replace(" (TF32 convs)", "")
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
        row = sec.row(model=preset, option=label)
        started = time.perf_counter()
        try:  # no case may eat into the time kept for the later sections
            with alarm(left - 3):  # before the section's own alarm
                plain = plain_loop(run, preset, option, warmup, steps, compile_limit)
                if "skipped" not in plain:
                    fitted = fit_run(run, preset, option, warmup, steps, info["shards_dir"])
        except Exception as e:
            if not alarmed(e):
                raise
            reset_accelerate()  # in case fit() was stopped before it released its Accelerator
            row.update(figure=MEASURED, note=f"stopped after {time.perf_counter() - started:.0f} s: the time left "
                                             f"for training ran out")
            run.report.write()
            continue
        finally:
            if compiled:
                torch._dynamo.reset()
            free_memory(run)
        if compiled:
            row["compile_first_step_s"] = plain["first_step_s"]
        if "skipped" in plain:
            compile_skip = plain["skipped"]
            row.update(figure=MEASURED, note=f"not timed: {compile_skip}")
            run.report.write()
            continue
        ceiling = run.ceilings.get("bf16" if bf16 else "fp32")
        tf_plain = flops[preset] * plain["patches_per_s"] / 1e12
        tf_fit = flops[preset] * fitted["patches_per_s"] / 1e12
        ratio = fitted["patches_per_s"] / plain["patches_per_s"]
        row.update(
            plain_patches_s=plain["patches_per_s"], fit_patches_s=fitted["patches_per_s"], fit_over_plain=ratio,
            plain_step_ms=plain["step_ms"], fit_step_ms=fitted["step_ms"],
            plain_tflops=tf_plain, fit_tflops=tf_fit,
            plain_mfu_pct=100 * tf_plain / ceiling if ceiling else None,
            fit_mfu_pct=100 * tf_fit / ceiling if ceiling else None,
            plain_peak_gib=plain["peak_gib"], fit_peak_gib=fitted["peak_gib"],
            loader_wait_ms_step=fitted["loader_wait_ms_per_step"],
            loader_kept_up=ratio >= 0.9 or fitted["loader_wait_ms_per_step"] < 0.1 * fitted["step_ms"],
            fit_logged_patches_s=fitted["fit_logged_patches_per_s"], case_wall_s=time.perf_counter() - started,
            figure=MEASURED,
        )
        run.report.write()
    if not sec.rows:
        return "skipped"
    return None


# ---------------------------------------------------------------------------------------------
# 4. MDSR


def section_mdsr(run: Run, sec: Section) -> None:
    import torch

    from ntire.config import build_config
    from ntire.data.stream import Batch
    from ntire.models.build import build_model
    from ntire.training.distributed import finish, make_accelerator
    from ntire.training.step import TrainStep

    s = run.sizes
    config = build_config(overrides={
        "model": {"preset": "mdsr", "scales": [2, 3, 4], **s.model_overrides}, "optim": {"grad_clip": 1.0},
        "data": {"batch_size": s.batch, "patch_size": s.patch}, "tracking": {"enabled": False}, "mixed_precision": "no",
    })
    reset_accelerate()
    accelerator = make_accelerator(config)
    try:
        torch.manual_seed(0)
        model = build_model(config.model)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
        model, optimizer = accelerator.prepare(model, optimizer)
        train_step = TrainStep(model, optimizer, accelerator, config)

        def update(*args: Any) -> None:
            train_step(args[3])

        sec.notes.append(f"{config.model.name} (scales 2, 3, 4) on {accelerator.device}, {fp32_name(run)}, batch "
                         f"{s.batch}, {s.patch}x{s.patch}, through ntire.training.step.TrainStep (Accelerate backward, "
                         f"grad clip 1.0, Adam with weight decay 1e-3: the paths a missing gradient could upset)")

        def batch(scale: int) -> Any:
            g = torch.Generator().manual_seed(scale)
            lr = torch.randint(0, 256, (s.batch, 3, s.patch, s.patch), dtype=torch.uint8, generator=g)
            hr = torch.randint(0, 256, (s.batch, 3, s.patch * scale, s.patch * scale), dtype=torch.uint8, generator=g)
            return Batch(lr, hr, scale)

        warmup, steps = s.mdsr_steps
        flops = {k: train_flops_per_patch(run.model_config("mdsr", (k,)), s.patch) for k in (2, 3, 4)}
        for scale in (2, 3, 4):
            b = batch(scale)
            for _ in range(warmup):
                update(model, optimizer, accelerator, [b], config)
            run.clock.sync()
            start = run.clock.mark()
            for _ in range(steps):
                update(model, optimizer, accelerator, [b], config)
            ms = run.clock.ms(start, run.clock.mark()) / steps
            sec.row(item=f"x{scale} update", step_ms=ms, patches_s=s.batch / (ms / 1e3),
                    tflops=flops[scale] * s.batch / (ms / 1e3) / 1e12, figure=MEASURED,
                    note=f"{warmup} warm-up + {steps} timed updates")

        names = {id(p): n for n, p in model.named_parameters()}
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
        states = {names[id(p)]: copy.deepcopy(st) for p, st in optimizer.state.items()}
        update(model, optimizer, accelerator, [batch(3)], config)  # branch index 1
        run.clock.sync()

        def branch(name: str) -> int | None:
            parts = name.split(".")
            return int(parts[1]) if parts[0] in ("pre_process", "upsample") else None

        untouched_bad, moved_bad = [], []
        for name, p in model.named_parameters():
            state = optimizer.state[p]
            if branch(name) in (0, 2):
                same = torch.equal(p, params[name]) and all(
                    torch.equal(state[k], states[name][k]) for k in ("step", "exp_avg", "exp_avg_sq"))
                if not same:
                    untouched_bad.append(name)
            elif torch.equal(p, params[name]) or int(state["step"]) != int(states[name]["step"]) + 1:
                moved_bad.append(name)
        sec.check("x3 update leaves x2/x4 branches' weights and Adam state untouched", not untouched_bad,
                  figure=MEASURED, note=f"changed: {', '.join(untouched_bad[:4])}" if untouched_bad else
                  f"{sum(1 for n in params if branch(n) in (0, 2))} tensors compared")
        sec.check("x3 update moves the x3 branch and the shared body", not moved_bad and len(states) == len(params),
                  figure=MEASURED, note=f"not moved: {', '.join(moved_bad[:4])}" if moved_bad else
                  f"{sum(1 for n in params if branch(n) not in (0, 2))} tensors moved")
        del model, optimizer
    finally:
        finish(accelerator)
        free_memory(run)


# ---------------------------------------------------------------------------------------------
# 5. inference


def section_inference(run: Run, sec: Section) -> None:
    import torch

    from ntire.images import read_image, write_png
    from ntire.inference import tile_layout, upscale_image
    from ntire.models.build import build_model, receptive_field_radius

    s = run.sizes
    hr_h, hr_w = s.infer_hr
    sec.notes.append(f"EDSR (random weights, {fp32_name(run)}) on the LR "
                     f"of a {hr_w}x{hr_h} image; tiled = tiles of {s.infer_tile} LR pixels, 4 per forward pass (the "
                     f"submission manifest's defaults are 512 and 4); ensemble = x8 self-ensemble inside each "
                     f"tile, as submissions run it. {s.infer_reps} timed call(s) after one warm-up")
    per_image: dict[tuple[int, str], float] = {}
    png: dict[int, float] = {}
    for scale in (2, 3, 4):
        config = run.model_config("edsr", (scale,))
        torch.manual_seed(0)
        model = build_model(config).eval().to(run.device)
        h, w = hr_h // scale, hr_w // scale
        image = synth_image(10 + scale, h, w)
        tiles, win_h, win_w = tile_layout(h, w, s.infer_tile, receptive_field_radius(config))
        tile_compute = tiles * win_h * win_w / (h * w)
        outputs = {}
        for mode, tile, ensemble in (("whole", None, False), (f"tiled {s.infer_tile}", s.infer_tile, False),
                                     (f"tiled {s.infer_tile} + x8 ensemble", s.infer_tile, True)):
            run.reset_peak()
            outputs[mode] = upscale_image(model, config, image, scale=scale, tile=tile, self_ensemble=ensemble,
                                          device=run.device, max_batch=4)
            start = run.clock.mark()
            for _ in range(s.infer_reps):
                upscale_image(model, config, image, scale=scale, tile=tile, self_ensemble=ensemble,
                              device=run.device, max_batch=4)
            ms = run.clock.ms(start, run.clock.mark()) / s.infer_reps
            per_image[scale, mode.split()[0] + ("+se" if ensemble else "")] = ms / 1e3
            sec.row(item=f"x{scale} {mode}", lr=f"{w}x{h}", tiles=tiles if tile else 1,
                    compute_vs_whole=tile_compute if tile else 1.0, ms_per_image=ms,
                    mp_per_s=h * w * scale * scale / 1e6 / (ms / 1e3), peak_gib=run.peak_gib(), figure=MEASURED)
        diff = int(abs(outputs["whole"].astype(int) - outputs[f"tiled {s.infer_tile}"].astype(int)).max())
        sec.row(item=f"x{scale} tiled vs whole, 8-bit max difference ({'TF32 convs' if run.cuda else 'fp32'})",
                value=diff, figure=MEASURED, note="informational: the convolution algorithms (and with TF32 their "
                "rounding) differ between tile and whole-image shapes"),
        lr_path, sr_path = run.work / f"lr_x{scale}.png", run.work / f"sr_x{scale}.png"
        write_png(lr_path, image)
        start = time.perf_counter()
        read_image(lr_path)
        write_png(sr_path, outputs["whole"])
        png[scale] = time.perf_counter() - start
        sec.row(item=f"x{scale} PNG read LR + write SR (CPU)", ms_per_image=png[scale] * 1e3, figure=MEASURED,
                note="compression level 6, as `ntire submit` writes")
        del model, outputs
        free_memory(run)
        run.report.write()

    # Six submissions: bicubic x2/x3/x4 with the x8 ensemble, unknown x2/x3/x4 without; tiled as the manifest.
    images = 100
    gpu_total = io_total = 0.0
    for track, ensemble in (("bicubic", True), ("unknown", False)):
        for scale in (2, 3, 4):
            seconds = per_image[scale, "tiled+se" if ensemble else "tiled"] * images
            gpu_total += seconds
            io_total += png[scale] * images
            sec.row(item=f"submission {track} x{scale}{' (x8 ensemble)' if ensemble else ''}, {images} images",
                    seconds=seconds, figure=PROJECTED, note=f"{images} x the measured tiled time per image")
    what = "DIV2K test images" if not run.smoke else "tiny smoke images (not the DIV2K projection)"
    sec.check(f"all six submissions, {images} {what}, inference only", gpu_total < 600, seconds=gpu_total,
              minutes=gpu_total / 60, limit="600 s", figure=PROJECTED,
              note="sum of the six rows above; goal < 10 min on one GPU")
    sec.row(item="all six submissions with serial PNG read/write", seconds=gpu_total + io_total,
            minutes=(gpu_total + io_total) / 60, figure=PROJECTED,
            note="plus 100 x the measured PNG read + write per image and scale, done one after the other as "
                 "ntire.submission.predict does")
    whole_total = sum(per_image[scale, "whole"] * (8 + 1) * images for scale in (2, 3, 4))
    sec.row(item="all six submissions on whole images (manifest tile: null), inference only", seconds=whole_total,
            minutes=whole_total / 60, figure=PROJECTED,
            note="the ensemble taken as 8 x the measured whole-image time, plus 1 x for the unknown track; "
                 "needs the memory of whole images (peak_gib above)")


# ---------------------------------------------------------------------------------------------
# 6. accelerate launch


def section_accelerate(run: Run, sec: Section) -> None:
    import numpy as np

    from ntire.images import read_image
    from ntire.inference import upscale_image
    from ntire.models.checkpoint import load_model

    info = run.wait_data()
    s = run.sizes
    out = run.work / "accelerate-run"
    shutil.rmtree(out, ignore_errors=True)
    port = _free_port()
    steps = 3
    launch = [sys.executable, "-m", "accelerate.commands.launch",
              "--config_file", str(ROOT / "cluster/accelerate/multi_gpu.yaml"), "--num_processes", "1",
              "--main_process_port", str(port)]
    if not run.cuda:
        launch += ["--mixed_precision", "no"]  # bf16 is emulated (slow) on most CPUs
    train = [str(ROOT / "ntire/train.py"), "--model", "edsr-baseline", "--scale", "2", "--data", info["shards_dir"],
             "--output-dir", str(out), "--max-steps", str(steps), "--batch-size", str(s.accel_batch),
             "--patch-size", str(s.accel_patch), "--num-workers", "2", "--log-every", "1", "--save-every", str(steps),
             "--eval-every", "0", "--no-tracking", "--no-progress"]
    for key, value in s.model_overrides.items():
        train += ["--set", f"model.{key}={value}"]
    sec.notes.append("launch: " + " ".join(["accelerate launch", *launch[3:], "ntire/train.py", *train[1:]]))
    seconds, proc = _run_child(run, launch + train, "accelerate-launch", timeout=min(180.0, run.remaining()))
    sec.check("accelerate launch ntire/train.py exits 0", proc.returncode == 0, seconds=seconds, figure=MEASURED,
              note=f"{steps} updates, batch {s.accel_batch}, {s.accel_patch}x{s.accel_patch}" if proc.returncode == 0
              else _tail(proc.stdout + proc.stderr))
    if proc.returncode != 0:
        output = _tail(proc.stdout + proc.stderr, 400)
        raise RuntimeError(f"accelerate launch failed (exit {proc.returncode}): {output}")
    rank = json.loads((out / "ranks" / "rank-0.json").read_text())
    expect_backend = "nccl" if run.cuda else None
    sec.check("one process, its backend and device", rank["world_size"] == 1 and
              (expect_backend is None or rank["backend"] == expect_backend),
              value=f"world {rank['world_size']}, {rank['distributed_type']}, backend {rank['backend']}, "
                    f"{rank['device']}, precision {rank['mixed_precision']}", figure=MEASURED,
              note="from OUTPUT/ranks/rank-0.json" + (f"; expected backend {expect_backend}" if expect_backend else ""))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    sec.check("metrics.jsonl: a finite loss per update", len(losses) == steps and all(map(math.isfinite, losses)),
              value=", ".join(f"{v:.2f}" for v in losses), figure=MEASURED)
    model_dir = out / "model"
    sec.check("exported model folder", (model_dir / "model.safetensors").is_file() and
              (model_dir / "config.yaml").is_file(), value=str(model_dir.relative_to(run.work)), figure=MEASURED)

    lr_path = Path(info["lr_example"])
    sr_path = run.work / "accelerate-upscaled.png"
    device = "cuda" if run.cuda else "cpu"
    cmd = [sys.executable, "-m", "ntire", "upscale", "--checkpoint", str(model_dir), "--scale", "2",
           "--device", device, str(lr_path), str(sr_path)]
    seconds, proc = _run_child(run, cmd, "upscale", timeout=min(120.0, run.remaining()))
    sec.check("python -m ntire upscale with the exported model exits 0", proc.returncode == 0, seconds=seconds,
              figure=MEASURED, note=_tail(proc.stdout + proc.stderr, 200))
    if proc.returncode != 0:
        raise RuntimeError(f"ntire upscale failed (exit {proc.returncode}): {_tail(proc.stdout + proc.stderr, 400)}")
    lr, sr = read_image(lr_path), read_image(sr_path)
    model, config = load_model(model_dir, map_location="cpu")
    here = upscale_image(model, config, lr, scale=2, device=run.device)
    diff = int(np.abs(here.astype(np.int16) - sr.astype(np.int16)).max()) if here.shape == sr.shape else None
    sec.check("its output: 2x the LR size, equal to the model run in this process",
              sr.shape == (lr.shape[0] * 2, lr.shape[1] * 2, 3) and diff is not None and diff <= 1,
              value=f"{lr.shape[1]}x{lr.shape[0]} -> {sr.shape[1]}x{sr.shape[0]}", uint8_max_diff=diff,
              figure=MEASURED)
    free_memory(run)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_child(run: Run, cmd: list[str], name: str, timeout: float) -> tuple[float, subprocess.CompletedProcess]:
    """Run `cmd` (killed on SIGTERM with the rest); its output is also kept in OUT/logs/NAME.log."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=run.child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    run.children.append(proc)
    try:
        stdout, stderr = proc.communicate(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        _kill(proc)
        stdout, stderr = proc.communicate()
        stderr += f"\n[{name} killed after {timeout:.0f} s]"
    finally:
        run.children.remove(proc)
    logs = run.report.out / "logs"  # small, and what explains a failure: kept beside the report
    logs.mkdir(parents=True, exist_ok=True)
    (logs / f"{name}.log").write_text(stdout + "\n--- stderr ---\n" + stderr)
    return time.perf_counter() - started, subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)


def _tail(text: str, limit: int = 300) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines[-3:])[-limit:]


# ---------------------------------------------------------------------------------------------
# The synthetic dataset (a background child: no torch, so its process pool forks safely)


def _make_image(job: tuple[int, int, int, str]) -> None:
    from ntire.data.degrade import bicubic_downscale
    from ntire.images import write_png

    index, height, width, root = job
    hr = synth_image(index, height, width)
    base = Path(root) / "DIV2K"
    write_png(base / "DIV2K_train_HR" / f"{index:04d}.png", hr, compress_level=1)
    write_png(base / "DIV2K_train_LR_bicubic" / "X2" / f"{index:04d}x2.png", bicubic_downscale(hr, 2), compress_level=1)


def make_data(out: Path, images: int, height: int, width: int, workers: int) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from ntire.data.layout import div2k_pairs
    from ntire.data.shards import write_shards

    started = time.perf_counter()
    root = out / "dataset"
    for sub in ("DIV2K/DIV2K_train_HR", "DIV2K/DIV2K_train_LR_bicubic/X2"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    jobs = [(i, height, width, str(root)) for i in range(1, images + 1)]
    with ProcessPoolExecutor(max(1, min(workers, images)), mp_context=multiprocessing.get_context("fork")) as pool:
        list(pool.map(_make_image, jobs))
    pairs = div2k_pairs(root, split="train", track="bicubic", scales=(2,))
    # One image per shard, so every loader worker has shards of its own.
    manifest = write_shards(pairs, out / "shards", track="bicubic", scales=(2,), shard_max_bytes=1,
                            progress=False, say=lambda _: None)
    info = {"images": images, "hr_size": [height, width], "shards": len(manifest.shards),
            "shards_dir": str(out / "shards"), "dataset": str(root),
            "lr_example": str(root / "DIV2K/DIV2K_train_LR_bicubic/X2/0001x2.png"),
            "seconds": time.perf_counter() - started}
    _atomic_write(out / "data.json", json.dumps(info, indent=1))


def start_data(run: Run) -> None:
    s = run.sizes
    run.data_dir = run.work / "data"
    run.data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--make-data", str(run.data_dir), "--images", str(s.images),
           "--hr-size", str(s.hr_size[0]), str(s.hr_size[1]),
           "--num-workers", str(max(1, min(16, os.cpu_count() or 1)))]
    log = open(run.data_dir / "make-data.log", "w")  # noqa: SIM115 - the child writes to it
    run.data_proc = subprocess.Popen(cmd, cwd=ROOT, env=run.child_env(), stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
    run.children.append(run.data_proc)
    log.close()


def make_wheels(folder: Path) -> list[Path]:
    """Zip the installed webdataset and braceexpand into wheels (what --wheels reads)."""
    import importlib.metadata
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for name in WHEEL_PACKAGES:
        dist = importlib.metadata.distribution(name)
        path = folder / f"{name}-{dist.version}-py3-none-any.whl"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
            for file in dist.files or []:
                if "__pycache__" in file.parts or file.suffix == ".pyc":
                    continue
                located = Path(file.locate())
                if located.is_file():
                    wheel.write(located, str(file))
        made.append(path)
    return made


def add_wheels(folder: str | None) -> list[str]:
    """Put every `folder/*.whl` on sys.path (after the repository root); returns their paths."""
    if not folder:
        return []
    wheels = sorted(str(p.resolve()) for p in Path(folder).glob("*.whl"))
    if not wheels:
        raise SystemExit(f"gpu.py: --wheels {folder}: no *.whl files there")
    at = sys.path.index(str(ROOT)) + 1 if str(ROOT) in sys.path else 0
    sys.path[at:at] = [w for w in wheels if w not in sys.path]
    return wheels


# ---------------------------------------------------------------------------------------------
# Main


RUNNERS = {
    "environment": section_environment,
    "correctness": section_correctness,
    "training": section_training,
    "mdsr": section_mdsr,
    "inference": section_inference,
    "accelerate": section_accelerate,
}


def run_section(run: Run, name: str) -> None:
    sec = run.report.sections[name]
    if name not in run.args.sections:
        sec.status = "skipped"
        sec.notes.append("not selected (--sections)")
        run.report.write()
        return
    need = run.sizes.need_s[name]
    if run.remaining() < need:
        sec.status = "skipped"
        sec.notes.append(f"skipped: {max(0.0, run.remaining()):.0f} s of the {run.args.budget_s:g} s budget left, "
                         f"this section needs at least {need:g} s")
        run.report.write()
        return
    sec.status = "running"
    run.report.current = sec
    run.report.write()
    print(f"[gpu.py] {name} ({run.remaining():.0f} s left)", flush=True)
    started = time.perf_counter()
    later = run.later_need(name)
    # A section may run into the grace period only when it is the last; else it leaves the later ones theirs.
    cap = max(need, run.remaining() - later) if later else run.remaining() + run.args.grace_s
    try:
        with alarm(cap):
            status = RUNNERS[name](run, sec)
        sec.status = status or "ok"
    except Exception as e:  # noqa: BLE001 - a failing section is reported and the next one runs
        sec.status = "error"
        if alarmed(e):
            e = DeadlineExceeded(f"stopped after {cap:.0f} s, the time it had (the rest is kept for the later "
                                 f"sections)" if later else f"stopped {run.args.grace_s:g} s after the deadline")
        text = str(e).strip().splitlines()
        sec.error = f"{type(e).__name__}: {text[0] if text else ''}"[:500]
        sec.traceback = "".join(traceback.format_exc().splitlines(keepends=True)[-12:])
    finally:
        sec.seconds = time.perf_counter() - started
        run.report.current = None
        with contextlib.suppress(Exception):
            free_memory(run)
        run.report.write()
    print(f"[gpu.py] {name}: {sec.status} in {sec.seconds:.1f} s" + (f" ({sec.error})" if sec.error else ""),
          flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder for report.json and report.md")
    parser.add_argument("--smoke", action="store_true", help="every section on the CPU with tiny sizes, in seconds")
    parser.add_argument("--wheels", metavar="DIR", help="put DIR/*.whl on sys.path first (webdataset, braceexpand)")
    parser.add_argument("--budget-s", type=float, default=330.0, help="global deadline from start (default 330)")
    parser.add_argument("--grace-s", type=float, default=10.0,
                        help="a section still running this long after the deadline is stopped (default 10)")
    parser.add_argument("--compile-limit-s", type=float, default=60.0,
                        help="skip timing torch.compile when its first step takes longer (default 60)")
    parser.add_argument("--num-workers", type=int, default=None, help="fit()'s loader workers (default min(16, cores))")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed at the end)")
    parser.add_argument("--make-wheels", type=Path, metavar="DIR", help="write wheels of the installed webdataset and "
                        "braceexpand into DIR and exit")
    parser.add_argument("--make-data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--images", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--hr-size", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if not (args.make_wheels or args.make_data or args.out):
        parser.error("--out DIR is required")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.make_wheels:
        for path in make_wheels(args.make_wheels):
            print(path)
        return 0
    wheels = add_wheels(args.wheels)
    if args.make_data:
        make_data(args.make_data, args.images, *args.hr_size, args.num_workers or 1)
        return 0

    started = time.monotonic()
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        has_cuda = torch.cuda.is_available()
    if not args.smoke and not has_cuda:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        print(f"gpu.py: no CUDA device visible (torch {torch.__version__}, CUDA_VISIBLE_DEVICES={visible!r}); "
              "nothing measured, --smoke runs the CPU self-check", file=sys.stderr)
        return 2
    sizes = SMOKE if args.smoke else GPU
    device = torch.device("cpu" if args.smoke else "cuda")
    if args.num_workers is None:
        args.num_workers = 1 if args.smoke else max(1, min(16, os.cpu_count() or 1))
    if args.smoke and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # tiny tensors; threads only wait for each other on a shared machine
    if sizes.compile_backend:
        import functools

        torch.compile = functools.partial(torch.compile, backend=sizes.compile_backend)

    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({cpu_name()})"
    notes = []
    if wheels:
        notes.append(f"wheels on sys.path: {', '.join(Path(w).name for w in wheels)}")
    if _version("webdataset") == "not importable":
        notes.append("webdataset is not importable: the training and accelerate sections need it (--wheels DIR)")
    meta = {
        "mode": "CPU smoke run: tiny sizes, only shows that every path runs (figures say nothing about speed)"
        if args.smoke else "GPU run", "device": name, "torch": torch.__version__, "python": platform.python_version(),
        "cpu_cores": os.cpu_count(), "budget_s": args.budget_s,
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "command": " ".join(sys.argv),
        "notes": notes,
    }
    report = Report(args.out, meta)
    report.started = started
    own_work = args.work is None
    work = Path(tempfile.mkdtemp(prefix="ntire-gpu-")) if own_work else args.work
    work.mkdir(parents=True, exist_ok=True)
    run = Run(args=args, sizes=sizes, device=device, clock=Clock(device.type == "cuda"), report=report, work=work,
              deadline=started + args.budget_s, wheels=wheels)

    def on_term(signum: int, _frame: Any) -> None:
        if os.getpid() != MAIN_PID:  # a forked loader worker: just go
            os._exit(128 + signum)
        for child in list(run.children):
            _kill(child)
        if report.current is not None:
            report.current.status = "interrupted"
            report.current.error = f"stopped by signal {signum} while running"
        report.meta["notes"].append(f"run stopped by signal {signum} after {time.monotonic() - started:.0f} s")
        with contextlib.suppress(Exception):
            report.write()
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
        os._exit(128 + signum)

    def on_alarm(_signum: int, _frame: Any) -> None:
        raise DeadlineExceeded("SIGALRM: the time allowed ran out")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGALRM, on_alarm)
    report.write()
    try:
        if {"training", "accelerate"} & set(args.sections):
            start_data(run)
        for section in SECTIONS:
            run_section(run, section)
    finally:
        for child in list(run.children):
            if child.poll() is None:
                _kill(child)
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    summary = report.summary()
    report.write()
    print(f"[gpu.py] {summary['ok']} ok, {summary['error']} failed, {summary['skipped']} skipped, "
          f"{summary['failed_checks']} failed checks in {summary['elapsed_s']} s; report: {args.out / 'report.md'}")
    return 1 if summary["error"] or summary["failed_checks"] else 0


if __name__ == "__main__":
    sys.exit(main())
