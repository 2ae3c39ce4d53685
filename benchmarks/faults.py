"""Fault-injection soak: SIGKILL ntire's long jobs at random moments, restart them, and check that
nothing was lost, corrupted or silently reused when stale.

For each job (training with --resume auto, `ntire data shard`, `ntire upscale` of a folder and
`ntire submit`) it first runs the job once uninterrupted as the reference, then, in a fresh folder,
starts it, SIGKILLs it after a random delay (uniform between the interpreter's start-up time and
the reference run's duration), starts it again, and so on until the job has been killed `--kills`
times, and finally lets it finish. The result is then compared with the reference:

- training: the exported weights are bit-identical (CPU, same seed and thread count);
- shards: every shard and the manifest are byte-identical;
- upscale: every output PNG decodes and equals the reference pixel for pixel;
- submit: every zip passes `ntire submit --check` and holds the reference's files;
- everywhere: no temporary file is left behind (`.NAME.xxxx.tmp`, `.tmp-step-*`).

Two more cases follow the kills:

- concurrent runs: two copies of a job started at once into one fresh folder (training with a
  fresh shard cache, shard writing, `ntire submit`), the second a random moment after the first.
  The one that finds the folder locked must exit 2 with one line naming the holder; the folder
  must end up holding the reference's result and no debris. Training also runs two jobs into
  two folders sharing one fresh shard cache: the second waits for the first's shards.
- a full disk: training and a folder upscale write into a small tmpfs (mounting one needs root;
  the case is skipped, saying so, otherwise) that fills up mid-run. The job must exit 2 with one
  line saying the disk is full, leave no temporary file and only intact checkpoints/PNGs; moved to
  a roomy disk, the rerun (training: `--resume auto`) must equal the reference.

It prints one line per job and case and then `N kills, M jobs, L lost/corrupt/stale, ...` (L counts
failed checks; the goal is 0). `--kills 13` gives the full run's 52 kills over the four jobs; a test
runs it with `--kills 1`.

    python benchmarks/faults.py [--kills 13] [--seed 0] [--work DIR] [--jobs train shard upscale submit]
                                [--concurrent 2] [--no-disk-full]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "model.n_blocks=1", "--set", "model.n_feats=8"]


@dataclass
class Job:
    """One job of the soak: how to run it into a folder, and how to compare two results."""

    name: str
    command: Callable[[Path], list[str]]
    """The command line that writes its results into the given folder (restartable as is)."""
    compare: Callable[[Path, Path], list[str]]
    """Problems of the result folder (second) against the reference (first); [] when equal."""
    kills: int = 0
    mid_write: int = 0
    """Kills that landed after the job had written something in that run (not during start-up)."""
    runs: int = 0
    problems: list[str] = field(default_factory=list)
    cached_command: Callable[[Path, Path], list[str]] | None = None
    """Training only: the command with its shard cache in the second folder given."""
    pairs: int = 0
    """Concurrent pairs started."""
    refused: int = 0
    """Runs refused in one line because the other of their pair held the folder."""
    full: int = 0
    """Runs that met a full disk."""


ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run(argv: list[str], *, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=ENV, cwd=REPO)


def ntire(*args: str) -> list[str]:
    return [sys.executable, "-m", "ntire", *args]


def leftovers(folder: Path) -> list[str]:
    """ntire's temporary files and half-saved checkpoints under `folder`."""
    found = []
    for p in folder.rglob("*"):
        if (p.is_file() and p.name.startswith(".") and p.name.endswith(".tmp")) or p.name.startswith(".tmp-step-"):
            found.append(str(p.relative_to(folder)))
    return sorted(found)


def same_files(reference: Path, result: Path, pattern: str) -> list[str]:
    """Byte comparison of the files matching `pattern` in both folders."""
    a = {p.relative_to(reference): p for p in reference.rglob(pattern) if p.is_file()}
    b = {p.relative_to(result): p for p in result.rglob(pattern) if p.is_file()}
    problems = [f"missing {k}" for k in sorted(a.keys() - b.keys())]
    problems += [f"unexpected {k}" for k in sorted(b.keys() - a.keys())]
    problems += [f"differs {k}" for k in sorted(a.keys() & b.keys()) if a[k].read_bytes() != b[k].read_bytes()]
    return problems


