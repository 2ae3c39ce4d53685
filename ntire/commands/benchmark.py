"""`ntire benchmark`: the paper's Table 3 (bicubic, model, model+) for any checkpoint.

    ntire benchmark                                   # sample data, sample manifest's models
    ntire benchmark --checkpoint edsr_baseline_x2-1bc95232.pt --root ~/data --sets Set5 DIV2K
    ntire benchmark --checkpoint mdsr-4a78bedf.pt --root ~/data --self-ensemble

Writes table3.md and table3.json to --out, with a comparison figure of each set's worst and best
image (by the model's PSNR gain over bicubic) beside them, and logs them to MLflow.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ntire.data.challenge import SCALES
from ntire.options import add_device_argument, add_tile_argument, positive_int

HELP = "score a checkpoint on Set5/Set14/B100/Urban100/DIV2K like the paper's Table 3"

DEFAULT_ROOT = "data/sample"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        nargs="+",
        type=Path,
        default=None,
        metavar="CKPT",
        help="checkpoint folder(s) or released .pt file(s); single-scale EDSRs together cover several "
        "scales (default: the bicubic-track models of --manifest; `make sample-models` trains the sample's)",
    )
    parser.add_argument(
        "--manifest",
        default=None,
        metavar="YAML",
        help="submission manifest whose bicubic-track checkpoints are scored when --checkpoint is not "
        "given (default submissions/sample.yaml)",
    )
    parser.add_argument(
        "--root",
        default=None,
        metavar="DIR",
        help=f"folder holding benchmark/<Set>/ and DIV2K/ (default {DEFAULT_ROOT}, built if missing)",
    )
    parser.add_argument(
        "--sets",
        nargs="+",
        default=None,
        metavar="SET",
        help="sets to score, e.g. Set5 Set14 B100 Urban100 DIV2K (default: every set under --root)",
    )
    parser.add_argument(
        "--scales", nargs="+", type=int, choices=SCALES, default=None,
        help="default: every scale the checkpoints serve"
    )
    parser.add_argument(
        "--self-ensemble", action="store_true",
        help="also score the model with geometric self-ensemble (the '+' column)"
    )
    add_tile_argument(parser)
    parser.add_argument("--max-batch", type=positive_int, default=4, metavar="N",
                        help="tiles per forward pass (default 4)")
    add_device_argument(parser)
    parser.add_argument("--out", default=None, metavar="DIR", help="report folder (default runs/benchmark/<model>)")
    parser.add_argument("--no-figures", dest="figures", action="store_false",
                        help="do not draw the worst/best comparison figures beside the table")
    parser.add_argument("--no-mlflow", dest="mlflow", action="store_false", help="do not log to MLflow")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store (default $MLFLOW_TRACKING_URI, else runs/mlflow.db)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    from ntire.benchmark import available_sets, format_markdown, run_benchmark, write_figures, write_report
    from ntire.errors import ConfigError
    from ntire.models.checkpoint import load_model
    from ntire.options import resolve_device

    device = resolve_device(args.device)

    root = _root(args.root)
    # scale -> checkpoint: from the given files (each serves its config's scales), else the manifest.
    loaded: dict[Path, tuple] = {}
    by_scale: dict[int, Path] = {}
    for path in args.checkpoint or []:
        loaded[path] = load_model(path, map_location=device, say=print)
        for s in loaded[path][1].scales:
            if s in by_scale:
                raise ConfigError(f"x{s} is served by both {by_scale[s]} and {path}; give one checkpoint per scale")
            by_scale[s] = path
    if not args.checkpoint:
        from ntire.submission.manifest import manifest_checkpoints

        by_scale = manifest_checkpoints(args.manifest, "bicubic")
    models: dict[int, tuple] = {}
    for s, path in by_scale.items():
        if path not in loaded:
            loaded[path] = load_model(path, map_location=device, say=print)
        models[s] = (*loaded[path], path)
    scales = sorted(args.scales or models)
    sets = args.sets or available_sets(root)
    if not sets:
        raise ConfigError(f"--root {root}: no benchmark sets (benchmark/<Set>/HR) and no DIV2K/DIV2K_valid_HR")

    report = run_benchmark(
        models,
        root,
        sets=sets,
        scales=scales,
        self_ensemble=args.self_ensemble,
        tile=args.tile,
        device=device,
        max_batch=args.max_batch,
        progress=args.progress,
    )
    out = Path(args.out or f"runs/benchmark/{report.model_name.replace(' / ', '+')}")
    if args.figures:
        write_figures(report, models, out, self_ensemble=args.self_ensemble, tile=args.tile, device=device,
                      max_batch=args.max_batch)
    md, js = write_report(report, out)
    print(format_markdown(report))
    print(f"wrote {md} and {js}" + (f", and {len(report.figures)} figure(s) beside them" if report.figures else ""))
    if args.mlflow:
        _log(report, out, args, device)
    else:
        print("MLflow logging off (--no-mlflow)")
    return 0


def _root(root: str | None) -> Path:
    from ntire.errors import ConfigError

    if root is not None:
        path = Path(root)
        if not path.is_dir():
            raise ConfigError(f"--root {path}: folder not found")
        return path
    from ntire.data.sample import build_sample_dataset, is_complete

    path = Path(DEFAULT_ROOT)
    if not is_complete(path):
        print(f"building the sample dataset in {path}")
        build_sample_dataset(path)
    return path


def _log(report, out: Path, args: argparse.Namespace, device: object) -> None:
    from ntire.benchmark import report_metrics
    from ntire.training.tracking import log_report

    params = {"root": report.root, "sets": ",".join(dict.fromkeys(r.set_name for r in report.rows))}
    params.update({f"x{s}_checkpoint": c for s, c in report.checkpoints.items()})
    params["self_ensemble"] = args.self_ensemble
    log_report(
        experiment="ntire-benchmarks",
        run_name=f"benchmark-{report.model_name.replace(' / ', '+')}",
        params=params,
        metrics=report_metrics(report),
        report_dir=out,
        uri=args.tracking_uri,
        data=report.root,
        tags={"ntire.device": str(device)},
        say=lambda message: print(f"ntire benchmark: {message}", file=sys.stderr),
    )
