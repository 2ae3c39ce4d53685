"""`ntire submit`: build validated NTIRE submission zips from a manifest, or check an existing zip.

    ntire submit --manifest submissions/sample.yaml --track bicubic          # the sample default
    ntire submit --manifest submissions/div2k.yaml --track unknown --scales 4 --data ~/data
    ntire submit --check runs/submissions/sample-valid/bicubic_x2.zip [--lr DIR] [--scale S]
    accelerate launch --multi_gpu --num_processes 4 -m ntire submit --manifest submissions/div2k.yaml

See ntire/submission/ for what is made, and submissions/README.md for the manifest. This command
never trains: a missing checkpoint is an error naming the command that makes it (`make submission`
trains the sample manifest's small models before calling it).

Under `accelerate launch` (or torchrun: WORLD_SIZE > 1) each process takes its own device
(cuda:<local rank>; the CPU when there is no GPU or `--device cpu`) and a share of every zip's
images; the first process writes the readmes, zips, reports and the MLflow run once all are done.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

from ntire.options import add_device_argument, add_precision_argument, add_tile_argument, positive_int

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
    parser.add_argument(
        "--data", metavar="DIR", default=None, help="dataset root in DIV2K layout (default: manifest's)"
    )
    parser.add_argument(
        "--out", metavar="DIR", default=None, help="output folder (default runs/submissions/<manifest name>-<split>)"
    )
    add_device_argument(parser)
    ensemble = parser.add_mutually_exclusive_group()
    ensemble.add_argument(
        "--self-ensemble", dest="self_ensemble", action="store_true", default=None, help="force self-ensemble on"
    )
    ensemble.add_argument(
        "--no-self-ensemble", dest="self_ensemble", action="store_false", help="force self-ensemble off"
    )
    add_tile_argument(
        parser, default=None,
        help="tile size in LR pixels: auto (fit the memory free on the device), 0 (whole images) or T "
        "(default: the manifest's `tile`, itself auto by default)",
    )
    parser.add_argument(
        "--max-batch", type=positive_int, default=None, metavar="N",
        help="images per forward pass: tiles, or the same-shape ensemble variants (default: the manifest's batch_size)",
    )
    add_precision_argument(parser)
    parser.add_argument(
        "--io-workers", type=positive_int, default=None, metavar="N",
        help="threads decoding LR and encoding SR PNGs while the model runs (default 4)",
    )
    parser.add_argument(
        "--no-compare",
        dest="compare",
        action="store_false",
        help="on the valid split, skip running the other self-ensemble setting (no gain column)",
    )
    parser.add_argument("--no-mlflow", dest="mlflow", action="store_false", help="do not log to MLflow")
    parser.add_argument(
        "--tracking-uri", default=None, help="MLflow store (default $MLFLOW_TRACKING_URI, else runs/mlflow.db)"
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    check = parser.add_argument_group("checking an existing zip")
    check.add_argument("--check", metavar="ZIP", type=Path, default=None, help="validate ZIP and exit (builds nothing)")
    check.add_argument(
        "--lr", metavar="DIR", type=Path, default=None, help="LR folder of ZIP's inputs, to check names and sizes"
    )
    check.add_argument(
        "--scale", type=positive_int, default=None, metavar="S",
        help="scale of ZIP (default: from the LR names or record)",
    )
    check.add_argument(
        "--partial", action="store_true",
        help="accept a check without the LR sizes (no --lr and no inputs record beside ZIP): names, "
        "formats and the readme only; otherwise such a check exits 1",
    )


def run(args: argparse.Namespace) -> int:
    if args.check is not None:
        return _check(args)
    return _build(args)


def _check(args: argparse.Namespace) -> int:
    from ntire.errors import NtireError
    from ntire.submission.package import check_zip, load_expected

    if not args.check.is_file():
        raise NtireError(f"{args.check}: no such zip file")
    expected, how = load_expected(args.check, args.lr, args.scale)
    problems = check_zip(args.check, expected, args.scale)
    if problems:
        print(f"{args.check}: INVALID, {len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        print(f"({how})", file=sys.stderr)
        return 1
    if expected is None:
        # "valid" must mean fully checked: say what was not, and fail unless asked for this.
        if args.partial:
            print(f"{args.check}: valid as far as checked: names, PNG formats, scale, readme ({how})")
            return 0
        print(f"{args.check}: NOT FULLY CHECKED: names, PNG formats, scale and readme are fine, but {how}; "
              "or accept this partial check with --partial", file=sys.stderr)
        return 1
    print(f"{args.check}: valid ({how})")
    return 0


def _processes(device_name: str | None) -> tuple[Any, Any]:
    """(Processes, this process's torch device): one process, or the launched ones, each on its own
    device, joined through Accelerate (gloo on CPU, NCCL on GPUs)."""
    import torch

    from ntire.errors import ConfigError
    from ntire.options import resolve_device
    from ntire.submission.build import Processes
    from ntire.training.distributed import launched_world_size

    device = resolve_device(device_name)  # first: a bad --device is reported whatever else is wrong
    world = launched_world_size()
    if world == 1:
        return Processes(), device
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = PartialState(cpu=device.type == "cpu" or not torch.cuda.is_available())
    if state.num_processes != world:  # a launch that silently runs something else (STACK-NOTES)
        raise ConfigError(
            f"launched as {world} processes (WORLD_SIZE) but Accelerate set up {state.num_processes}; on a machine "
            "without GPUs launch with ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N"
        )
    if device.type != "cpu":
        device = state.device  # cuda:<local rank>: one GPU per process
    return Processes(rank=state.process_index, world=world, gather=lambda value: gather_object([value])), device


def _finish_processes(processes: Any) -> None:
    if processes.world > 1:
        import torch.distributed as dist

        processes.gather(None)  # nobody tears the group down while another still talks
        if dist.is_initialized():
            dist.destroy_process_group()


def _build(args: argparse.Namespace) -> int:
    from ntire.inference import BF16_COST, resolve_precision
    from ntire.locks import hold_folder
    from ntire.submission.build import RunOptions, build_track
    from ntire.submission.manifest import default_manifest, find_checkpoint, load_manifest, resolve_data_root
    from ntire.submission.predict import DEFAULT_IO_WORKERS
    from ntire.submission.report import format_results, log_results, write_report

    processes, torch_device = _processes(args.device)
    device = str(torch_device)
    precision = resolve_precision(args.precision, torch_device)
    main_process = processes.rank == 0
    if precision == "bf16" and main_process:
        print(f"ntire submit: --precision bf16: {BF16_COST}", file=sys.stderr)
    manifest_path = args.manifest or default_manifest()
    manifest = load_manifest(manifest_path)
    split = args.split or manifest.split
    tracks = args.track or list(manifest.tracks)
    out = Path(args.out or f"runs/submissions/{manifest.name}-{split}")
    # Checked before any work (the sample data's build included), so a missing checkpoint fails in
    # seconds rather than after another track's minutes of inference.
    for track in tracks:
        plan = manifest.track(track)
        for scale in args.scales or plan.scales:
            entry = plan.entry_for(scale)
            if entry is not None:  # an unserved scale is build_track's error, with the scales served
                find_checkpoint(entry, track)
    if main_process:  # the sample data is built by one process, the others wait for it
        data_root = resolve_data_root(manifest, args.data)
    processes.gather(None)
    if not main_process:
        data_root = resolve_data_root(manifest, args.data)
    options = RunOptions(
        out=out,
        device=device,
        self_ensemble=args.self_ensemble,
        compare=args.compare,
        progress=args.progress,
        tile="manifest" if args.tile is None else args.tile,
        batch_size=args.max_batch,
        precision=precision,
        io_workers=args.io_workers or DEFAULT_IO_WORKERS,
        processes=processes,
    )
    # One writer per submission folder (a second job is refused naming this one); the main process
    # holds it for all of the launched ones.
    with hold_folder(out, "ntire submit") if main_process else contextlib.nullcontext():
        for track in tracks:
            results = build_track(manifest, track, scales=args.scales, split=split, data_root=data_root,
                                  options=options)
            if not main_process:
                continue
            where = f"device {device}" if processes.world == 1 else f"{processes.world} processes ({torch_device.type})"
            print(f"\n{manifest.name}: {track} track, {split} split, data {data_root}, {where}, {precision}")
            print(format_results(results))
            report = out / f"{track}-report"
            write_report(results, report)
            if args.mlflow:
                params = {"manifest": str(manifest_path), "track": track, "split": split, "data": str(data_root),
                          "device": device, "processes": processes.world, "precision": precision}
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
    _finish_processes(processes)
    return 0
