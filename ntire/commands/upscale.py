"""`ntire upscale`: super-resolve an image or a folder of images with a checkpoint.

Outputs are 8-bit RGB PNGs named after their input's stem (`0901x4.png` -> `DST/0901x4.png`),
which is how NTIRE submissions name SR files. SRC may be a file (DST is then a `.png` path or an
existing folder) or a folder (DST is a folder, created if needed).

`--tile` bounds memory without changing a single output value (tiles overlap by the network's
receptive-field radius); `--self-ensemble` runs inside each tile, so it stays bounded too. By
default (`--tile auto`) each image runs whole if it fits the memory free on the device, else in the
largest tiles that fit (`ntire.tiles.plan_tiles`); `NTIRE_MEMORY_BUDGET=2GiB` replaces the
measured free memory. `--precision` (default tf32 on CUDA, fp32 elsewhere) and channels_last on
CUDA are those of `ntire submit`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ntire.options import (
    add_device_argument,
    add_force_argument,
    add_precision_argument,
    add_tile_argument,
    positive_int,
)

HELP = "super-resolve an image or a folder of images with a trained or released checkpoint"

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        help="checkpoint folder or .safetensors (with its config), a released EDSR/MDSR .pt, or a BasicSR/mmagic "
        "EDSR .pth",
    )
    parser.add_argument("--scale", required=True, type=positive_int, help="upscaling factor; the model must support it")
    parser.add_argument(
        "--self-ensemble",
        action="store_true",
        help="average the 8 flips/rotations (the paper's '+' models; 8x the compute)",
    )
    add_tile_argument(parser)
    parser.add_argument(
        "--max-batch",
        type=positive_int,
        default=4,
        metavar="N",
        help="most images (tiles or ensemble variants) per forward pass (default 4)",
    )
    add_device_argument(parser)
    add_force_argument(parser)
    add_precision_argument(parser)
    parser.add_argument("src", type=Path, metavar="SRC", help="LR image file or folder of images")
    parser.add_argument("dst", type=Path, metavar="DST", help="output .png file or folder")


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from ntire.errors import ConfigError
    from ntire.files import remove_stale_temp_files
    from ntire.images import plan_outputs, read_image, write_png
    from ntire.inference import BF16_COST, resolve_precision, upscale_image, use_channels_last
    from ntire.models.checkpoint import load_model
    from ntire.options import refuse_existing, resolve_device
    from ntire.tiles import MemoryBudgetError

    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    if precision == "bf16":
        print(f"ntire upscale: --precision bf16: {BF16_COST}", file=sys.stderr)
    jobs = plan_outputs(args.src, args.dst, lambda f: f"{f.stem}.png")
    refuse_existing([dst for _, dst in jobs], args.force)
    for folder in {dst.parent for _, dst in jobs}:  # debris of a killed earlier run
        remove_stale_temp_files(folder, [dst.name for _, dst in jobs if dst.parent == folder])

    model, config = load_model(args.checkpoint, map_location="cpu", say=print)
    if args.scale not in config.scales:
        supported = "/".join(f"x{s}" for s in config.scales)
        raise ConfigError(
            f"--scale {args.scale}: checkpoint {args.checkpoint} ({config.name}) upscales {supported} only"
        )
    model.eval().to(device)

    # A folder shows progress on a terminal and in a log alike (there, a line every 30 s and at the end).
    progress = tqdm(jobs, unit="image", desc="upscale", disable=len(jobs) < 2,
                    mininterval=1.0 if sys.stderr.isatty() else 30.0)
    for src, dst in progress:
        image = read_image(src)
        try:
            sr = upscale_image(
                model,
                config,
                image,
                scale=args.scale,
                tile=args.tile,
                self_ensemble=args.self_ensemble,
                device=device,
                max_batch=args.max_batch,
                precision=precision,
                channels_last=use_channels_last(device),
            )
        except MemoryBudgetError as e:
            raise MemoryBudgetError(f"{src}: {e}") from None
        except torch.OutOfMemoryError:
            raise ConfigError(
                f"{src}: out of memory on {device} (--tile {args.tile}); use a smaller --tile (e.g. --tile 128), "
                "a smaller --max-batch, or set NTIRE_MEMORY_BUDGET below what is free"
            ) from None
        write_png(dst, sr)
    where = jobs[0][1] if len(jobs) == 1 else args.dst
    print(f"upscaled {len(jobs)} image(s) x{args.scale} with {config.name} -> {where}")
    return 0