def soak(job: Job, work: Path, kills: int, rng: random.Random, startup: float) -> None:
    """Reference run, then `kills` killed runs and a final one; record what differs."""
    reference, result = work / f"{job.name}-reference", work / f"{job.name}-killed"
    started = time.perf_counter()
    done = run(job.command(reference))
    duration = time.perf_counter() - started
    if done.returncode != 0:
        job.problems.append(f"reference run failed: {done.stderr.strip().splitlines()[-1:]}")
        return
    while job.kills < kills:
        delay = rng.uniform(startup, max(duration, startup * 1.5))
        proc = subprocess.Popen(job.command(result), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                cwd=REPO, env=ENV)
        job.runs += 1
        began = time.time()
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            job.kills += 1
            job.mid_write += any(p.stat().st_mtime > began for p in result.rglob("*")) if result.exists() else 0
            continue
        if proc.returncode == 0:
            # Finished before the kill: start over from scratch so later kills land mid-job again.
            shutil.rmtree(result, ignore_errors=True)
        else:
            job.problems.append(f"run {job.runs} exited {proc.returncode} without being killed")
            return
    final = run(job.command(result))
    job.runs += 1
    if final.returncode != 0:
        job.problems.append(f"final run failed: {(final.stderr.strip().splitlines() or [''])[-1]}")
        return
    job.problems += job.compare(reference, result)
    job.problems += [f"leftover {p}" for p in leftovers(result)]


def ntire_lines(stderr: str) -> list[str]:
    """The lines a command printed as itself (`ntire ...: error: ...`), and any traceback's."""
    return [line for line in stderr.splitlines() if line.startswith(("ntire", "Traceback"))]


def concurrent(job: Job, work: Path, rounds: int, rng: random.Random, startup: float) -> None:
    """Two copies of `job` at once into one fresh folder, `rounds` times: whatever the timing, the
    one that finds the folder held exits 2 in one line naming the holder, and the folder ends up
    holding the reference's result. Training also runs two jobs into two folders sharing one
    fresh shard cache, which both must finish (the second waits for the first's shards)."""
    reference = work / f"{job.name}-reference"
    setups = [(f"{job.name}-concurrent-{r}", None) for r in range(rounds)]
    if job.cached_command is not None:
        setups.append((f"{job.name}-shared-cache", work / f"{job.name}-shared-cache" / "cache"))
    for name, cache in setups:
        base = work / name
        outs = [base / "a", base / "b"] if cache is not None else [base, base]
        base.mkdir(parents=True, exist_ok=True)
        procs = []
        for i, out in enumerate(outs):
            command = job.command(out) if cache is None else job.cached_command(out, cache)
            log = open(base / f"stderr-{i}.txt", "w")  # a file, not a pipe that could fill up
            procs.append((subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, cwd=REPO, env=ENV), log))
            if i == 0:
                time.sleep(rng.uniform(0, startup * 1.5))  # the second starts as the first starts or runs
        job.pairs += 1
        codes = []
        for i, (proc, log) in enumerate(procs):
            codes.append(proc.wait(timeout=900))
            log.close()
            lines = ntire_lines((base / f"stderr-{i}.txt").read_text())
            if codes[-1] == 2 and cache is None and len(lines) == 1 and "in use by" in lines[0] and "pid" in lines[0]:
                job.refused += 1
            elif codes[-1] != 0:
                job.problems.append(f"{name}: run {i} exited {codes[-1]}: {lines[-1:]}")
        if 0 not in codes:
            job.problems.append(f"{name}: neither run finished")
            continue  # nothing to compare: the failure is the finding
        for out in dict.fromkeys(outs):
            job.problems += [f"{name}: {p}" for p in job.compare(reference, out) + leftovers(out)]


@contextlib.contextmanager
def small_filesystem(folder: Path, size: int) -> Iterator[bool]:
    """A tmpfs of `size` bytes mounted at `folder` (yields False, mounting nothing, where that is
    not allowed: it needs root)."""
    folder.mkdir(parents=True, exist_ok=True)
    size = max(64 * 1024, -(-size // 4096) * 4096)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True).returncode == 0 if shutil.which("mount") else False
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], capture_output=True)


