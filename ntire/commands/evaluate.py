"""`ntire evaluate`: PSNR and SSIM of a folder of SR images against their HR images."""

from __future__ import annotations

import argparse
import json
import math
import sys

from ntire.options import add_force_argument, positive_int

HELP = "score SR images against HR images (PSNR/SSIM, benchmark or DIV2K protocol)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sr",
        required=True,
        metavar="DIR",
        help="folder of SR images, named like the HR file (0801.png), the LR file (0801x2.png) "
        "or EDSR-PyTorch's results (0801_x2_SR.png)",
    )
    parser.add_argument("--hr", required=True, metavar="DIR", help="folder of HR images")
    parser.add_argument("--scale", required=True, type=positive_int, metavar="S")
    parser.add_argument(
        "--protocol",
        required=True,
        choices=("benchmark", "div2k"),
        help="benchmark: Y channel, shave S pixels (Set5, Set14, B100, Urban100); "
        "div2k: RGB, shave S+6 pixels (DIV2K validation)",
    )
    parser.add_argument(
        "--json", metavar="FILE",
        help="also write per-image and mean scores to FILE as JSON (an infinite PSNR, of an image equal to its "
        "HR, as null: strict JSON has no infinity)"
    )
    add_force_argument(parser)
    parser.add_argument(
        "--ignore-unmatched",
        action="store_true",
        help="score the SR images that have an HR partner and count the others (default: an error)",
    )


def format_table(result: dict) -> str:
    """The per-image scores and their mean as an aligned text table."""
    names = list(result["per_image"])
    width = max([len("image"), len("mean")] + [len(n) for n in names])

    def row(name: str, s: dict) -> str:
        return f"{name:<{width}}  {_db(s['psnr']):>9}  {s['ssim']:>6.4f}"

    lines = [f"{'image':<{width}}  {'PSNR (dB)':>9}  {'SSIM':>6}"]
    lines += [row(n, result["per_image"][n]) for n in names]
    lines.append("-" * len(lines[0]))
    lines.append(row("mean", result["mean"]))
    return "\n".join(lines)


def _finite_or_null(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_null(v) for v in value]
    return value


def _db(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.2f}"


def run(args: argparse.Namespace) -> int:
    from ntire.files import atomic_write_text
    from ntire.metrics import evaluate_folders
    from ntire.options import refuse_existing

    if args.json:
        refuse_existing([args.json], args.force)

    result = evaluate_folders(
        args.sr, args.hr, scale=args.scale, protocol=args.protocol, progress=True,
        ignore_unmatched=args.ignore_unmatched,
    )
    print(format_table(result))
    unmatched = result["unmatched_sr"]
    if unmatched:
        shown = ", ".join(unmatched[:5]) + (", ..." if len(unmatched) > 5 else "")
        print(f"ntire evaluate: warning: {len(unmatched)} SR image(s) without an HR partner not scored: {shown}",
              file=sys.stderr)
    if args.json:
        # A perfect reconstruction scores PSNR inf: null in the file (strict JSON has no
        # Infinity), rather than silently replaced by a made-up cap.
        atomic_write_text(args.json, json.dumps(_finite_or_null(result), indent=2, allow_nan=False) + "\n")
    return 0
