"""The synthetic dataset (made by a background child with no torch, so its process pool forks
safely) and the wheels of packages the GPU machine lacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.gpu.context import ROOT, Run
from ntire.files import atomic_write_text

WHEEL_PACKAGES = ("webdataset", "braceexpand")
PACKAGE_DIR = Path(__file__).resolve().parent
"""What `python3 benchmarks/gpu` runs (the data child is started the same way)."""


def wait_data(run: Run) -> dict[str, Any]:
    """The synthetic dataset and its shards (made by a background process started first)."""
    if run.data_info is not None:
        return run.data_info
    assert run.data_proc is not None and run.data_dir is not None
    try:
        rc = run.data_proc.wait(timeout=max(1.0, run.remaining()))
    except subprocess.TimeoutExpired:
        raise RuntimeError("the synthetic dataset was not ready before the deadline") from None
    log = (run.data_dir / "make-data.log").read_text() if (run.data_dir / "make-data.log").exists() else ""
    (run.report.out / "logs").mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.report.out / "logs" / "make-data.log", log)
    if rc != 0:
        raise RuntimeError(f"making the synthetic dataset failed (exit {rc}): {log.strip()[-1500:]}")
    run.data_info = json.loads((run.data_dir / "data.json").read_text())
    return run.data_info


def wait_note(info: dict[str, Any]) -> str:
    return (f"data: {info['images']} synthetic {info['hr_size'][1]}x{info['hr_size'][0]} RGB images in DIV2K layout, "
            f"bicubic x2 LR by ntire.data.degrade, {info['shards']} shards by ntire.data.shards.write_shards "
            f"(made in a background process in {info['seconds']:.1f} s while the first sections ran)")


def synth_image(seed: int, height: int, width: int):
    """A random-ish photo stand-in: smooth colour fields (bicubic-enlarged noise) plus grain."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 24), max(2, width // 24), 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC), dtype=np.float32)
    grain = rng.normal(0.0, 6.0, (height, width, 3)).astype(np.float32)
    return np.clip(base + grain, 0, 255).astype(np.uint8)


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
    atomic_write_text(out / "data.json", json.dumps(info, indent=1))


def start_data(run: Run) -> None:
    s = run.sizes
    run.data_dir = run.work / "data"
    run.data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(PACKAGE_DIR), "--make-data", str(run.data_dir), "--images", str(s.images),
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
        raise SystemExit(f"benchmarks/gpu: --wheels {folder}: no *.whl files there")
    at = sys.path.index(str(ROOT)) + 1 if str(ROOT) in sys.path else 0
    sys.path[at:at] = [w for w in wheels if w not in sys.path]
    return wheels

