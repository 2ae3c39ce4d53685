"""`ntire tune`: a Ray Tune sweep whose trials run the training loop of `ntire train`.

    ntire tune --space tiny --num-samples 4                      # sample data, this machine
    ntire tune --config edsr_baseline_x2 --space paper --num-samples 16 \\
        --address auto --gpus-per-trial 1 --storage s3://bucket/sweeps/x2
    ntire tune --resume --output-dir runs/tune                   # continue an interrupted sweep
"""

from __future__ import annotations

import argparse

HELP = "sweep training hyper-parameters with Ray Tune (ASHA early stopping, MLflow child runs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument("--config", metavar="FILE", default="demo",
                   help="training config: a path or a shipped name (default: demo, on the sample data)")
    p.add_argument("--space", metavar="FILE",
                   help="search space YAML: a path or a shipped name (tiny, paper); see ntire/configs/spaces/")
    p.add_argument("--num-samples", type=int, default=4, metavar="N", help="trials to draw (default 4)")
    p.add_argument("--scheduler", choices=("asha", "fifo"), default="asha",
                   help="asha: stop poor trials early at validation steps (default); fifo: run all to the end")
    p.add_argument("--address", metavar="auto|HOST:PORT",
                   help="Ray cluster to run on (default: start Ray on this machine)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted sweep in --output-dir (config and space as it was started)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, metavar="N",
                   help="CPUs per trial (per worker with --workers-per-trial > 1); default 1")
    p.add_argument("--gpus-per-trial", type=float, default=0.0, metavar="N",
                   help="GPUs per trial (per worker with --workers-per-trial > 1); default 0")
    p.add_argument("--workers-per-trial", type=int, default=1, metavar="N",
                   help="training processes per trial; more than 1 runs a Ray Train TorchTrainer per trial")
    p.add_argument("--max-concurrent", type=int, metavar="N",
                   help="trials running at once (default: as resources allow)")
    p.add_argument("--max-failures", type=int, default=2, metavar="N",
                   help="retries of a crashed trial from its last checkpoint (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random search (default 0)")
    p.add_argument("--output-dir", default="runs/tune", metavar="DIR",
                   help="sweep folder: sweep.yaml, trials/, best.yaml, mlflow.db (default runs/tune)")
    p.add_argument("--storage", metavar="DIR|URI",
                   help="where Ray keeps trials and checkpoints; on a multi-node cluster a place every "
                        "node reaches (s3://..., a shared folder); default --output-dir")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override a field of the training config, e.g. --set data.num_workers=0 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no Ray Tune status table")


def run(args: argparse.Namespace) -> int:
    import os
    import sys
    import time
    from pathlib import Path

    from ntire.errors import ConfigError

    try:
        from ntire.tune.space import load_space
        from ntire.tune.sweep import SweepOptions, resume_sweep, run_sweep
        from ntire.tune.trial import METRIC
    except ImportError as e:
        raise ConfigError(f"ntire tune needs Ray Tune ({e}); install it with: pip install 'ntire[tune]'") from None

    started = time.perf_counter()
    if args.resume:
        result = resume_sweep(args.output_dir, address=args.address)
    else:
        from ntire.commands.demo import SAMPLE_DIR
        from ntire.config import build_config, parse_set
        from ntire.data.sample import build_sample_dataset, is_complete

        if args.space is None:
            raise ConfigError("--space is required (a search space file or a shipped name: tiny, paper)")
        config = build_config(args.config, parse_set(args.set))
        space = load_space(args.space, config)
        if Path(config.data.source) == Path(SAMPLE_DIR) and not is_complete(config.data.source):
            print(f"building the sample dataset in {config.data.source} ...", flush=True)
            build_sample_dataset(config.data.source)
        uri = config.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite"
        if args.address and config.tracking.enabled and uri.startswith("sqlite"):
            print("ntire tune: note: a SQLite tracking store is only seen by trials on this machine; "
                  "use an MLflow server (tracking/README.md) on a multi-node cluster", file=sys.stderr)
        options = SweepOptions(
            num_samples=args.num_samples,
            scheduler=args.scheduler,
            cpus_per_trial=args.cpus_per_trial,
            gpus_per_trial=args.gpus_per_trial,
            workers_per_trial=args.workers_per_trial,
            max_concurrent=args.max_concurrent,
            max_failures=args.max_failures,
            seed=args.seed,
            storage=args.storage,
            verbose=0 if args.quiet else 1,
        )
        result = run_sweep(config, space, options, output_dir=args.output_dir, address=args.address)

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
        print(f"the sweep was interrupted; continue it: ntire tune --resume --output-dir {args.output_dir}")
        return 130
    return 0 if result.best_path is not None else 1
