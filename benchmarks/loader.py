"""Training-data throughput: the shard loader against a naive PNG-per-patch loader, and whether a
16-core GPU node could feed EDSR training.

    .venv/bin/python benchmarks/loader.py [--seconds 8] [--workers 2]

Data (built in a temporary folder, about 30 s): the bundled sample dataset, plus DIV2K-sized
images (2040x1356, tiled from the sample's training photos) with MATLAB-bicubic LR x2, since a
DIV2K photo costs far more to decode than a 0.3-megapixel sample photo.

Loaders, all producing x2 batches of 16 aligned, randomly flipped/rotated 48x48 LR patches as
uint8 tensors:
  naive     a map-style torch Dataset that reads the HR and LR PNG of a random image for every
            patch and crops it (what EDSR-PyTorch's `--ext img` mode does);
  shards    ntire.data.stream.train_batches over `ntire data shard` output (480 px sub-images,
            step 240, raw .npy members), 8 patches per decoded sample;
  shards/png  the same with PNG members, to justify .npy as the default encoding.

Tar readers, on the same .npy shards (in the page cache), to justify ntire.data.tar_reader beside
WebDataset: its ShardReader against `webdataset.tariterators.tar_file_expander` + `group_by_keys`,
reading every member, and skipping every member while counting samples (what resuming mid-shard
and `count_samples` do).

Each loader runs for --seconds after a warm-up; the per-core rate is the shard loader reading in
the calling process (num_workers=0). The GPU side is an estimate from the networks' convolution
FLOPs (printed with its assumptions): no GPU is needed to run this file.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

BATCH, PATCH, SCALE = 16, 48, 2
H100_BF16_DENSE = 989e12  # FLOP/s, H100 SXM datasheet (dense, no sparsity)


# ---------------------------------------------------------------------------------------------
# Data


def build_data(tmp: Path) -> tuple[Path, Path]:
    """The sample dataset and a DIV2K-sized variant; returns their roots."""
    from ntire.data.degrade import bicubic_downscale
    from ntire.data.layout import div2k_pairs
    from ntire.data.sample import build_sample_dataset
    from ntire.images import read_image, write_png

    sample = build_sample_dataset(tmp / "sample")
    photos = [read_image(p.hr) for p in div2k_pairs(sample, split="train", track="bicubic", scales=(2,))]
    big = tmp / "div2k_sized" / "DIV2K"
    for m in range(3):
        rows = []
        for r in range(3):
            tiles = []
            for c in range(4):
                photo = photos[(m * 12 + r * 4 + c) % len(photos)]
                pad = ((0, max(0, 452 - photo.shape[0])), (0, max(0, 510 - photo.shape[1])), (0, 0))
                tiles.append(np.pad(photo, pad, mode="symmetric")[:452, :510])
            rows.append(np.concatenate(tiles, axis=1))
        hr = np.ascontiguousarray(np.concatenate(rows, axis=0))  # 1356 x 2040, as DIV2K
        lr = bicubic_downscale(hr, 2)
        # level 1, as the sample dataset: a level-6 DIV2K PNG decodes at about the same speed
        write_png(big / "DIV2K_train_HR" / f"{m + 1:04d}.png", hr, compress_level=1)
        write_png(big / "DIV2K_train_LR_bicubic" / "X2" / f"{m + 1:04d}x2.png", lr, compress_level=1)
    return sample, big.parent


def shard(root: Path, out: Path, encoding: str) -> list[str]:
    from ntire.data.layout import div2k_pairs
    from ntire.data.shards import write_shards

    pairs = div2k_pairs(root, split="train", track="bicubic", scales=(SCALE,))
    m = write_shards(pairs, out, track="bicubic", scales=(SCALE,), subimage=480, step=240,
                     encoding=encoding, shard_max_bytes=8 * 2**20, progress=False)
    return m.urls(out)


# ---------------------------------------------------------------------------------------------
# The naive loader


class NaivePatches(torch.utils.data.Dataset):
    """One patch per item, decoding the image's HR and LR PNG files every time."""

    def __init__(self, pairs, length: int = 10**7):
        self.pairs = pairs
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        from ntire.images import read_image

        rng = random.Random(i)
        pair = self.pairs[rng.randrange(len(self.pairs))]
        hr, lr = read_image(pair.hr), read_image(pair.lr[SCALE])
        y = rng.randrange(lr.shape[0] - PATCH + 1)
        x = rng.randrange(lr.shape[1] - PATCH + 1)
        lr = lr[y : y + PATCH, x : x + PATCH]
        hr = hr[y * SCALE : (y + PATCH) * SCALE, x * SCALE : (x + PATCH) * SCALE]
        op = rng.randrange(8)
        if op & 4:
            lr, hr = lr.transpose(1, 0, 2), hr.transpose(1, 0, 2)
        if op & 1:
            lr, hr = lr[:, ::-1], hr[:, ::-1]
        if op & 2:
            lr, hr = lr[::-1], hr[::-1]
        to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))  # noqa: E731
        return to_t(lr), to_t(hr)


