"""`ntire tune`: a Ray Tune sweep whose trials run the training loop of `ntire train`.

    ntire tune --config demo --space tiny --num-samples 4        # sample data, this machine
    ntire tune --config edsr_baseline_x2 --space paper --num-samples 16 \\
        --address auto --gpus-per-trial 1 --storage s3://bucket/sweeps/x2
    ntire tune --resume --output-dir runs/tune                   # continue an interrupted sweep
"""

from __future__ import annotations

import argparse

from ntire.options import add_config_arguments, add_config_file_arguments, options_from_args
from ntire.tune.options import SweepOptions, SweepSetup

HELP = "sweep training hyper-parameters with Ray Tune (ASHA early stopping, MLflow child runs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The training config's --config/--set (as `ntire train` takes them), then one flag per field
    of SweepSetup and SweepOptions (ntire/tune/options.py), their docstrings as help."""
    add_config_file_arguments(parser)
    add_config_arguments(parser, SweepSetup, title="sweep options")
    add_config_arguments(parser, SweepOptions, title="how trials run")
    parser.add_argument("--quiet", action="store_true", help="no Ray Tune status table (--verbose 0)")


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import os
    import sys
    import time
    from pathlib import Path

    from ntire.errors import ConfigError

    try:
        from ntire.tune.space import load_space
        from ntire.tune.sweep import resume_sweep, run_sweep
        from ntire.tune.trial import METRIC
    except ImportError as e:
        raise ConfigError(f"ntire tune needs Ray Tune ({e}); install it with: pip install 'ntire[tune]'") from None

    setup = options_from_args(SweepSetup, args)
    options = options_from_args(SweepOptions, args)
    if args.quiet:
        options = dataclasses.replace(options, verbose=0)
    started = time.perf_counter()
    if setup.resume:
        result = resume_sweep(setup.output_dir, address=setup.address)
    else:
        from ntire.commands.demo import SAMPLE_DIR
        from ntire.data.sample import build_sample_dataset, is_complete

        if setup.space is None:
            raise ConfigError("--space is required (a search space file or a shipped name: tiny, paper)")
        from ntire.config import build_config
        from ntire.config_io import parse_set

        # Only --config and --set: the training flags' names (--seed, --output-dir, --resume)
        # are the sweep's own here.
        config = build_config(args.config, parse_set(args.set))
        space = load_space(setup.space, config)
        if Path(config.data.source) == Path(SAMPLE_DIR) and not is_complete(config.data.source):
            print(f"building the sample dataset in {config.data.source} ...", flush=True)
            build_sample_dataset(config.data.source)
        uri = config.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite"
        if setup.address and config.tracking.enabled and uri.startswith("sqlite"):
            print("ntire tune: note: a SQLite tracking store is only seen by trials on this machine; "
                  "use an MLflow server (tracking/README.md) on a multi-node cluster", file=sys.stderr)
        result = run_sweep(config, space, options, output_dir=setup.output_dir, address=setup.address)

    minutes = (time.perf_counter() - started) / 60
    print(f"\nsweep: {result.trials} trial(s) ended ({result.errors} failed) in {minutes:.1f} min")
    if result.best_path is not None:
        m = result.best_metrics
        print(f"best trial {result.best_trial_id}: {METRIC} {m.get(METRIC, float('nan')):.3f} dB "
              f"at step {m.get('step')}")
        print(f"best config: {result.best_path}  (train it: ntire train --config {result.best_path})")
    if result.tracking_uri:
        print(f"runs: mlflow ui --backend-store-uri {result.tracking_uri}  (parent run {result.parent_run_id})")
    if not result.complete:
        print(f"the sweep was interrupted; continue it: ntire tune --resume --output-dir {setup.output_dir}")
        return 130
    return 0 if result.best_path is not None else 1
