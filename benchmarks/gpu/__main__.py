"""`python3 benchmarks/gpu --out OUT [--smoke] [--wheels DIR]`: the command line of the GPU proof
(the package's docstring says what it does): sections in order, each under its deadline, the report
rewritten as it goes, SIGTERM handled, the exit status."""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a folder, Python puts the folder itself first on sys.path, where its modules would shadow
# top-level packages of the same names; the repository root belongs there instead (as the package
# imports itself as benchmarks.gpu).
_ROOT = Path(__file__).resolve().parents[2]
if sys.path and sys.path[0] and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(_ROOT)
elif str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import argparse  # noqa: E402 - after the path set-up above
import contextlib  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from typing import Any  # noqa: E402

import benchmarks.gpu  # noqa: E402
from benchmarks.gpu.clock import Clock, DeadlineExceeded, alarm, alarmed  # noqa: E402
from benchmarks.gpu.context import SECTIONS, Run, free_memory, kill  # noqa: E402
from benchmarks.gpu.correctness import section_correctness  # noqa: E402
from benchmarks.gpu.data import add_wheels, make_data, make_wheels, start_data  # noqa: E402
from benchmarks.gpu.environment import section_environment, version  # noqa: E402
from benchmarks.gpu.inference import section_inference  # noqa: E402
from benchmarks.gpu.launch import section_accelerate  # noqa: E402
from benchmarks.gpu.mdsr import section_mdsr  # noqa: E402
from benchmarks.gpu.report import Report  # noqa: E402
from benchmarks.gpu.sizes import GPU, SMOKE  # noqa: E402
from benchmarks.gpu.submissions import section_submissions  # noqa: E402
from benchmarks.gpu.training import section_training  # noqa: E402
from benchmarks.train_step import cpu_name  # noqa: E402

MAIN_PID = os.getpid()


RUNNERS = {
    "environment": section_environment,
    "correctness": section_correctness,
    "training": section_training,
    "mdsr": section_mdsr,
    "inference": section_inference,
    "submissions": section_submissions,
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
    print(f"[gpu] {name} ({run.remaining():.0f} s left)", flush=True)
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
    print(f"[gpu] {name}: {sec.status} in {sec.seconds:.1f} s" + (f" ({sec.error})" if sec.error else ""),
          flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/gpu", description=benchmarks.gpu.__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder for report.json and report.md")
    parser.add_argument("--smoke", action="store_true", help="every section on the CPU with tiny sizes, in seconds")
    parser.add_argument("--wheels", metavar="DIR", help="put DIR/*.whl on sys.path first (webdataset, braceexpand)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="global deadline from start (default 420)")
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
        print(f"benchmarks/gpu: no CUDA device visible (torch {torch.__version__}, CUDA_VISIBLE_DEVICES={visible!r}); "
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
    if version("webdataset") == "not importable":
        notes.append("webdataset is not importable: the training and accelerate sections need it (--wheels DIR)")
    meta = {
        "mode": "CPU smoke run: tiny sizes, only shows that every path runs (figures say nothing about speed)"
        if args.smoke else "GPU run", "device": name, "torch": torch.__version__, "python": platform.python_version(),
        "cpu_cores": os.cpu_count(), "budget_s": args.budget_s,
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "command": " ".join(sys.argv),
        "notes": notes,
    }
    report = Report(args.out, meta, SECTIONS)
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
            kill(child)
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
                kill(child)
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    summary = report.summary()
    report.write()
    print(f"[gpu] {summary['ok']} ok, {summary['error']} failed, {summary['skipped']} skipped, "
          f"{summary['failed_checks']} failed checks in {summary['elapsed_s']} s; report: {args.out / 'report.md'}")
    return 1 if summary["error"] or summary["failed_checks"] else 0


if __name__ == "__main__":
    sys.exit(main())
