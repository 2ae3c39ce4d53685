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

from ntire.options import add_config_arguments, add_device_argument, add_precision_argument, options_from_args
from ntire.submission.options import SubmitOptions, ZipCheckOptions

HELP = "make validated NTIRE submission zips per track and scale from a manifest, or --check a zip"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per field of SubmitOptions and ZipCheckOptions (ntire/submission/options.py), their
    docstrings as help, plus the --device and --precision of every inference command."""
    add_config_arguments(parser, SubmitOptions, title="submission options")
    add_device_argument(parser)
    add_precision_argument(parser)
    add_config_arguments(parser, ZipCheckOptions, title="checking an existing zip")


def run(args: argparse.Namespace) -> int:
    check = options_from_args(ZipCheckOptions, args)
    if check.check is not None:
        return _check(check)
    return _build(options_from_args(SubmitOptions, args), args.device, args.precision)


def _check(options: ZipCheckOptions) -> int:
    from ntire.errors import NtireError
    from ntire.submission.package import check_zip, load_expected

    zip_path, lr = Path(options.check), None if options.lr is None else Path(options.lr)
    if not zip_path.is_file():
        raise NtireError(f"{zip_path}: no such zip file")
    expected, how = load_expected(zip_path, lr, options.scale)
    problems = check_zip(zip_path, expected, options.scale)
    if problems:
        print(f"{zip_path}: INVALID, {len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        print(f"({how})", file=sys.stderr)
        return 1
    if expected is None:
        # "valid" must mean fully checked: say what was not, and fail unless asked for this.
        if options.partial:
            print(f"{zip_path}: valid as far as checked: names, PNG formats, scale, readme ({how})")
            return 0
        print(f"{zip_path}: NOT FULLY CHECKED: names, PNG formats, scale and readme are fine, but {how}; "
              "or accept this partial check with --partial", file=sys.stderr)
        return 1
    print(f"{zip_path}: valid ({how})")
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


def _build(opts: SubmitOptions, device_name: str | None, precision_name: str | None) -> int:
    from ntire.inference import BF16_COST, resolve_precision
    from ntire.locks import hold_folder
    from ntire.submission.build import RunOptions, build_track
    from ntire.submission.manifest import default_manifest, find_checkpoint, load_manifest, resolve_data_root
    from ntire.submission.predict import DEFAULT_IO_WORKERS
    from ntire.submission.report import format_results, log_results, write_report

    processes, torch_device = _processes(device_name)
    device = str(torch_device)
    precision = resolve_precision(precision_name, torch_device)
    main_process = processes.rank == 0
    if precision == "bf16" and main_process:
        print(f"ntire submit: --precision bf16: {BF16_COST}", file=sys.stderr)
    manifest_path = opts.manifest or default_manifest()
    manifest = load_manifest(manifest_path)
    split = opts.split or manifest.split
    tracks = opts.track or list(manifest.tracks)
    out = Path(opts.out or f"runs/submissions/{manifest.name}-{split}")
    # Checked before any work (the sample data's build included), so a missing checkpoint fails in
    # seconds rather than after another track's minutes of inference.
    for track in tracks:
        plan = manifest.track(track)
        for scale in opts.scales or plan.scales:
            entry = plan.entry_for(scale)
            if entry is not None:  # an unserved scale is build_track's error, with the scales served
                find_checkpoint(entry, track)
    if main_process:  # the sample data is built by one process, the others wait for it
        data_root = resolve_data_root(manifest, opts.data)
    processes.gather(None)
    if not main_process:
        data_root = resolve_data_root(manifest, opts.data)
    run_options = RunOptions(
        out=out,
        device=device,
        self_ensemble=opts.self_ensemble,
        compare=opts.compare,
        progress=opts.progress,
        tile="manifest" if opts.tile is None else opts.tile,
        batch_size=opts.max_batch,
        precision=precision,
        io_workers=opts.io_workers or DEFAULT_IO_WORKERS,
        processes=processes,
    )
    # One writer per submission folder (a second job is refused naming this one); the main process
    # holds it for all of the launched ones.
    with hold_folder(out, "ntire submit") if main_process else contextlib.nullcontext():
        for track in tracks:
            results = build_track(manifest, track, scales=opts.scales, split=split, data_root=data_root,
                                  options=run_options)
            if not main_process:
                continue
            where = f"device {device}" if processes.world == 1 else f"{processes.world} processes ({torch_device.type})"
            print(f"\n{manifest.name}: {track} track, {split} split, data {data_root}, {where}, {precision}")
            print(format_results(results))
            report = out / f"{track}-report"
            write_report(results, report)
            if opts.mlflow:
                params = {"manifest": str(manifest_path), "track": track, "split": split, "data": str(data_root),
                          "device": device, "processes": processes.world, "precision": precision}
                params.update({f"x{r.scale}_checkpoint": str(r.checkpoint) for r in results})
                params.update({f"x{r.scale}_self_ensemble": r.self_ensemble for r in results})
                log_results(
                    results,
                    run_name=f"submit-{manifest.name}-{track}-{split}",
                    params=params,
                    report_dir=report,
                    uri=opts.tracking_uri,
                    say=lambda m: print(f"ntire submit: {m}", file=sys.stderr),
                )
            else:
                print("MLflow logging off (--no-mlflow)")
    _finish_processes(processes)
    return 0
