"""`ntire convert SRC.pt DST_DIR`: a released EDSR/MDSR state_dict (or a BasicSR/mmagic EDSR file)
into an ntire checkpoint folder."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = (
    "convert a released EDSR/MDSR .pt file (or a BasicSR/mmagic EDSR .pth) into an ntire checkpoint "
    "folder (safetensors + config)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src",
        type=Path,
        metavar="SRC.pt",
        help="released state_dict (edsr_x4-4f62e9ef.pt), or a BasicSR/mmagic EDSR file "
        "(EDSR_Mx2_f64b16_DIV2K_official-3ba7b086.pth)",
    )
    parser.add_argument("dst", type=Path, metavar="DST_DIR", help="folder for model.safetensors + config.yaml")
    parser.add_argument("--force", action="store_true", help="overwrite a checkpoint already in DST_DIR")


def run(args: argparse.Namespace) -> int:
    import torch

    from ntire.errors import CheckpointError
    from ntire.files import sha256_file
    from ntire.models.build import count_parameters, receptive_field_radius
    from ntire.models.checkpoint import WEIGHTS_NAME, load_model, save_model
    from ntire.models.official import load_released_file

    if (args.dst / WEIGHTS_NAME).exists() and not args.force:
        raise CheckpointError(f"{args.dst}: already holds a checkpoint; pass --force to overwrite it")
    model, config, source = load_released_file(args.src)
    scales = ", ".join(f"x{s}" for s in config.scales)
    print(f"{args.src.name}: {config.name} ({config.kind}) {scales}")
    if source.layout != "authors":
        print(f"  {source.describe(config)}")
    print(
        f"  blocks {config.n_blocks}, features {config.n_feats}, residual scale {config.res_scale:g}, "
        f"rgb range {config.rgb_range:g}, mean {tuple(round(m, 4) for m in config.rgb_mean)}"
    )
    radius = receptive_field_radius(config)
    print(f"  {count_parameters(model):,} parameters, receptive field radius {radius} LR px")

    metadata = {
        "source": str(args.src.resolve()),
        "source_sha256": sha256_file(args.src),
        "converted_by": "ntire convert",
        **source.as_metadata(),
    }
    save_model(args.dst, model, config, metadata)
    # Read it back: the folder must hold exactly the released tensors.
    reloaded, reloaded_config = load_model(args.dst)
    original = model.state_dict()
    same = all(torch.equal(v, original[k]) for k, v in reloaded.state_dict().items())
    if reloaded_config != config or not same:
        raise CheckpointError(f"{args.dst}: the written checkpoint does not read back identical")
    print(f"wrote {args.dst / WEIGHTS_NAME} and config.yaml")
    return 0
