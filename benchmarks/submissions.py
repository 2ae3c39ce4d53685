"""All six NTIRE 2017 submissions, end to end: `ntire submit` timed from LR PNGs to validated zips.

    PYTHONPATH=. python3 benchmarks/submissions.py --out OUT [--images 5] [--device cuda]
    .venv/bin/python benchmarks/submissions.py --smoke --out OUT     # tiny, on the CPU, seconds
    .venv/bin/python benchmarks/submissions.py --png                 # PNG compression levels
    .venv/bin/python benchmarks/submissions.py --io                  # PNG work around the compute

`six_submissions()` makes synthetic DIV2K-test-sized inputs (per scale the LR of a 2040x1356 HR
image, for both tracks), saves EDSR with random weights per scale (timing does not depend on the
weights), writes a manifest like `submissions/div2k.yaml` (tile: auto, batch_size 4; x8
self-ensemble on the bicubic track, none on the unknown track) and runs `python -m ntire submit`
for both tracks in a subprocess, as a user would: interpreter start, imports, model loads,
inference, PNG reads and writes, readmes and zips. Every zip is then checked
(`ntire.submission.package.check_zip` against the LR sizes) and its images are compared with the
old path computed in this process: tiles of 512 (the manifest's old default), NCHW, 4 images per
forward pass, the ensemble inside each tile, at the same precision; they must agree within 1 grey
level (TF32 and tile shapes change the rounding, nothing else).

`seconds` is scaled to 100 images per zip (the DIV2K test set). A run holds a fixed part
(start-up, model loads, cuDNN's first calls, zipping) that 100 images would not multiply, so a
second run with 1 image per zip measures it: seconds = T1 + (Tn - T1) x 99 / (n - 1), where Tn is
the run of n images per zip; `seconds_proportional` = Tn x 100 / n is the cruder bound. Both runs
are reported.

Needs only torch, numpy, pillow, safetensors, pyyaml, tqdm and accelerate (what the GPU machine
has), and ntire on PYTHONPATH. `--png` (and `png_levels`) times PNG encoding at each zlib level on
scikit-image's photos enlarged to 2040x1356, the measurement behind
`ntire.submission.predict.PNG_COMPRESS_LEVEL`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TRACKS = {"bicubic": True, "unknown": False}
"""Track -> self-ensemble, as the paper submitted them."""
SCALES = (2, 3, 4)
HR_SIZE = (1356, 2040)
"""(height, width) of the HR image whose LR images stand in for DIV2K's test images."""
SMOKE_HR_SIZE = (48, 72)
OLD_TILE = 512
"""The tile the DIV2K manifest used before `tile: auto`: the old path the output is checked against."""
SCALED_TO = 100
"""Images per zip in the DIV2K test set, to which `seconds` is scaled."""
GOAL_S = 420
"""Issue 16's goal for `seconds` on one H200 at TF32 (the tiled NCHW path projected 1,078 s)."""
ITEM = "six submissions (2 tracks x 3 scales, x8 ensemble on bicubic), `ntire submit` end to end"


