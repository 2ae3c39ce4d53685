"""`ntire demo` (`make demo`): train the EDSR baseline x2 on the bundled sample photos, end to end.

Builds the sample dataset if it is missing, trains with the shipped `demo` config (sized for about
8.5 minutes on 2 idle CPU cores), validates on held-out photos against bicubic upscaling, and exports
the model to runs/demo/model. Takes every `ntire train` option to change that.
"""

from __future__ import annotations

import argparse

from ntire.commands import train

HELP = "train the EDSR baseline x2 on the bundled sample photos and compare it with bicubic"

SAMPLE_DIR = "data/sample"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    train.add_arguments(parser)
    parser.set_defaults(config="demo")


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from ntire.config import config_to_yaml
    from ntire.data.sample import build_sample_dataset, is_complete
    from ntire.options import config_from_args
    from ntire.training.fit import fit
    from ntire.training.tracking import default_tracking_uri

    config = config_from_args(args)
    if args.print_config:
        print(config_to_yaml(config), end="")
        return 0
    started = time.perf_counter()
    source = Path(config.data.source)
    if Path(config.data.source) == Path(SAMPLE_DIR) and not is_complete(source):
        print(f"building the sample dataset in {source} ...", flush=True)
        build_sample_dataset(source)

    result = fit(config)
    minutes = (time.perf_counter() - started) / 60
    print(f"\n{result.run_name}: {result.step} updates, {minutes:.1f} min")
    if result.validation is None:
        print("no validation data: nothing to compare with bicubic")
        return 0
    beaten = True
    for scale_result in result.validation.scales.values():
        s = scale_result
        print(f"x{s.scale} valid PSNR {s.psnr:.2f} dB (bicubic {s.bicubic_psnr:.2f} dB)")
        beaten &= scale_result.psnr > scale_result.bicubic_psnr
    print(f"model: {result.model_dir}  (use it: ntire upscale --checkpoint {result.model_dir} --scale 2 LR.png SR.png)")
    if result.tracking_run_id is not None:
        uri = config.tracking.uri or default_tracking_uri(config.output_dir)
        print(f"tracking: mlflow ui --backend-store-uri {uri}")
    if not beaten:
        print("the model did not beat bicubic upscaling: train longer (--max-steps) or check the data")
        return 1
    return 0