def naive_batches(root: Path, workers: int):
    from ntire.data.layout import div2k_pairs

    pairs = div2k_pairs(root, split="train", track="bicubic", scales=(SCALE,))
    loader = torch.utils.data.DataLoader(NaivePatches(pairs), batch_size=BATCH, shuffle=True,
                                         num_workers=workers)
    return iter(loader)


# ---------------------------------------------------------------------------------------------
# Timing


def _children_cpu() -> float:
    """CPU seconds used so far by this process's children (the DataLoader workers)."""
    me, total, tick = os.getpid(), 0.0, os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:  # ppid
            total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


def rate(batches, seconds: float, warmup: int = 1) -> tuple[float, float]:
    """(patches per wall-clock second, patches per CPU-second of this process and its workers),
    over `seconds` after `warmup` batches. The second does not depend on what else the machine
    runs, so it is the per-core rate."""
    for _ in range(warmup):
        next(batches)
    n, start, cpu = 0, time.perf_counter(), time.process_time() + _children_cpu()
    while time.perf_counter() - start < seconds:
        batch = next(batches)
        n += batch[0].shape[0]
    wall = time.perf_counter() - start
    return n / wall, n / (time.process_time() + _children_cpu() - cpu)


def shard_batches(urls, workers: int):
    from ntire.data.stream import train_batches

    return iter(train_batches(urls, scales=(SCALE,), batch_size=BATCH, patch_size=PATCH,
                              patches_per_sample=8, shuffle_buffer=256, num_workers=workers))


# ---------------------------------------------------------------------------------------------
# Tar readers: ntire's against WebDataset's


def ntire_samples(urls, read: bool) -> int:
    from ntire.data.tar_reader import ShardReader, count_samples

    if not read:
        return sum(count_samples(u) for u in urls)
    return sum(1 for u in urls for _ in ShardReader(u))


def wds_samples(urls, read: bool) -> int:
    from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_expander, url_opener

    sources = url_opener([{"url": u} for u in urls])
    if read:
        return sum(1 for _ in group_by_keys(tar_file_expander(sources)))
    seen = {"prefix": None, "n": 0}

    def select(name: str) -> bool:  # counts samples by key, as count_samples does; keeps nothing
        prefix, _ = base_plus_ext(name)
        if prefix is not None and prefix != seen["prefix"]:
            seen["prefix"] = prefix
            seen["n"] += 1
        return False

    for _ in tar_file_expander(sources, select_files=select):
        pass
    return seen["n"]


def tar_reader_rates(urls, read: bool, seconds: float) -> dict[str, tuple[float, float]]:
    """{"ntire"|"wds": (samples/s, samples/CPU-s)}; passes alternate between the readers so that
    both see the same machine load."""
    readers = {"ntire": ntire_samples, "wds": wds_samples}
    counts = {name: f(urls, read) for name, f in readers.items()}  # warm-up; also a check
    if len(set(counts.values())) != 1:
        raise SystemExit(f"the tar readers disagree on the sample count: {counts}")
    totals = {name: [0, 0.0, 0.0] for name in readers}  # samples, wall, CPU
    while min(t[1] for t in totals.values()) < seconds:
        for name, f in readers.items():
            wall, cpu = time.perf_counter(), time.process_time()
            totals[name][0] += f(urls, read)
            totals[name][1] += time.perf_counter() - wall
            totals[name][2] += time.process_time() - cpu
    return {name: (n / wall, n / max(cpu, 1e-9)) for name, (n, wall, cpu) in totals.items()}


# ---------------------------------------------------------------------------------------------
# The GPU side: an estimate from convolution FLOPs


