"""`ntire train`: train an EDSR/MDSR network in this process (`accelerate launch ntire/train.py`
takes the same options and runs it on several processes or machines)."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "train an EDSR or MDSR network (paper recipe; see ntire/configs/ for ready-made setups)"

MODELS = ("edsr-baseline", "edsr", "mdsr-baseline", "mdsr")

# argparse destination -> config field it overrides (options left out keep the YAML/default value)
OVERRIDES = {
    "track": "data.track",
    "data": "data.source",
    "valid_data": "data.valid_root",
    "shard_dir": "data.shard_dir",
    "batch_size": "data.batch_size",
    "patch_size": "data.patch_size",
    "num_workers": "data.num_workers",
    "lr": "optim.lr",
    "grad_accum": "optim.grad_accum",
    "grad_clip": "optim.grad_clip",
    "max_steps": "max_steps",
    "output_dir": "output_dir",
    "save_every": "save_every",
    "eval_every": "eval_every",
    "keep_last": "keep_last",
    "resume": "resume",
    "init_from": "init_from",
    "seed": "seed",
    "mixed_precision": "mixed_precision",
    "channels_last": "channels_last",
    "compile": "compile",
    "progress": "progress",
    "tracking": "tracking.enabled",
    "tracking_uri": "tracking.uri",
    "run_name": "tracking.run_name",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The training options (shared by `ntire train` and `ntire/train.py`)."""
    p = parser
    p.add_argument("--config", metavar="FILE", help="YAML config: a path or a shipped name (demo, edsr_x2, ...)")
    p.add_argument("--model", choices=MODELS, help="network preset (replaces the config's architecture)")
    p.add_argument("--scale", type=int, nargs="+", metavar="S", help="upscaling factor(s); MDSR takes several")
    p.add_argument("--track", choices=("bicubic", "unknown"), help="NTIRE degradation track")
    p.add_argument("--data", metavar="DIR|URLS", help="dataset root in DIV2K layout, or WebDataset shard URLs")
    p.add_argument("--valid-data", metavar="DIR", help="dataset root for validation (default --data if a folder)")
    p.add_argument("--shard-dir", metavar="DIR", help="where a dataset root is sharded (default OUTPUT/shards)")
    p.add_argument("--max-steps", type=int, metavar="N", help="optimizer updates to train for")
    p.add_argument("--output-dir", metavar="DIR", help="checkpoints, exported model, tracking database")
    p.add_argument("--save-every", type=int, metavar="N", help="checkpoint every N updates")
    p.add_argument("--eval-every", type=int, metavar="N", help="validate every N updates (0: only at the end)")
    p.add_argument("--keep-last", type=int, metavar="K", help="checkpoints kept besides the best one")
    p.add_argument("--resume", metavar="auto|PATH", help="continue from the newest checkpoint (auto) or PATH")
    p.add_argument("--init-from", metavar="CKPT", help="start from a trained model (e.g. x3 from x2)")
    p.add_argument("--batch-size", type=int, metavar="N", help="patches per micro-batch per process")
    p.add_argument("--patch-size", type=int, metavar="P", help="LR patch size in pixels")
    p.add_argument("--lr", type=float, help="initial learning rate")
    p.add_argument("--grad-accum", type=int, metavar="N", help="micro-batches per update")
    p.add_argument("--grad-clip", type=float, metavar="NORM", help="clip the gradient norm")
    p.add_argument("--mixed-precision", choices=("auto", "no", "bf16", "fp16"),
                   help="autocast precision (auto: bf16 where the hardware runs it natively)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last memory layout")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the model")
    p.add_argument("--num-workers", type=int, metavar="N", help="data loader workers per process")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--tracking", action=argparse.BooleanOptionalAction, default=None, help="MLflow tracking")
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI "
                   "or OUTPUT/mlflow.db)")
    p.add_argument("--run-name", metavar="NAME", help="MLflow run name (default from the setup)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override any config field, e.g. --set data.patches_per_sample=4 (repeatable)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line, as a nested mapping of config fields."""
    out: dict[str, Any] = {}
    for dest, path in OVERRIDES.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        node = out
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def run(args: argparse.Namespace) -> int:
    from ntire.train import run_from_args

    return run_from_args(args)