def footprint(folder: Path, skip: str = "shards") -> int:
    """Bytes of the files under `folder`, except under its `skip` sub-folder (a shard cache)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and skip not in p.relative_to(folder).parts)


def disk_full(job: Job, work: Path) -> bool:
    """`job` (train or upscale) into a tmpfs half the size of its reference result: it must stop
    in one line saying the disk is full and leave only intact files; moved to a roomy disk, its
    rerun must equal the reference. False when no tmpfs could be mounted (nothing checked)."""
    from ntire.training.state import checkpoint_problem, list_checkpoints

    reference = work / f"{job.name}-reference"
    mount = work / f"{job.name}-small-disk"
    cache = work / f"{job.name}-full-cache"  # training's shard cache stays on the roomy disk
    with small_filesystem(mount, footprint(reference) // 2) as mounted:
        if not mounted:
            return False
        out = mount / "out"
        command = job.cached_command(out, cache) if job.cached_command else job.command(out)
        done = run(command)
        job.full += 1
        lines = ntire_lines(done.stderr)
        if done.returncode != 2 or len(lines) != 1 or "No space left on device" not in lines[0]:
            job.problems.append(f"full disk: exit {done.returncode}, said {lines[-2:]}")
        job.problems += [f"full disk: leftover {p}" for p in leftovers(out)] if out.exists() else []
        if job.name == "train" and out.exists():
            for c in list_checkpoints(out):
                problem = checkpoint_problem(c)
                if problem:
                    job.problems.append(f"full disk: damaged checkpoint left: {problem}")
        moved = work / f"{job.name}-after-full"
        if out.exists():
            shutil.copytree(out, moved)
        else:
            moved.mkdir()
    if job.name == "upscale":
        job.problems += [f"full disk: {p}" for p in job.compare(reference, moved) if not p.startswith("missing")]
        command = job.command(moved) + ["--force"]
    else:
        command = job.cached_command(moved, cache)
    again = run(command)
    if again.returncode != 0:
        job.problems.append(f"after the full disk: rerun exited {again.returncode}: {ntire_lines(again.stderr)[-1:]}")
    else:
        job.problems += [f"after the full disk: {p}" for p in job.compare(reference, moved) + leftovers(moved)]
    return True


def build_jobs(work: Path) -> list[Job]:
    data = work / "data"
    made = run(ntire("data", "sample", "--out", str(data)))
    if made.returncode != 0:
        raise SystemExit(f"cannot build the sample data: {made.stderr}")
    model_dir = work / "model-run"
    trained = run(ntire("train", "--data", str(data), "--output-dir", str(model_dir), "--max-steps", "2",
                        "--batch-size", "2", "--patch-size", "16", "--num-workers", "0", "--no-tracking",
                        "--no-progress", "--eval-every", "0", *TINY))
    if trained.returncode != 0:
        raise SystemExit(f"cannot train the soak's model: {trained.stderr}")

    def train(out: Path, cache: Path | None = None) -> list[str]:
        shards = ["--set", f"data.shard_dir={cache}"] if cache is not None else []
        return ntire("train", "--data", str(data), "--output-dir", str(out), "--max-steps", "24",
                     "--save-every", "3", "--eval-every", "12", "--batch-size", "4", "--patch-size", "16",
                     "--num-workers", "0", "--set", "log_every=1", "--seed", "3", "--no-tracking",
                     "--no-progress", "--resume", "auto", "--keep-last", "2", *shards, *TINY)

    def compare_train(reference: Path, result: Path) -> list[str]:
        from safetensors.torch import load_file

        a = load_file(str(reference / "model" / "model.safetensors"))
        b = load_file(str(result / "model" / "model.safetensors"))
        if a.keys() != b.keys() or any(not (a[k] == b[k]).all() for k in a):
            return ["exported weights differ from the uninterrupted run's"]
        return []

    def shard(out: Path) -> list[str]:
        return ntire("data", "shard", "--root", str(data), "--out", str(out), "--scales", "2", "3", "4",
                     "--subimage", "96", "--step", "48", "--shard-size", "200KiB", "--quiet")

    def upscale(out: Path) -> list[str]:
        # --force: a rerun after a kill finds the outputs the killed run finished (all complete:
        # each is renamed into place whole) and writes them again.
        return ntire("upscale", "--checkpoint", str(model_dir / "model"), "--scale", "2", "--device", "cpu",
                     "--force", str(data / "DIV2K" / "DIV2K_train_LR_bicubic" / "X2"), str(out))

    def compare_pngs(reference: Path, result: Path) -> list[str]:
        import numpy as np

        from ntire.errors import ImageError
        from ntire.images import read_image

        problems = same_files(reference, result, "*.png")
        for png in sorted(result.glob("*.png")):
            try:
                image = read_image(png)
            except ImageError as e:
                problems.append(f"undecodable {png.name}: {e}")
                continue
            ref = reference / png.name
            if ref.is_file() and not np.array_equal(image, read_image(ref)):
                problems.append(f"pixels differ {png.name}")
        return problems

    def submit(out: Path) -> list[str]:
        return ntire("submit", "--manifest", str(manifest), "--track", "bicubic", "--out", str(out),
                     "--device", "cpu", "--no-mlflow", "--data", str(data))

    def compare_zips(reference: Path, result: Path) -> list[str]:
        problems = []
        zips = sorted(result.rglob("*.zip"))
        if not zips:
            return ["no zip written"]
        for z in zips:
            check = run(ntire("submit", "--check", str(z)))
            if check.returncode != 0:
                problems.append(f"{z.name} fails --check: {check.stderr.strip()}")
            ref = reference / z.relative_to(result)
            names = lambda p: sorted(i.filename for i in zipfile.ZipFile(p).infolist())  # noqa: E731
            if ref.is_file() and names(ref) != names(z):
                problems.append(f"{z.name} holds other files than the reference zip")
        return problems

    manifest = work / "soak-manifest.yaml"
    manifest.write_text(
        "name: soak\n"
        f"data: {data}\n"
        "split: valid\n"
        "tile: 64\n"
        "bicubic:\n"
        "  models:\n"
        f"    - checkpoint: {model_dir / 'model'}\n"
        "      scales: [2]\n"
        "      description: the soak's tiny model\n"
        "unknown:\n"
        "  models:\n"
        f"    - checkpoint: {model_dir / 'model'}\n"
        "      scales: [2]\n"
        "      description: the soak's tiny model\n"
    )
    return [
        Job("train", train, compare_train, cached_command=train),
        Job("shard", shard, lambda a, b: same_files(a, b, "*.tar") + same_files(a, b, "manifest.json")),
        Job("upscale", upscale, compare_pngs),
        Job("submit", submit, compare_zips),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=13, help="SIGKILLs per job (default 13: 52 in all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill delays")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--jobs", nargs="+", default=["train", "shard", "upscale", "submit"],
                        choices=["train", "shard", "upscale", "submit"])
    parser.add_argument("--concurrent", type=int, default=2, metavar="N",
                        help="concurrent pairs per lockable job (train, shard, submit; default 2; 0: none)")
    parser.add_argument("--no-disk-full", dest="disk_full", action="store_false",
                        help="skip the full-disk case (train and upscale into a small tmpfs)")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    work = args.work or Path(tempfile.mkdtemp(prefix="ntire-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    run([sys.executable, "-c", "import ntire.__main__, torch"])  # warm the file cache first
    t0 = time.perf_counter()
    run([sys.executable, "-c", "import ntire.__main__, torch"])
    startup = time.perf_counter() - t0
    jobs = [j for j in build_jobs(work) if j.name in args.jobs]
    print(f"fault soak in {work}: {args.kills} kill(s) per job, interpreter start-up {startup:.1f} s", flush=True)
    for job in jobs:
        t = time.perf_counter()
        soak(job, work, args.kills, rng, startup)
        status = "ok" if not job.problems else "; ".join(job.problems[:5])
        print(f"  {job.name:8s} {job.kills:3d} kills ({job.mid_write} after it had written), {job.runs:3d} runs, "
              f"{time.perf_counter() - t:6.1f} s: {status}", flush=True)
    for job in jobs:
        if args.concurrent and job.name != "upscale":  # upscale takes no lock: outputs are per file
            t, before = time.perf_counter(), len(job.problems)
            concurrent(job, work, args.concurrent, rng, startup)
            status = "ok" if len(job.problems) == before else "; ".join(job.problems[before:][:5])
            print(f"  {job.name:8s} {job.pairs:3d} concurrent pairs, {job.refused} refused in one line, "
                  f"{time.perf_counter() - t:6.1f} s: {status}", flush=True)
    skipped = []
    for job in jobs:
        if args.disk_full and job.name in ("train", "upscale"):
            t, before = time.perf_counter(), len(job.problems)
            if not disk_full(job, work):
                skipped.append(job.name)
                continue
            status = "ok" if len(job.problems) == before else "; ".join(job.problems[before:][:5])
            print(f"  {job.name:8s} full disk, {time.perf_counter() - t:6.1f} s: {status}", flush=True)
    if skipped:
        print(f"  full-disk case skipped for {', '.join(skipped)}: no tmpfs could be mounted (needs root)")
    kills = sum(j.kills for j in jobs)
    lost = sum(len(j.problems) for j in jobs)
    pairs, refused, full = (sum(j.pairs for j in jobs), sum(j.refused for j in jobs), sum(j.full for j in jobs))
    print(f"{kills} kills, {len(jobs)} jobs, {lost} lost/corrupt/stale, {pairs} concurrent pairs ({refused} "
          f"refused in one line), {full} full-disk runs ({time.perf_counter() - started:.0f} s)")
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
