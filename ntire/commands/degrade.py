"""`ntire degrade`: make LR images from HR images for the bicubic or unknown track.

SRC is an image file or a folder of images. For a folder, DST is a folder (created if needed) and
each image becomes `DST/<stem>x<S>.png`, as DIV2K names its LR files (`0801.png` ->
`0801x4.png`). For a file, DST is either a `.png` path or an existing folder (then the same
`<stem>x<S>.png` name is used). HR images are first cropped to a multiple of the scale.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ntire.data.challenge import TRACKS
from ntire.options import add_force_argument, positive_int

HELP = "make LR images from HR: MATLAB bicubic (track 1) or the unknown-track stand-in (track 2)"



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--track",
        required=True,
        choices=TRACKS,
        help="bicubic: MATLAB imresize, as DIV2K's LR_bicubic; unknown: a documented blur + "
        "decimation stand-in (the real operator is unpublished; use DIV2K's LR_unknown to train)",
    )
    parser.add_argument(
        "--scale", required=True, type=positive_int, metavar="S", help="downscaling factor, e.g. 2, 3 or 4"
    )
    add_force_argument(parser)
    parser.add_argument("src", type=Path, metavar="SRC", help="HR image file or folder of images")
    parser.add_argument("dst", type=Path, metavar="DST", help="output .png file or folder")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ntire.data.degrade import UNKNOWN_BLUR, degrade
    from ntire.errors import ConfigError, NtireError
    from ntire.images import plan_outputs, read_image, write_png
    from ntire.options import refuse_existing

    if args.track == "unknown" and args.scale not in UNKNOWN_BLUR:
        known = ", ".join(str(s) for s in sorted(UNKNOWN_BLUR))
        raise ConfigError(f"--scale {args.scale}: the unknown-track stand-in is defined for scales {known}")
    jobs = plan_outputs(args.src, args.dst, lambda f: f"{f.stem}x{args.scale}.png")
    refuse_existing([dst for _, dst in jobs], args.force)
    import sys

    # A folder shows progress on a terminal and in a log alike (there, a line every 30 s and at the end).
    desc = f"degrade {args.track} x{args.scale}"
    progress = tqdm(jobs, unit="image", desc=desc, disable=len(jobs) < 2,
                    mininterval=1.0 if sys.stderr.isatty() else 30.0)
    for src, dst in progress:
        hr = read_image(src)
        try:
            lr = degrade(hr, args.scale, args.track)
        except NtireError as e:
            raise type(e)(f"{src}: {e}") from None
        write_png(dst, lr)
    where = jobs[0][1] if len(jobs) == 1 else args.dst
    print(f"degraded {len(jobs)} image(s) ({args.track}, x{args.scale}) -> {where}")
    return 0
