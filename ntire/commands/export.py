"""`ntire export --format onnx CKPT OUT.onnx`: a checkpoint as ONNX files, one per scale.

Each file takes float32 NCHW RGB in [0, 255] with dynamic batch, height and width and returns the
(N, 3, s*H, s*W) result on the same scale, unrounded (`--uint8` makes the graph round and clip to
8 bits itself). An EDSR gives OUT.onnx; an MDSR gives OUT_x2.onnx, OUT_x3.onnx, ... (or only the
`--scale`s asked for; one scale is written to OUT.onnx as named). An OUT not ending in `.onnx` is
a folder, which receives `<model>_x<s>.onnx`. Every file is then run under onnxruntime and
compared with the torch model (`--no-verify` skips that). See ntire/models/onnx_export.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ntire.options import positive_int

HELP = "export a checkpoint as ONNX, one file per scale, for onnxruntime and other runtimes"
FORMATS = ("onnx",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="file format (default onnx)")
    parser.add_argument(
        "--scale",
        type=positive_int,
        action="append",
        default=None,
        metavar="S",
        help="scale to export; repeat for several (default every scale the model serves, one file each)",
    )
    parser.add_argument(
        "--opset", type=positive_int, default=None, metavar="N",
        help="ONNX opset (default 18: onnxruntime 1.14 and later; lower ones are converted by torch)",
    )
    parser.add_argument(
        "--uint8",
        action="store_true",
        help="round and clip the output to uint8 0-255 inside the graph (default: float, unrounded)",
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="skip running each file under onnxruntime and comparing it with the torch model",
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")
    parser.add_argument(
        "checkpoint",
        type=Path,
        metavar="CKPT",
        help="checkpoint folder or .safetensors (with its config), a released EDSR/MDSR .pt, or a BasicSR/mmagic "
        "EDSR .pth",
    )
    parser.add_argument(
        "out", type=Path, metavar="OUT", help="OUT.onnx (MDSR: OUT_x<s>.onnx per scale), or a folder"
    )


def run(args: argparse.Namespace) -> int:
    from ntire.errors import ConfigError
    from ntire.files import remove_stale_temp_files
    from ntire.models.checkpoint import load_model
    from ntire.models.onnx_export import (
        DEFAULT_OPSET,
        check_scale,
        export_onnx,
        onnx_paths,
        require_onnx,
        verify_onnx,
    )

    require_onnx(runtime=not args.no_verify)  # before loading weights, so a missing extra fails at once
    model, config = load_model(args.checkpoint, map_location="cpu", say=print)
    scales = list(dict.fromkeys(args.scale)) if args.scale else list(config.scales)
    for scale in scales:
        check_scale(config, scale, where=f"checkpoint {args.checkpoint}")
    paths = onnx_paths(args.out, config, scales)
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not args.force:
        raise ConfigError(f"{', '.join(existing)}: already exist(s); pass --force to overwrite")
    for folder in {p.parent for p in paths.values()}:  # debris of a killed earlier export
        remove_stale_temp_files(folder, [p.name for p in paths.values() if p.parent == folder])

    opset = args.opset or DEFAULT_OPSET
    for scale, path in paths.items():
        export_onnx(model, config, path, scale=scale, opset=opset, uint8=args.uint8,
                    metadata={"source": args.checkpoint.name})
        size = path.stat().st_size / 1e6
        line = f"wrote {path}: {config.name} x{scale}, opset {opset}, {size:.1f} MB"
        if not args.no_verify:
            diff = verify_onnx(path, model, config, scale=scale)
            line += f"; onnxruntime matches torch within {diff:.2g} (0-255 scale)"
        print(line, flush=True)
    return 0
