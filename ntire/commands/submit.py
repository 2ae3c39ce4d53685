"""`ntire submit`: build validated NTIRE submission zips from a manifest, or check an existing zip.

    ntire submit --manifest submissions/sample.yaml --track bicubic          # the sample default
    ntire submit --manifest submissions/div2k.yaml --track unknown --scales 4 --data ~/data
    ntire submit --check runs/submissions/sample-valid/bicubic_x2.zip [--lr DIR] [--scale S]

See ntire/submission.py for what is made, and submissions/README.md for the manifest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "make validated NTIRE submission zips per track and scale from a manifest, or --check a zip"



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--manifest",
        default=None,
        metavar="YAML",
        help="which checkpoint serves each track and scale (default submissions/sample.yaml: the sample data)",
    )
    parser.add_argument(
        "--track",
        nargs="+",
        choices=("bicubic", "unknown"),
        default=None,
        help="track(s) to build (default: every track the manifest defines)",
    )
    parser.add_argument(
        "--scales", nargs="+", type=int, choices=(2, 3, 4), default=None, help="scales to build (default: all served)"
    )
    parser.add_argument(
        "--split",
        choices=("test", "valid"),
        default=None,
        help="test: 0901-1000, what the challenge scores; valid: 0801-0900, scored here (default: manifest's)",
    )
    parser.add_argument("--data", metavar="DIR", default=None, help="dataset root in DIV2K layout (default: manifest's)")
    parser.add_argument(
        "--out", metavar="DIR", default=None, help="output folder (default runs/submissions/<manifest name>-<split>)"
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    ensemble = parser.add_mutually_exclusive_group()
    ensemble.add_argument(
        "--self-ensemble", dest="self_ensemble", action="store_true", default=None, help="force self-ensemble on"
    )
    ensemble.add_argument(
        "--no-self-ensemble", dest="self_ensemble", action="store_false", help="force self-ensemble off"
    )
    parser.add_argument("--tile", type=int, default=None, metavar="T", help="tile size in LR pixels (default: manifest's)")
    parser.add_argument("--max-batch", type=int, default=None, metavar="N", help="tiles per forward pass")
    parser.add_argument(
        "--no-compare",
        dest="compare",
        action="store_false",
        help="on the valid split, skip running the other self-ensemble setting (no gain column)",
    )
    parser.add_argument("--no-mlflow", dest="mlflow", action="store_false", help="do not log to MLflow")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default $MLFLOW_TRACKING_URI, else runs/mlflow.db)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    check = parser.add_argument_group("checking an existing zip")
    check.add_argument("--check", metavar="ZIP", type=Path, default=None, help="validate ZIP and exit (builds nothing)")
    check.add_argument(
        "--lr", metavar="DIR", type=Path, default=None, help="LR folder of ZIP's inputs, to check names and sizes"
    )
    check.add_argument("--scale", type=int, default=None, help="scale of ZIP (default: from the LR names or record)")


def run(args: argparse.Namespace) -> int:
    if args.check is not None:
        return _check(args)
    return _build(args)


def _check(args: argparse.Namespace) -> int:
    from ntire.submission import load_expected
    from ntire.submission_check import check_zip

    if not args.check.is_file():
        from ntire.errors import NtireError

        raise NtireError(f"{args.check}: no such zip file")
    expected, how = load_expected(args.check, args.lr, args.scale)
    problems = check_zip(args.check, expected)
    if problems:
        print(f"{args.check}: INVALID, {len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        print(f"({how})", file=sys.stderr)
        return 1
    print(f"{args.check}: valid ({how})")
    return 0


def _build(args: argparse.Namespace) -> int:
    import torch

    from ntire.errors import ConfigError
    from ntire.submission import (
        RunOptions,
        build_track,
        default_manifest,
        ensure_data,
        format_results,
        load_manifest,
        log_results,
        write_report,
    )

    for name in ("tile", "max_batch"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")
    manifest_path = args.manifest or default_manifest()
    manifest = load_manifest(manifest_path)
    split = args.split or manifest.split
    tracks = args.track or list(manifest.tracks)
    out = Path(args.out or f"runs/submissions/{manifest.name}-{split}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"--device {device}: not a torch device ({e})") from None
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    for track in tracks:
        manifest.track(track)  # every requested track exists before any work starts
    data_root = ensure_data(manifest, args.data)
    options = RunOptions(
        out=out,
        device=device,
        self_ensemble=args.self_ensemble,
        compare=args.compare,
        progress=args.progress,
        tile="manifest" if args.tile is None else args.tile,
        batch_size=args.max_batch,
    )
    for track in tracks:
        results = build_track(manifest, track, scales=args.scales, split=split, data_root=data_root, options=options)
        print(f"\n{manifest.name}: {track} track, {split} split, data {data_root}, device {device}")
        print(format_results(results))
        report = out / f"{track}-report"
        write_report(results, report)
        if args.mlflow:
            params = {"manifest": str(manifest_path), "track": track, "split": split, "data": str(data_root), "device": device}
            params.update({f"x{r.scale}_checkpoint": str(r.checkpoint) for r in results})
            params.update({f"x{r.scale}_self_ensemble": r.self_ensemble for r in results})
            log_results(
                results,
                run_name=f"submit-{manifest.name}-{track}-{split}",
                params=params,
                report_dir=report,
                uri=args.tracking_uri,
                say=lambda m: print(f"ntire submit: {m}", file=sys.stderr),
            )
        else:
            print("MLflow logging off (--no-mlflow)")
    return 0
