"""`ntire compare`: a paper-style comparison figure of one image under bicubic and checkpoints.

    ntire compare --hr baby.png --checkpoint runs/edsr_x2/model --scale 2 --out baby_x2.png
    ntire compare --hr 0801.png --lr 0801x4.png --checkpoint edsr_x4-4f62e9ef.pt \
        --checkpoint runs/mdsr/model --scale 4 --self-ensemble --box 600,400,96,96 --out fig.png

The figure (ntire.figures): the HR image with the box drawn, then the box's crops of HR, bicubic
and each checkpoint (and its self-ensemble, `+`), each labelled with the box's PSNR/SSIM and the
whole image's under --protocol. Without --lr the LR image is the HR's MATLAB-bicubic downscaling.
Without --box the box is the --box-size square where the models differ most from bicubic.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ntire.options import add_device_argument, add_force_argument, add_tile_argument, positive_int

HELP = "draw a paper-style comparison figure: HR with a box, labelled crops of bicubic and each model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hr", required=True, type=Path, metavar="PNG", help="the HR (ground truth) image")
    parser.add_argument("--lr", type=Path, default=None, metavar="PNG",
                        help="its LR image (default: the HR's MATLAB-bicubic downscaling by --scale)")
    parser.add_argument("--checkpoint", required=True, action="append", type=Path, metavar="CKPT",
                        help="checkpoint folder or released .pt; repeat for several models")
    parser.add_argument("--scale", required=True, type=positive_int, metavar="S", help="upscaling factor")
    parser.add_argument("--self-ensemble", action="store_true",
                        help="also show each model with geometric self-ensemble (the paper's '+')")
    parser.add_argument("--box", default=None, metavar="X,Y,W,H",
                        help="the box in HR pixels (default: the --box-size square where the models "
                        "differ most from bicubic)")
    parser.add_argument("--box-size", type=positive_int, default=96, metavar="N",
                        help="side of the chosen box in HR pixels (default 96)")
    parser.add_argument("--protocol", choices=("benchmark", "div2k"), default="benchmark",
                        help="scores: benchmark (Y channel, S border pixels ignored; default) or div2k "
                        "(RGB, S+6 ignored)")
    add_tile_argument(parser)
    parser.add_argument("--max-batch", type=positive_int, default=4, metavar="N",
                        help="most images (tiles or ensemble variants) per forward pass (default 4)")
    add_device_argument(parser)
    add_force_argument(parser)
    parser.add_argument("--out", required=True, type=Path, metavar="PNG", help="the figure's .png path")


def run(args: argparse.Namespace) -> int:
    from ntire.data.degrade import bicubic_downscale, bicubic_upscale
    from ntire.errors import ConfigError, DataError
    from ntire.figures import Box, check_box, comparison_figure, model_label, score_box, score_text
    from ntire.images import read_image, write_png
    from ntire.metrics import score
    from ntire.models.checkpoint import load_model
    from ntire.options import refuse_existing, resolve_device

    device = resolve_device(args.device)
    box = Box.parse(args.box) if args.box is not None else None
    if args.out.suffix.lower() != ".png":
        raise ConfigError(f"--out {args.out}: the figure is written as PNG; give a .png path")
    refuse_existing([args.out], args.force)
    scale = args.scale

    hr = read_image(args.hr)
    lr = read_image(args.lr) if args.lr is not None else bicubic_downscale(hr, scale)
    (lh, lw), (hh, hw) = lr.shape[:2], hr.shape[:2]
    if not (0 <= hh - lh * scale < scale and 0 <= hw - lw * scale < scale):
        raise DataError(
            f"{args.lr}: LR image is {lw}x{lh} (WxH) but HR {args.hr} is {hw}x{hh}; at x{scale} the HR "
            f"image must be {lw * scale}x{lh * scale} (or larger by less than {scale} pixels)"
        )
    hr = hr[: lh * scale, : lw * scale]  # MATLAB's modcrop, as the LR was made from it
    if box is not None:
        check_box(box, hr.shape, scale=scale, protocol=args.protocol)

    models = []
    for path in args.checkpoint:
        model, config = load_model(path, map_location="cpu", say=print)
        if scale not in config.scales:
            supported = "/".join(f"x{s}" for s in config.scales)
            raise ConfigError(f"--checkpoint {path} ({config.name}) upscales {supported} only, not x{scale}")
        models.append((path, model, config))
    # Two checkpoints of one architecture are told apart by their path.
    plain = [model_label(config.name, scale=scale) for _, _, config in models]
    methods = []
    for name, (path, model, config) in zip(plain, models, strict=True):
        suffix = f" ({path.stem if path.is_file() else path.name})" if plain.count(name) > 1 else ""
        for ensemble in (False, True) if args.self_ensemble else (False,):
            label = model_label(config.name, scale=scale, plus=ensemble) + suffix
            methods.append((label, _upscale(model, config, lr, scale, ensemble, args, device, path)))
    bicubic = bicubic_upscale(lr, scale)
    figure, box = comparison_figure(
        hr, bicubic, methods, scale=scale, protocol=args.protocol, box=box, box_size=args.box_size,
        name=args.hr.stem,
    )
    write_png(args.out, figure)
    width = max(len(label) for label, _ in [("Bicubic", None), *methods])
    for label, image in [("Bicubic", bicubic), *methods]:
        print(f"{label:<{width}}  box {score_text(score_box(image, hr, box, scale=scale, protocol=args.protocol))}"
              f"  image {score_text(score(image, hr, scale=scale, protocol=args.protocol))}")
    print(f"wrote {args.out} (box {box} in HR pixels, {args.protocol} protocol)")
    return 0


def _upscale(model, config, lr, scale, ensemble, args, device, path):
    import torch

    from ntire.errors import ConfigError
    from ntire.inference import upscale_image

    try:
        return upscale_image(model, config, lr, scale=scale, tile=args.tile, self_ensemble=ensemble,
                             device=device, max_batch=args.max_batch)
    except torch.OutOfMemoryError:
        raise ConfigError(
            f"{path}: out of memory on {device} (--tile {args.tile}); use a smaller --tile (e.g. --tile 128) "
            "or --max-batch"
        ) from None
