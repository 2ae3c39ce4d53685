"""Training-step speed: ntire's `fit()` against a plain PyTorch loop, and what each speed option buys.

    .venv/bin/python benchmarks/train_step.py [--device cuda] [--threads N] [--num-workers N]

For every model and speed option it measures, each in a fresh subprocess:

- plain: the model (ntire.models.build), Adam, L1, random input already on the device, and
  `forward -> backward -> step -> zero_grad` in a bare loop;
- ntire: `ntire.training.fit.fit()` itself on WebDataset shards of the sample photos: the loader,
  Accelerate (prepare, autocast, accumulate, backward), the progress/metrics bookkeeping.

Both use the same network, batch, patch size and options (bf16 autocast around the forward pass,
channels-last layout, torch.compile), and both are timed by wall clock in chunks of W updates
after a warm-up of W: the plain loop syncs the device after each chunk, `fit()` (log_every = W)
writes a metrics record after each, which reads the loss and so syncs too; the times of those
records are taken by wrapping `ntire.training.fit._append_jsonl`. The ratio ntire/plain over all timed
updates is what Accelerate and the loader cost (target >= 0.95); the ratio of the fastest chunks
beside it is less disturbed by other processes on a shared machine.

FLOPs are counted analytically: 2 * Cin * Cout * k * k per output pixel for every convolution
(from the layer shapes, with hooks on a shape-only forward pass), times 3 for a training step
(forward, gradients for the inputs and for the weights). On a GPU the achieved TFLOP/s is also put
against the card's dense peak (bf16, or TF32 for fp32 convolutions) as model FLOPs utilisation.

On the 2-core CPU this takes a few minutes: few steps (printed), EDSR (43M parameters) at batch 1,
and the bf16 options only where the CPU computes bf16 natively (AVX512-BF16 or AMX; elsewhere it
is emulated and many times slower than fp32). Timings on a shared machine move with the load of
other processes (load average printed); when other processes keep the cores busy, `--threads 1`
avoids OpenMP threads waiting for each other at every barrier (measured 15x slower with 2 threads
at load average 5 on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Option:
    """One combination of speed options."""

    name: str
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False


OPTIONS = {
    "fp32": Option("fp32 eager"),
    "cl": Option("channels_last", channels_last=True),
    "bf16": Option("bf16 autocast", bf16=True),
    "bf16_cl": Option("bf16 + channels_last", bf16=True, channels_last=True),
    "compile": Option("torch.compile (fp32)", compile=True),
    "bf16_cl_compile": Option("bf16 + channels_last + compile", bf16=True, channels_last=True, compile=True),
}


@dataclass(frozen=True)
class Case:
    """One measurement: a model, a batch and an option, run plainly or through fit()."""

    kind: str
    """"plain" or "ntire"."""
    model: str
    """Preset name (ntire.config.MODEL_PRESETS)."""
    scale: int
    batch: int
    patch: int
    option: str
    """Key of OPTIONS."""
    device: str
    warmup: int
    steps: int
    threads: int | None
    num_workers: int
    shards: str
    out: str


# Dense peak TFLOP/s (no sparsity) per GPU name fragment: (bf16, tf32, fp32). First match wins.
GPU_PEAKS = (
    ("H100 PCIe", (756.0, 378.0, 51.2)),
    ("H100", (989.4, 494.7, 66.9)),
    ("H200", (989.4, 494.7, 66.9)),
    ("A100", (312.0, 156.0, 19.5)),
    ("L40S", (362.0, 183.0, 91.6)),
    ("L4", (121.0, 60.0, 30.3)),
    ("A10", (125.0, 62.5, 31.2)),
)


# ---------------------------------------------------------------------------------------------
# Children: one measurement each


def _model_config(case: Case):
    from ntire.config import ModelConfig

    return ModelConfig.preset(case.model, case.scale)


def train_flops_per_patch(case: Case) -> float:
    """Analytic FLOPs of one training step per LR patch (3 x the forward convolutions)."""
    import torch
    from torch import nn

    from ntire.models.build import build_model

    with torch.device("meta"):
        model = build_model(_model_config(case))
        total = 0

        def count(module: nn.Conv2d, _inputs, output) -> None:
            nonlocal total
            k = module.kernel_size[0] * module.kernel_size[1]
            pixels = output.shape[-2] * output.shape[-1]
            total += 2 * (module.in_channels // module.groups) * module.out_channels * k * pixels

        hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d)]
        model(torch.empty(1, 3, case.patch, case.patch))
        for h in hooks:
            h.remove()
    return 3.0 * total


def run_plain(case: Case) -> dict:
    """Time the bare loop; patches/s over `steps` updates after `warmup`."""
    import torch

    from ntire.models.build import build_model
    from ntire.training.losses import l1

    option = OPTIONS[case.option]
    device = torch.device(case.device)
    torch.manual_seed(0)
    model = build_model(_model_config(case)).to(device)
    if option.channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if option.compile else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8)
    lr = torch.randint(0, 256, (case.batch, 3, case.patch, case.patch), dtype=torch.uint8).to(device).float()
    hr_size = case.patch * case.scale
    hr = torch.randint(0, 256, (case.batch, 3, hr_size, hr_size), dtype=torch.uint8).to(device).float()
    if option.channels_last:
        lr = lr.contiguous(memory_format=torch.channels_last)

    def step() -> torch.Tensor:
        # As Accelerate does: autocast around the forward pass only, the loss in fp32.
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=option.bf16):
            sr = forward(lr)
        loss = l1(sr.float(), hr)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def sync(loss: torch.Tensor) -> None:
        float(loss.detach())  # waits for the device, like fit()'s metrics record

    # Chunks of `warmup` updates, each ended by a sync: what fit() does with log_every = warmup.
    started = time.perf_counter()
    marks = []
    for i in range(case.warmup + case.steps):
        loss = step()
        if (i + 1) % case.warmup == 0:
            sync(loss)
            marks.append(time.perf_counter())
    return _rates(case, marks, started)


def _rates(case: Case, marks: list[float], started: float) -> dict:
    """Patches/s over all timed updates and in the fastest chunk, from the chunk-end times."""
    chunks = [b - a for a, b in zip(marks, marks[1:], strict=False)]
    return {
        "patches_per_s": case.batch * case.steps / (marks[-1] - marks[0]),
        "best_patches_per_s": case.batch * case.warmup / min(chunks),
        "warmup_s": marks[0] - started,
    }


def run_ntire(case: Case) -> dict:
    """Time `fit()`: wall clock between its metrics record after `warmup` and its last one."""
    import ntire.training.fit as train
    from ntire.config import build_config

    option = OPTIONS[case.option]
    config = build_config(
        overrides={
            "data": {"source": case.shards, "batch_size": case.batch, "patch_size": case.patch,
                     "num_workers": case.num_workers},
            "max_steps": case.warmup + case.steps,
            "log_every": case.warmup,
            "save_every": case.warmup + case.steps,
            "eval_every": 0,
            "output_dir": case.out,
            "mixed_precision": "bf16" if option.bf16 else "no",
            "channels_last": option.channels_last,
            "compile": option.compile,
            "progress": False,
            "tracking": {"enabled": False},
            "model": {"scales": [case.scale]},
        },
        model=case.model,
    )
    records: list[tuple[int, float]] = []
    append = train._append_jsonl

    def timed_append(out, main, record):  # fit() writes one record per log step, after a sync
        if "train/loss" in record:
            records.append((record["step"], time.perf_counter()))
        append(out, main, record)

    train._append_jsonl = timed_append
    started = time.perf_counter()
    train.fit(config)
    steps = [step for step, _ in records]
    expected = list(range(case.warmup, case.warmup + case.steps + 1, case.warmup))
    if steps != expected:
        raise RuntimeError(f"fit() logged at steps {steps}, expected {expected}")
    return _rates(case, [t for _, t in records], started)


def child_main(case: Case) -> None:
    import torch

    if case.threads:
        torch.set_num_threads(case.threads)
    result = run_plain(case) if case.kind == "plain" else run_ntire(case)
    result["threads"] = torch.get_num_threads()
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# Parent: plan, run, print


def measure(case: Case) -> dict:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(asdict(case))],
                          cwd=ROOT, env=env,
                          capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit(f"measurement failed: {case}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def prepare_shards(work: Path) -> Path:
    """x2 bicubic shards of the sample photos (whole images, raw uint8)."""
    from ntire.data.layout import div2k_pairs
    from ntire.data.sample import build_sample_dataset, is_complete
    from ntire.data.shards import write_shards

    sample = ROOT / "data" / "sample"  # what `ntire demo` builds; reused when it is there
    if not is_complete(sample):
        sample = build_sample_dataset(work / "sample")
    pairs = div2k_pairs(sample, split="train", track="bicubic", scales=(2,))
    out = work / "shards"
    write_shards(pairs, out, track="bicubic", scales=(2,), progress=False)
    return out


def plan(device: str, bf16: bool) -> list[tuple[str, int, int, list[str], int, int]]:
    """(model, batch, patch, options, warmup, steps) for this device; `bf16`: include bf16 options.

    `steps` must be a multiple of `warmup`: both are timed in chunks of `warmup` updates.
    """
    if device.startswith("cuda"):
        options = ["fp32", "cl", "bf16", "bf16_cl", "compile", "bf16_cl_compile"]
        options = options if bf16 else [o for o in options if not o.startswith("bf16")]
        return [("edsr-baseline", 16, 48, options, 10, 50), ("edsr", 16, 48, options, 5, 20)]
    baseline = ["fp32", "cl", "bf16", "bf16_cl", "compile"] if bf16 else ["fp32", "cl", "compile"]
    edsr = ["fp32", "bf16_cl"] if bf16 else ["fp32", "cl"]
    return [("edsr-baseline", 16, 48, baseline, 1, 3), ("edsr", 1, 48, edsr, 1, 2)]


def gpu_peak(option: Option, override: float | None) -> float | None:
    import torch

    if override:
        return override
    name = torch.cuda.get_device_name()
    for fragment, (bf16, tf32, fp32) in GPU_PEAKS:
        if fragment in name:
            if option.bf16:
                return bf16
            return tf32 if torch.backends.cudnn.allow_tf32 else fp32
    return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--threads", type=int, help="torch threads per process (default torch's)")
    parser.add_argument("--num-workers", type=int, help="fit()'s loader workers (default 1 on CPU, 6 on GPU)")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's peak TFLOP/s for the MFU column")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="measure the bf16 options (default: only where the device computes bf16 natively)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(Case(**json.loads(args.child)))
        return 0

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.startswith("cuda")
    workers = args.num_workers if args.num_workers is not None else (6 if gpu else 1)
    where = torch.cuda.get_device_name() if gpu else cpu_name()
    threads = args.threads or torch.get_num_threads()
    print(f"train_step on {device} ({where}), torch {torch.__version__}, {threads} threads, "
          f"fit() loader workers {workers}; load average {_load()} at start")

    from ntire.training.setup import native_bf16

    bf16 = native_bf16() if args.bf16 is None else args.bf16
    if not bf16:
        print("bf16 options skipped: this device emulates bf16 (no AVX512-BF16/AMX on a CPU), which was "
              "measured 5-30x slower than fp32 here; --bf16 measures them anyway")

    with tempfile.TemporaryDirectory(prefix="ntire-bench-") as tmp:
        work = Path(tmp)
        shards = prepare_shards(work)
        for model, batch, patch, options, warmup, steps in plan(device, bf16):
            base = Case("plain", model, 2, batch, patch, "fp32", device, warmup, steps, args.threads, workers,
                        str(shards), "")
            flops = train_flops_per_patch(base)
            print(f"\n{model} x2, batch {batch}, {patch}x{patch} LR patches, {flops / 1e9:.2f} GFLOP per patch "
                  f"per training step; {warmup} warm-up + {steps} timed updates, in chunks of {warmup}")
            header = (f"{'option':31} {'plain p/s':>9} {'ntire p/s':>9} {'ntire/plain':>11} {'(best chunk)':>12} "
                      f"{'vs fp32':>7} {'TFLOP/s':>7}" + (f" {'MFU':>6}" if gpu else ""))
            print(header)
            reference = None
            for key in options:
                option = OPTIONS[key]
                results = {}
                for kind in ("plain", "ntire"):
                    case = Case(kind, model, 2, batch, patch, key, device, warmup, steps, args.threads, workers,
                                str(shards), str(work / f"run-{model}-{key}"))
                    results[kind] = measure(case)
                plain, ours = results["plain"]["patches_per_s"], results["ntire"]["patches_per_s"]
                best = results["ntire"]["best_patches_per_s"] / results["plain"]["best_patches_per_s"]
                reference = reference or ours
                tflops = ours * flops / 1e12
                line = (f"{option.name:31} {plain:9.3g} {ours:9.3g} {ours / plain:11.3f} {best:12.3f} "
                        f"{ours / reference:6.2f}x {tflops:7.3f}")
                if gpu:
                    peak = gpu_peak(option, args.peak_tflops)
                    line += f" {tflops / peak:6.1%}" if peak else f" {'n/a':>6}"
                print(line, flush=True)
    print(f"\nload average {_load()} at the end; ntire/plain >= 0.95 means Accelerate and the loader add < 5%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
