"""`ntire data`: build the sample dataset, write WebDataset shards, check a dataset or shards."""

from __future__ import annotations

import argparse
import re

from ntire.data.challenge import SCALES, TRACKS
from ntire.options import byte_size
from ntire.values import BYTES_HELP

HELP = "prepare data: the bundled sample dataset, WebDataset shards, checks"

def _indices(text: str) -> range:
    m = re.fullmatch(r"(\d+)-(\d+)", text.strip())
    if not m or int(m.group(1)) > int(m.group(2)):
        raise argparse.ArgumentTypeError(f"not an index range: {text!r} (e.g. 1-800)")
    return range(int(m.group(1)), int(m.group(2)) + 1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("sample", help="build the small sample dataset (DIV2K + benchmark layout)",
                       description="Build a small dataset in the DIV2K and benchmark layouts from "
                       "photos bundled with scikit-image (offline, deterministic).")
    p.add_argument("--out", required=True, help="folder to build it in (e.g. data/sample)")
    p.add_argument("--force", action="store_true", help="rebuild even if already complete")

    p = sub.add_parser("shard", help="write a split as WebDataset tar shards",
                       description="Write HR + LR images of a DIV2K split as WebDataset shards "
                       "with a manifest; resumes an interrupted run.")
    p.add_argument("--root", required=True, help="DIV2K folder (or its parent)")
    p.add_argument("--out", required=True, help="shard folder")
    p.add_argument("--split", default="train", choices=("train", "valid"),
                   help="DIV2K split: train (0001-0800) or valid (0801-0900); default train")
    p.add_argument("--track", default="bicubic", choices=TRACKS,
                   help="which LR images go with the HR ones: DIV2K_<split>_LR_<track>; "
                   "default bicubic")
    p.add_argument("--scales", type=int, nargs="+", default=list(SCALES), choices=SCALES, metavar="S",
                   help="LR scales stored in every sample: 2 3 4 (default) for MDSR or x2/x3/x4 "
                   "runs alike, or only the one a model trains")
    p.add_argument("--indices", type=_indices, default=None,
                   help="image numbers, e.g. 1-800 (default: the split's range)")
    p.add_argument("--subimage", type=int, default=480,
                   help="HR sub-image size, a multiple of lcm(scales); 0 stores whole images")
    p.add_argument("--step", type=int, default=240, help="distance between sub-images")
    p.add_argument("--encoding", default="npy", choices=("npy", "png"),
                   help="npy: raw uint8, fast to decode (default); png: smaller")
    p.add_argument("--shard-size", type=byte_size, default="256MiB", metavar="SIZE",
                   help=f"target shard size: {BYTES_HELP} (default 256MiB; a few MiB for the sample dataset, "
                   "so every rank and worker gets shards of its own)")
    p.add_argument("--mix", type=int, default=16,
                   help="images whose sub-images are shuffled together")
    p.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("check", help="check a dataset folder or a shard folder",
                       description="Check a DIV2K/benchmark folder (every LR size against its HR) "
                       "or a shard folder (every shard against the manifest's sha256).")
    p.add_argument("--root", help="dataset folder to check")
    p.add_argument("--shards", help="shard folder to verify")
    p.add_argument("--track", default="bicubic", choices=TRACKS,
                   help="with --root: the LR folders to check (DIV2K_*_LR_<track>); default bicubic")
    p.add_argument("--scales", type=int, nargs="+", default=list(SCALES), choices=SCALES, metavar="S",
                   help="with --root: the scales to check, e.g. 2 3 4 (default)")
    p.add_argument("--decode", action="store_true", help="also decode every image (slow)")


def run(args: argparse.Namespace) -> int:
    return {"sample": _sample, "shard": _shard, "check": _check}[args.data_command](args)


def _sample(args: argparse.Namespace) -> int:
    from ntire.data.sample import build_sample_dataset, is_complete

    existed = is_complete(args.out)
    out = build_sample_dataset(args.out, force=args.force)
    print(f"{'kept' if existed and not args.force else 'built'} sample dataset in {out}")
    return 0


def _shard(args: argparse.Namespace) -> int:
    from ntire.data.layout import div2k_pairs
    from ntire.data.shards import write_shards

    pairs = div2k_pairs(args.root, split=args.split, track=args.track, scales=tuple(args.scales),
                        indices=args.indices)
    manifest = write_shards(
        pairs, args.out, track=args.track, scales=tuple(args.scales),
        shard_max_bytes=args.shard_size, subimage=args.subimage or None,
        step=(args.step if args.subimage else None), encoding=args.encoding, mix=args.mix,
        resume=not args.overwrite, progress=not args.quiet,
    )
    total = sum(s.bytes for s in manifest.shards)
    print(f"{len(manifest.shards)} shards, {manifest.total_samples} samples, "
          f"{total / 2**20:.1f} MiB in {args.out}")
    print(f"urls: {manifest.url_pattern(str(args.out))}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from ntire.data.layout import benchmark_dir, benchmark_pairs, div2k_dir, div2k_pairs
    from ntire.data.shards import verify_shards
    from ntire.errors import DataError

    if not args.root and not args.shards:
        raise DataError("give --root (a dataset folder) and/or --shards (a shard folder)")
    scales = tuple(args.scales)
    if args.shards:
        m = verify_shards(args.shards)
        print(f"{args.shards}: {len(m.shards)} shards, {m.total_samples} samples, sha256 ok")
    if args.root:
        from pathlib import Path

        if not Path(args.root).is_dir():
            raise DataError(f"{args.root}: folder not found")
        found = 0
        base = div2k_dir(args.root)
        for split in ("train", "valid", "test"):
            if not (base / f"DIV2K_{split}_LR_{args.track}").is_dir():
                continue
            pairs = div2k_pairs(args.root, split=split, track=args.track, scales=scales)
            _decode_all(pairs, args.decode)
            found += 1
            print(f"DIV2K {split} ({args.track}): {len(pairs)} images ok")
        bench = benchmark_dir(args.root)
        for set_dir in sorted(p for p in bench.iterdir() if (p / "HR").is_dir()):
            pairs = benchmark_pairs(args.root, set_dir.name, scales)
            _decode_all(pairs, args.decode)
            found += 1
            print(f"benchmark {set_dir.name}: {len(pairs)} images ok")
        if not found:
            raise DataError(
                f"{args.root}: no DIV2K_*_LR_{args.track} folder or benchmark set found"
            )
    return 0


def _decode_all(pairs, decode: bool) -> None:
    if not decode:
        return
    from ntire.errors import DataError, ImageError
    from ntire.images import read_image

    for pair in pairs:
        for path in ([pair.hr] if pair.hr else []) + list(pair.lr.values()):
            try:
                read_image(path)
            except ImageError as e:
                raise DataError(str(e)) from None
