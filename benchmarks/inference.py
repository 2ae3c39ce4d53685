"""Inference speed and memory: whole image vs tiles, the cost of self-ensemble, tiled exactness.

    .venv/bin/python benchmarks/inference.py [--device cuda] [--threads N]

Every configuration runs in a fresh subprocess, so each peak-memory figure is its own: on CPU the
process's peak resident set (ru_maxrss) above what it held once the model and input were ready,
on CUDA torch.cuda.max_memory_allocated above the same point. Weights are random (timing does not
depend on them); each configuration is timed once after a warm-up pass on a small input. On CPU the
ratios compare CPU seconds (user + system) rather than wall time, which other processes on a
shared machine would distort.

On a GPU the input is DIV2K-sized (2040x1356 LR) and tiles go through 4 at a time. On CPU such a
pass would take many minutes, so the inputs are smaller (printed) and tiles run one at a time:
EDSR baseline on 510x339 (the x4 LR of a DIV2K image) in tiles of 256, EDSR on 128x85, where its
overlap (the receptive-field radius, 68 LR pixels) makes each of the 2 windows span the whole
image, so that row shows only exactness and the price of tiling a small image.

Each configuration also prints what ntire's memory model (`ntire.tiles.estimate_memory`,
without its safety factor) predicts for it, beside the measured peak, and what `--tile auto` (the
default of `ntire upscale`, the benchmark and the submission builder) would choose for that input
with the memory free in the child at that point: the check of the model on real hardware.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    """One measured configuration."""

    model: str
    """Preset name (ntire.config.MODEL_PRESETS)."""
    scale: int
    width: int
    """LR input width."""
    height: int
    """LR input height."""
    tile: int | str | None
    """Tile size in LR pixels, None for the whole image, or "auto" (ntire.tiles.plan_tiles)."""
    self_ensemble: bool
    max_batch: int
    device: str
    output: str
    """Where the child saves the float output (for the tiled-vs-whole comparison)."""


def plan(device: str) -> list[tuple[str, Case, Case]]:
    """(label, baseline case, compared case) pairs for this device."""
    if device.startswith("cuda"):
        # DIV2K-sized LR input; tiles batched 4 at a time, as `ntire upscale` does by default.
        sizes = {"edsr-baseline": (2040, 1356, 512), "edsr": (2040, 1356, 512)}
        se_size, tile_batch = (510, 339), 4
    else:
        # 2 CPU threads: EDSR baseline ~60 us per LR pixel at x2, EDSR ~700 us. Batching gains
        # nothing on CPU, so tiles run one at a time, which is what bounds memory.
        sizes = {"edsr-baseline": (510, 339, 256), "edsr": (128, 85, 96)}
        se_size, tile_batch = (192, 128), 1
    pairs = []
    for model, (w, h, tile) in sizes.items():
        whole = Case(model, 2, w, h, None, False, tile_batch, device, "")
        tiled = Case(model, 2, w, h, tile, False, tile_batch, device, "")
        pairs.append((f"{model} x2, {w}x{h} LR: whole image vs tiles of {tile}", whole, tiled))
    w, h = se_size
    plain = Case("edsr-baseline", 2, w, h, None, False, 4, device, "")
    ensemble = Case("edsr-baseline", 2, w, h, None, True, 4, device, "")
    pairs.append((f"edsr-baseline x2, {w}x{h} LR: plain vs self-ensemble", plain, ensemble))
    return pairs


def child(case: Case) -> dict:
    """Run one configuration in this (fresh) process and report time and peak memory."""
    import torch

    from ntire.config import ModelConfig
    from ntire.inference import upscale_tensor
    from ntire.models.build import build_model
    from ntire.tiles import estimate_memory, format_bytes, free_memory, plan_tiles

    config = ModelConfig.preset(case.model, scales=case.scale)
    torch.manual_seed(0)
    model = build_model(config).eval().to(case.device)
    x = (torch.rand(1, 3, case.height, case.width, generator=torch.Generator().manual_seed(1)) * 255).to(case.device)
    cuda = case.device.startswith("cuda")

    def run(inp):
        return upscale_tensor(
            model,
            inp,
            scale=case.scale,
            tile=case.tile,
            self_ensemble=case.self_ensemble,
            max_batch=case.max_batch,
            config=config,
        )

    run(x[..., :48, :48])  # warm-up: kernel selection, allocator, lazy init
    free = free_memory(case.device)
    plan = plan_tiles(config, case.scale, case.height, case.width, budget=free, max_batch=case.max_batch,
                      self_ensemble=case.self_ensemble)
    tile, batch = (plan.tile, plan.max_batch) if case.tile == "auto" else (case.tile, case.max_batch)
    modelled = estimate_memory(config, case.scale, case.height, case.width, tile=tile, max_batch=batch,
                               self_ensemble=case.self_ensemble, safety=1)
    auto = "whole image" if plan.tile is None else f"tiles of {plan.tile}, {plan.max_batch} per pass"
    auto += f" (needs ~{format_bytes(plan.needed)} with the safety factor; {format_bytes(free)} free)"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _maxrss()
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    y = run(x)
    if cuda:
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - start, _cpu_seconds() - cpu_start
    peak = torch.cuda.max_memory_allocated() if cuda else _maxrss()
    if case.output:
        torch.save(y.cpu(), case.output)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_mb": (peak - before) / 2**20,
        "model_mb": modelled / 2**20,
        "auto": auto,
        "threads": torch.get_num_threads(),
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure(case: Case, threads: int | None) -> dict:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(asdict(case))],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        sys.exit(f"configuration {case} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per run (default: torch's)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(Case(**json.loads(args.child)))))
        return

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    where = torch.cuda.get_device_name(device) if cuda else f"CPU ({os.cpu_count()} cores)"
    memory = "CUDA max_memory_allocated" if cuda else "peak RSS (ru_maxrss)"
    print(f"ntire inference benchmark on {where}; float32, random weights, one timed pass each")
    print(f"memory: {memory} above the level with model and input loaded; "
          "model: ntire.tiles.estimate_memory without its safety factor")
    if not cuda:
        print("CPU run: inputs are smaller than DIV2K's 2040x1356 (sizes below) to keep it to minutes")
        print("time ratios use CPU seconds (user + system), which a busy shared machine disturbs less than wall time")
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    started = time.perf_counter()
    from ntire.config import ModelConfig
    from ntire.models.build import receptive_field_radius
    from ntire.tiles import tile_layout

    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, base, other) in enumerate(plan(device)):
            base = Case(**{**asdict(base), "output": f"{tmp}/{i}a.pt"})
            other = Case(**{**asdict(other), "output": f"{tmp}/{i}b.pt"})
            a, b = measure(base, args.threads), measure(other, args.threads)
            ya, yb = torch.load(base.output), torch.load(other.output)
            print(f"\n{label} ({a['threads']} threads)")
            if isinstance(other.tile, int):
                overlap = receptive_field_radius(ModelConfig.preset(other.model, scales=other.scale))
                n, wh, ww = tile_layout(other.height, other.width, other.tile, overlap)
                work = n * wh * ww / (other.height * other.width)
                print(
                    f"  overlap {overlap} (receptive-field radius): {n} windows of {ww}x{wh}, "
                    f"{work:.2f}x the image's pixels, max_batch {other.max_batch}"
                )
            for case, r in ((base, a), (other, b)):
                line = f"  {_name(case):<20} {r['seconds']:8.2f} s wall"
                line += "" if cuda else f" {r['cpu_seconds']:8.2f} s CPU"
                line += f" {r['peak_mb']:9.1f} MB (model {r['model_mb']:.1f} MB)"
                if case is other:
                    key = "seconds" if cuda else "cpu_seconds"
                    line += f"   time x{r[key] / a[key]:.2f}, memory x{_ratio(r['peak_mb'], a['peak_mb'])}"
                print(line)
            print(f"  --tile auto here: {b['auto']}")
            if not other.self_ensemble:
                diff = (ya - yb).abs().max().item()
                changed = (_to_uint8(ya) != _to_uint8(yb)).sum().item()
                print(f"  max |tiled - whole| = {diff:.2e} (0-255 scale); 8-bit values that differ: {changed}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average after: {os.getloadavg()[0]:.1f}")


def _name(case: Case) -> str:
    if case.self_ensemble:
        return "self-ensemble (x8)"
    return "whole image" if case.tile is None else "auto" if case.tile == "auto" else f"tiled {case.tile}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0.5 else "n/a"


def _to_uint8(t):
    import torch

    return t.round().clamp(0, 255).to(torch.uint8)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
