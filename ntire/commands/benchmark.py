"""`ntire benchmark`: the paper's Table 3 (bicubic, model, model+) for any checkpoint.

    ntire benchmark                                   # sample data, sample manifest's models
    ntire benchmark --checkpoint edsr_baseline_x2-1bc95232.pt --root ~/data --sets Set5 DIV2K
    ntire benchmark --checkpoint mdsr-4a78bedf.pt --root ~/data --self-ensemble

Writes table3.md and table3.json to --out and logs them to MLflow.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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
        "scales (default: the bicubic-track models of --manifest, trained first if missing)",
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
        "--scales", nargs="+", type=int, choices=(2, 3, 4), default=None, help="default: every scale the checkpoints serve"
    )
    parser.add_argument(
        "--self-ensemble", action="store_true", help="also score the model with geometric self-ensemble (the '+' column)"
    )
    parser.add_argument("--tile", type=int, default=None, metavar="T", help="run in tiles of T LR pixels (same scores)")
    parser.add_argument("--max-batch", type=int, default=4, metavar="N", help="tiles per forward pass (default 4)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--out", default=None, metavar="DIR", help="report folder (default runs/benchmark/<model>)")
    parser.add_argument("--no-mlflow", dest="mlflow", action="store_false", help="do not log to MLflow")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default $MLFLOW_TRACKING_URI, else runs/mlflow.db)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    import torch

    from ntire.benchmark import available_sets, format_markdown, run_benchmark, write_report
    from ntire.models.checkpoint import load_model
    from ntire.errors import ConfigError

    if args.tile is not None and args.tile < 1:
        raise ConfigError(f"--tile must be positive, got {args.tile}")
    if args.max_batch < 1:
        raise ConfigError(f"--max-batch must be positive, got {args.max_batch}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")

    root = _root(args.root)
    # scale -> checkpoint: from the given files (each serves its config's scales), else the manifest.
    loaded: dict[Path, tuple] = {}
    by_scale: dict[int, Path] = {}
    for path in args.checkpoint or []:
        loaded[path] = load_model(path, map_location=device)
        for s in loaded[path][1].scales:
            if s in by_scale:
                raise ConfigError(f"x{s} is served by both {by_scale[s]} and {path}; give one checkpoint per scale")
            by_scale[s] = path
    if not args.checkpoint:
        by_scale = _manifest_checkpoints(args.manifest, root, args.progress)
    models: dict[int, tuple] = {}
    for s, path in by_scale.items():
        if path not in loaded:
            loaded[path] = load_model(path, map_location=device)
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
    md, js = write_report(report, out)
    print(format_markdown(report))
    print(f"wrote {md} and {js}")
    if args.mlflow:
        _log(report, out, args)
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


def _manifest_checkpoints(manifest: str | None, root: Path, progress: bool) -> dict[int, Path]:
    """Scale -> checkpoint of a manifest's bicubic track (fallbacks trained if needed)."""
    from ntire.submission import default_manifest, ensure_checkpoint, load_manifest

    plan = load_manifest(manifest or default_manifest()).track("bicubic")
    return {s: ensure_checkpoint(e, root, "bicubic", progress=progress) for e in plan.models for s in e.scales}


def _log(report, out: Path, args: argparse.Namespace) -> None:
    from ntire.benchmark import report_metrics

    def say(message: str) -> None:
        print(f"ntire benchmark: {message}", file=sys.stderr)

    try:
        import mlflow  # noqa: F401
    except ImportError:
        say("MLflow is not installed (pip install 'ntire[track]'): results not logged")
        return
    from ntire.training.tracking import start_tracking
    from ntire.config import TrackingConfig

    params = {"root": report.root, "sets": ",".join(dict.fromkeys(r.set_name for r in report.rows))}
    params.update({f"x{s}_checkpoint": c for s, c in report.checkpoints.items()})
    params["self_ensemble"] = args.self_ensemble
    tracker = start_tracking(
        TrackingConfig(uri=args.tracking_uri, experiment="ntire-benchmarks"),
        run_name=f"benchmark-{report.model_name.replace(' / ', '+')}",
        output_dir="runs",
        params=params,
        say=say,
    )
    if not tracker.active:
        return
    tracker.log_metrics(report_metrics(report), step=0)
    tracker.log_artifacts(out, "report")
    tracker.finish()
    say(f"logged to MLflow run {tracker.run_id} at {tracker.uri}")
