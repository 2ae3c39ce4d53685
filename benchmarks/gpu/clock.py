"""Time: CUDA events or perf_counter, and SIGALRM deadlines that nest."""

from __future__ import annotations

import contextlib
import signal
import time
from typing import Any


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
