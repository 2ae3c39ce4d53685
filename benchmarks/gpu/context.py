"""One run's state (arguments, sizes, device, clock, report, deadline, child processes) and what
every section does with it: device memory, Accelerate's process-wide state, child processes."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.gpu.clock import Clock
from benchmarks.gpu.report import Report
from benchmarks.gpu.sizes import Sizes

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("environment", "correctness", "training", "mdsr", "inference", "submissions", "accelerate")


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_child(run: Run, cmd: list[str], name: str, timeout: float) -> tuple[float, subprocess.CompletedProcess]:
    """Run `cmd` (killed on SIGTERM with the rest); its output is also kept in OUT/logs/NAME.log."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=run.child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    run.children.append(proc)
    try:
        stdout, stderr = proc.communicate(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        kill(proc)
        stdout, stderr = proc.communicate()
        stderr += f"\n[{name} killed after {timeout:.0f} s]"
    finally:
        run.children.remove(proc)
    logs = run.report.out / "logs"  # small, and what explains a failure: kept beside the report
    logs.mkdir(parents=True, exist_ok=True)
    (logs / f"{name}.log").write_text(stdout + "\n--- stderr ---\n" + stderr)
    return time.perf_counter() - started, subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)


def tail(text: str, limit: int = 300) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines[-3:])[-limit:]