def make_inputs(root: Path, images: int, hr_size: tuple[int, int]) -> Path:
    """`images` LR PNGs per track and scale in DIV2K's test layout under `root`; returns `root`."""
    from benchmarks.gpu.data import synth_image
    from ntire.images import write_png

    hr_h, hr_w = hr_size
    for track in TRACKS:
        for scale in SCALES:
            folder = root / "DIV2K" / f"DIV2K_test_LR_{track}" / f"X{scale}"
            for i in range(images):
                name = f"{901 + i:04d}x{scale}.png"
                if not (folder / name).is_file():
                    write_png(folder / name, synth_image(1000 * scale + i, hr_h // scale, hr_w // scale), 1)
    return root


def make_checkpoints(folder: Path, smoke: bool, preset: str = "edsr") -> dict[int, Path]:
    """An EDSR per scale with random weights (smoke: 1 block of 8 features), as model folders."""
    import torch

    from ntire.config import ModelConfig
    from ntire.models.build import build_model
    from ntire.models.checkpoint import save_model

    found = {}
    for scale in SCALES:
        if smoke:
            config = ModelConfig(kind="edsr", scales=(scale,), n_blocks=1, n_feats=8)
        else:
            config = ModelConfig.preset(preset, scales=(scale,))
        torch.manual_seed(scale)
        found[scale] = save_model(folder / f"{config.name}_x{scale}", build_model(config), config)
    return found


def write_manifest(path: Path, data_root: Path, checkpoints: dict[int, Path]) -> Path:
    import yaml

    def track(ensemble: bool) -> dict[str, Any]:
        return {"models": [{"checkpoint": str(checkpoints[s]), "scales": [s], "self_ensemble": ensemble,
                            "description": "EDSR with random weights (benchmarks/submissions.py)"} for s in SCALES]}

    manifest = {"name": "six", "data": str(data_root), "split": "test", "tile": "auto", "batch_size": 4,
                **{t: track(e) for t, e in TRACKS.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


def run_submit(manifest: Path, out: Path, device: str, precision: str | None, log: Path) -> float:
    """Wall seconds of `python -m ntire submit` for both tracks; raises with the log's tail if it fails."""
    argv = [sys.executable, "-m", "ntire", "submit", "--manifest", str(manifest), "--out", str(out),
            "--device", device, "--no-mlflow", "--no-progress"]
    if precision:
        argv += ["--precision", precision]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(argv, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"ntire submit exited {proc.returncode}: {log.read_text()[-2000:]}")
    return seconds


def check_zips(out: Path) -> list[str]:
    """Every problem of the six zips against their LR sizes (`ntire submit --check`'s checks)."""
    from ntire.submission.package import Expected, check_zip, expected_record_path

    problems = []
    for track in TRACKS:
        for scale in SCALES:
            zip_path = out / f"{track}_x{scale}.zip"
            if not zip_path.is_file():
                problems.append(f"{zip_path.name}: missing")
                continue
            expected = Expected.from_json(expected_record_path(zip_path).read_text())
            problems += [f"{zip_path.name}: {p}" for p in check_zip(zip_path, expected)]
    return problems


def compare_with_old_path(out: Path, data_root: Path, checkpoints: dict[int, Path], device: str,
                          precision: str | None, images: int | None, tile: int) -> dict[str, int]:
    """Zip name -> max |new - old| in grey levels over its first `images` images (None: all),
    the old path being tiles of `tile`, NCHW, 4 per pass, the ensemble inside each tile."""
    import zipfile

    import numpy as np

    from ntire.images import decode_image, read_image
    from ntire.inference import resolve_precision, upscale_image
    from ntire.models.checkpoint import load_model

    precision = resolve_precision(precision, device)
    worst = {}
    for scale in SCALES:
        model, config = load_model(checkpoints[scale], map_location="cpu")
        for track, ensemble in TRACKS.items():
            zip_path = out / f"{track}_x{scale}.zip"
            lr_dir = data_root / "DIV2K" / f"DIV2K_test_LR_{track}" / f"X{scale}"
            names = sorted(p.name for p in lr_dir.glob("*.png"))[:images]
            diff = 0
            with zipfile.ZipFile(zip_path) as archive:
                for name in names:
                    old = upscale_image(model, config, read_image(lr_dir / name), scale=scale, tile=tile,
                                        self_ensemble=ensemble, device=device, max_batch=4, precision=precision,
                                        channels_last=False)
                    new = decode_image(archive.read(name), name)
                    diff = max(diff, int(np.abs(old.astype(np.int16) - new.astype(np.int16)).max()))
            worst[zip_path.name] = diff
        del model
        _empty_cache(device)
    return worst


def _empty_cache(device: str) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def compute_seconds(out: Path) -> dict[str, float]:
    """Zip name -> the model's seconds summed over its images, from the state `ntire submit` keeps."""
    found = {}
    for track in TRACKS:
        for scale in SCALES:
            state = json.loads((out / track / f"x{scale}" / "state-sr.json").read_text())
            found[f"{track}_x{scale}.zip"] = sum(v["seconds"] for v in state["images"].values())
    return found


def six_submissions(
    out_dir: str | os.PathLike,
    device: str = "cuda",
    images_per_zip: int = 5,
    *,
    smoke: bool = False,
    precision: str | None = None,
    check_images: int | None = None,
    fixed_run: bool = True,
    preset: str = "edsr",
) -> dict[str, Any]:
    """Time `ntire submit` making all six zips (see module doc); returns one report row as a dict.

    `precision`: None is `ntire submit`'s default (tf32 on CUDA, fp32 elsewhere). `check_images`:
    how many images of each zip are compared with the old path (None: all). `fixed_run`: also run
    with 1 image per zip to separate the fixed cost from the per-image cost (see module doc).
    Keys: item, seconds (scaled to 100 images per zip), minutes, seconds_proportional, run_s (the
    n-image run), fixed_run_s, images_per_zip, compute_s (model seconds per zip, n-image run),
    max_diff_vs_old_path (grey levels, per zip), problems (zip validation), ok (valid zips, equal to
    the old path), goal_s and within_goal (seconds <= goal_s; meaningful on one H200 only), note.
    """
    out_dir = Path(out_dir).resolve()  # the submit subprocess runs in the repository root
    if images_per_zip < 1:
        raise ValueError(f"images_per_zip must be at least 1, got {images_per_zip}")
    hr_size = SMOKE_HR_SIZE if smoke else HR_SIZE
    data_root = make_inputs(out_dir / "data", images_per_zip, hr_size)
    checkpoints = make_checkpoints(out_dir / "models", smoke, preset)
    manifest = write_manifest(out_dir / "manifest.yaml", data_root, checkpoints)

    fixed_s = None
    if fixed_run and images_per_zip > 1:
        one_root = make_inputs(out_dir / "data-1", 1, hr_size)
        one_manifest = write_manifest(out_dir / "manifest-1.yaml", one_root, checkpoints)
        fixed_s = run_submit(one_manifest, out_dir / "out-1", device, precision, out_dir / "logs" / "submit-1.log")
    out = out_dir / "out"
    run_s = run_submit(manifest, out, device, precision, out_dir / "logs" / "submit.log")
    problems = check_zips(out)
    tile = 16 if smoke else OLD_TILE  # smoke images are smaller than 512: still tile them
    diffs = compare_with_old_path(out, data_root, checkpoints, device, precision, check_images, tile)

    n = images_per_zip
    proportional = run_s * SCALED_TO / n
    if fixed_s is not None:
        seconds = fixed_s + max(0.0, run_s - fixed_s) * (SCALED_TO - 1) / (n - 1)
        how = (f"{fixed_s:.1f} s for 1 image per zip + ({run_s:.1f} - {fixed_s:.1f}) s x 99/{n - 1} "
               f"(the per-image part of the {n}-image run)")
    else:
        seconds, how = proportional, f"{run_s:.1f} s x {SCALED_TO}/{n}"
    checked = n if check_images is None else min(n, check_images)
    ok = not problems and max(diffs.values()) <= 1
    what = "tiny smoke images, 1 block of 8 features" if smoke else (
        f"LR of a {hr_size[1]}x{hr_size[0]} image per scale, {preset.upper()} with random weights")
    return {
        "item": ITEM,
        "seconds": seconds,
        "minutes": seconds / 60,
        "seconds_proportional": proportional,
        "run_s": run_s,
        "fixed_run_s": fixed_s,
        "images_per_zip": n,
        "device": device,
        "precision": precision or "default",
        "compute_s": compute_seconds(out),
        "max_diff_vs_old_path": diffs,
        "problems": problems,
        "ok": ok,
        "goal_s": GOAL_S,
        "within_goal": seconds <= GOAL_S,
        "note": (f"{n} images per zip actually run ({what}), scaled to {SCALED_TO}: {how}; 6 zips valid"
                 f"{'' if not problems else ' NO: ' + '; '.join(problems[:3])}; output vs the old path (tiles of "
                 f"{tile}, NCHW, no I/O overlap) on {checked} image(s) per zip: max {max(diffs.values())} grey "
                 "level(s) (limit 1)"),
    }


# ---------------------------------------------------------------------------------------------
# PNG compression levels


def png_levels(levels: tuple[int, ...] = (0, 1, 2, 3, 6, 9), size: tuple[int, int] = HR_SIZE) -> list[dict]:
    """Encode/decode ms and MiB per image at each zlib level, on scikit-image's photos enlarged to
    `size` (height, width), as SR outputs are; every level is checked lossless."""
    import numpy as np
    from PIL import Image
    from skimage import data

    photos = [np.asarray(Image.fromarray(p).resize(size[::-1], Image.BICUBIC))
              for p in (data.astronaut(), data.chelsea(), data.coffee(), data.rocket())]
    rows = []
    for level in levels:
        encode = decode = size_bytes = 0.0
        for photo in photos:
            buf = io.BytesIO()
            start = time.perf_counter()
            Image.fromarray(photo).save(buf, format="PNG", compress_level=level)
            encode += time.perf_counter() - start
            size_bytes += buf.tell()
            start = time.perf_counter()
            back = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
            decode += time.perf_counter() - start
            assert (back == photo).all(), f"level {level} is not lossless"
        k = len(photos)
        rows.append({"level": level, "encode_ms": encode / k * 1e3, "decode_ms": decode / k * 1e3,
                     "mib": size_bytes / k / 2**20})
    return rows


def io_overlap(folder: Path, images: int = 8, compute_s: float = 0.25, scale: int = 2) -> dict[str, float]:
    """Wall seconds per image of the PNG path around a stand-in for the GPU's compute, on
    DIV2K-test-sized x`scale` inputs: serial (read, compute, write at level 6: the old predict)
    against `ntire.submission.predict.predict` (a pool, level 1). The stand-in sleeps `compute_s`
    (a GPU leaves the CPU free meanwhile) and enlarges the LR image by pixel repetition."""
    import numpy as np

    from benchmarks.gpu.data import synth_image
    from ntire.files import atomic_write_text
    from ntire.images import read_image, write_png
    from ntire.submission.predict import LRInput, predict

    lr_dir = folder / "lr"
    inputs = []
    for i in range(images):
        path = lr_dir / f"{901 + i:04d}x{scale}.png"
        if not path.is_file():
            write_png(path, synth_image(i, HR_SIZE[0] // scale, HR_SIZE[1] // scale), 1)
        inputs.append(LRInput(path=path))

    def compute(lr):
        time.sleep(compute_s)
        return np.repeat(np.repeat(lr, scale, axis=0), scale, axis=1)

    run = folder / f"compute-{compute_s}"
    start = time.perf_counter()
    for item in inputs:
        write_png(run / "serial" / item.sr_name, compute(read_image(item.path)), 6)
        atomic_write_text(run / "serial-state.json", "{}")
    serial = (time.perf_counter() - start) / images
    start = time.perf_counter()
    record = predict(compute, inputs, run / "pool", scale=scale, setup={}, state_path=run / "pool-state.json",
                     progress=False)
    assert record.done == images, "the pool's folder held finished images: give an empty folder"
    pooled = (time.perf_counter() - start) / images
    return {"compute_s": compute_s, "serial_s": serial, "pool_s": pooled}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--images", type=int, default=None, help="images per zip (default 5; smoke 2)")
    parser.add_argument("--precision", default=None, help="fp32, tf32 or bf16 (default: ntire submit's)")
    parser.add_argument("--check-images", type=int, default=None, help="images per zip checked against the old path")
    parser.add_argument("--no-fixed-run", dest="fixed_run", action="store_false",
                        help="skip the 1-image run; scale the n-image run proportionally")
    parser.add_argument("--smoke", action="store_true", help="tiny images and model on the CPU: seconds")
    parser.add_argument("--png", action="store_true", help="only time PNG encoding per compression level")
    parser.add_argument("--io", action="store_true",
                        help="only time the PNG path around a 0.25 s stand-in for the GPU: serial vs the pool")
    args = parser.parse_args(argv)
    if args.io:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            for compute_s in (0.25, 1.0):
                r = io_overlap(Path(args.out or tmp), compute_s=compute_s)
                print(f"compute {r['compute_s']:.2f} s per x2 image: serial read + compute + write (level 6) "
                      f"{r['serial_s']:.2f} s, pool (level 1) {r['pool_s']:.2f} s per image")
        return 0
    if args.png:
        for row in png_levels():
            print(f"level {row['level']}: encode {row['encode_ms']:.0f} ms, decode {row['decode_ms']:.0f} ms, "
                  f"{row['mib']:.2f} MiB per {HR_SIZE[1]}x{HR_SIZE[0]} image")
        return 0
    import tempfile

    import torch

    device = args.device or ("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    images = args.images or (2 if args.smoke else 5)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        row = six_submissions(out, device, images, smoke=args.smoke, precision=args.precision,
                              check_images=args.check_images, fixed_run=args.fixed_run)
    print(json.dumps(row, indent=1))
    return 0 if row["ok"] else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