def edsr_train_flops(n_blocks: int, n_feats: int, scale: int, batch: int, patch: int) -> float:
    """FLOPs of one training step (forward + backward ~ 3x forward) of EDSR's 3x3 convolutions."""
    lr_px = batch * patch * patch
    conv = lambda cin, cout, px: 2 * 9 * cin * cout * px  # noqa: E731
    f = conv(3, n_feats, lr_px)  # head
    f += (2 * n_blocks + 1) * conv(n_feats, n_feats, lr_px)  # body
    if scale in (2, 3):
        f += conv(n_feats, scale * scale * n_feats, lr_px)
    else:  # x4: two x2 stages
        f += conv(n_feats, 4 * n_feats, lr_px) + conv(n_feats, 4 * n_feats, 4 * lr_px)
    f += conv(n_feats, 3, lr_px * scale * scale)  # tail
    return 3 * f


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="timing window per loader")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cores = os.cpu_count() or 1
    print(f"loader benchmark: x{SCALE}, batch {BATCH}, LR patch {PATCH}, {args.workers} workers, "
          f"{cores} cores, load average {os.getloadavg()[0]:.1f} at start")

    with tempfile.TemporaryDirectory(prefix="ntire-bench-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        sample, big = build_data(tmp)
        npy_urls = shard(big, tmp / "shards_npy", "npy")
        png_urls = shard(big, tmp / "shards_png", "png")
        npy_bytes = sum(Path(u).stat().st_size for u in npy_urls)
        png_bytes = sum(Path(u).stat().st_size for u in png_urls)
        print(f"data ready in {time.perf_counter() - t0:.0f} s: shards .npy {npy_bytes / 2**20:.0f} MiB, "
              f".png {png_bytes / 2**20:.0f} MiB ({len(npy_urls)} and {len(png_urls)} shards)")

        rows = [
            ("naive", "sample photos (0.3 MP)", lambda: naive_batches(sample, args.workers)),
            ("naive", "DIV2K-sized (2.8 MP)", lambda: naive_batches(big, args.workers)),
            ("shards .png", "DIV2K-sized", lambda: shard_batches(png_urls, args.workers)),
            ("shards .npy", "DIV2K-sized", lambda: shard_batches(npy_urls, args.workers)),
            ("shards .npy in-process", "DIV2K-sized", lambda: shard_batches(npy_urls, 0)),
        ]
        print(f"  {'loader':<24}{'images':<24}{'patches/s':>10}{'patches/CPU-s':>15}")
        rates = {}
        for loader, images, make in rows:
            batches = make()  # one loader at a time: no idle workers competing for the cores
            rates[loader, images] = rate(batches, args.seconds)
            if hasattr(batches, "close"):
                batches.close()
            del batches
            gc.collect()  # shuts the workers down before the next loader starts
            wall, cpu = rates[loader, images]
            print(f"  {loader:<24}{images:<24}{wall:10.0f}{cpu:15.0f}")

        n_samples = ntire_samples(npy_urls, read=False)
        print(f"tar readers on the .npy shards ({n_samples} samples): ntire.data.tar_reader vs "
              "webdataset.tariterators.tar_file_expander")
        for read, what in ((True, "every member"), (False, "no member (count)")):
            r = tar_reader_rates(npy_urls, read, args.seconds)
            (nw, nc), (ww, wc) = r["ntire"], r["wds"]
            print(f"  {what:<18} ntire {nw:8.0f} samples/s, wds {ww:8.0f} samples/s: ratio "
                  f"ntire/wds {nw / ww:5.1f}x (per CPU-second {nc / wc:5.1f}x)")

    naive_small = rates["naive", "sample photos (0.3 MP)"]
    naive_big = rates["naive", "DIV2K-sized (2.8 MP)"]
    shards = rates["shards .npy", "DIV2K-sized"]
    png = rates["shards .png", "DIV2K-sized"]
    in_process = rates["shards .npy in-process", "DIV2K-sized"]
    print(f"ratio shard/naive ({args.workers} workers each): {shards[0] / naive_big[0]:.0f}x on "
          f"DIV2K-sized images; {shards[0] / naive_small[0]:.0f}x even against naive on the small "
          f"sample photos (target >= 5x)")
    print(f"ratio .npy/.png shards: {shards[0] / png[0]:.1f}x (per CPU-second {shards[1] / png[1]:.1f}x)")
    per_core = shards[1]
    print(f"per-core rate: {per_core:.0f} patches per CPU-second with {args.workers} workers "
          f"(workers + consumer; {in_process[1]:.0f} in-process, where no batch crosses processes)")
    print("\nGPU demand (estimate, not measured: no GPU here)")
    print("  FLOPs per training step = 3 x forward FLOPs of all 3x3 convolutions at batch "
          f"{BATCH}, {PATCH}x{PATCH} LR, x{SCALE}; H100 SXM bf16 dense peak {H100_BF16_DENSE / 1e12:.0f} TFLOP/s")
    for name, blocks, feats, util in (("EDSR baseline (16x64)", 16, 64, 0.15), ("EDSR (32x256)", 32, 256, 0.40)):
        flops = edsr_train_flops(blocks, feats, SCALE, BATCH, PATCH)
        steps = H100_BF16_DENSE * util / flops
        demand = steps * BATCH
        cores_needed = demand / per_core
        print(f"  {name:<22} {flops / 1e12:5.2f} TFLOP/step; at {util:.0%} of peak "
              f"{1e3 / steps:5.2f} ms/step = {steps:4.0f} steps/s = {demand:5.0f} patches/s: "
              f"{cores_needed:4.1f} cores at {per_core:.0f}/core; 16 cores give "
              f"{16 * per_core:.0f} ({16 * per_core / demand:.1f}x the demand)")
    print("  (utilisation assumed: 64-channel convs are memory- and launch-bound on an H100, so "
          "~15%; 256-channel convs reach ~40% with cuDNN in bf16)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
