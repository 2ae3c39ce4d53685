"""The Accelerator of a training job, from one process to several machines, and its clean end.

`accelerate launch` decides how many processes run and where; this module turns what it set in
the environment into a working Accelerator and refuses the launches that would otherwise go wrong
without a word (measured with accelerate 1.15, deepspeed 0.19, torch 2.13 on a CPU-only machine):

- `accelerate launch --cpu --num_processes N` starts ONE process (that launcher expects mpirun).
  Refused; `--multi_gpu --num_processes N` (or cluster/accelerate/cpu_2proc.yaml) works.
- `accelerate launch --multi_gpu` on a machine without a GPU starts N independent, non-distributed
  copies unless the script asks for the CPU: done here (`cpu=True` -> MULTI_CPU over gloo).
- DeepSpeed through Accelerate on CPU needs `transformers` importable (Accelerate's version check)
  and the gloo backend named explicitly, else Accelerate counts 1 process while DeepSpeed's group
  has N. `ACCELERATE_USE_CPU=1` with `--use_deepspeed` drops DeepSpeed silently: refused.
- Any remaining mismatch between the launcher's WORLD_SIZE and the processes the Accelerator
  sees is refused, so a run is never silently trained on fewer processes than launched.
- DeepSpeed's "auto" entries are filled from the training config (Accelerate would want a
  prepared DataLoader and would clip gradients at 1.0); bf16 runs as DeepSpeed's torch_autocast
  (fp32 weights) since its bf16 mode casts the model and fails on fp32 batches; ZeRO-3 and a
  DeepSpeed "optimizer" section are refused (see `_fill_deepspeed_config`).

DeepSpeed is imported only when a launch uses it (`uses_deepspeed`, or a ZeRO-3 gather): a plain
run never pays its import or prints its "Setting accelerator to CPU" warning.

`finish` ends a job: barrier, then destroy the process group, which makes the "terminate called
without an active exception" abort at interpreter exit much rarer (1 run in 3 -> 1 in 18 under
DeepSpeed). `record_rank` writes what each process ended with (rank, world size, a hash of its
weights), so a launch can be checked from outside: same hash on every rank, expected world size.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ntire.errors import ConfigError
from ntire.files import atomic_write_text
from ntire.models.build import unwrap
from ntire.models.config import network_of

if TYPE_CHECKING:
    from accelerate import Accelerator

    from ntire.config import TrainConfig

RANKS_DIR = "ranks"
"""Sub-folder of the output folder where `record_rank` writes `rank-<i>.json`."""

_MPI_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def has_gpu() -> bool:
    """Whether this process can use a CUDA or XPU device (what NCCL/XCCL need)."""
    if torch.cuda.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and xpu.is_available())


def launched_world_size() -> int:
    """Processes the launcher says the job has (WORLD_SIZE, or MPI's size), 1 if not launched."""
    for name in ("WORLD_SIZE", *_MPI_SIZE_VARS):
        if name in os.environ:
            return _env_int(name, 1)
    return 1


def uses_cpu() -> bool:
    """Whether the launch asks for the CPU even where a GPU is (`ACCELERATE_USE_CPU`, as
    `accelerate launch --cpu` and cluster/accelerate/cpu_2proc.yaml set it)."""
    return _env_flag("ACCELERATE_USE_CPU")


def uses_deepspeed() -> bool:
    """Whether `accelerate launch` asked for DeepSpeed (`--use_deepspeed` or a DEEPSPEED config)."""
    return _env_flag("ACCELERATE_USE_DEEPSPEED")


def check_launch() -> None:
    """Refuse launch settings that Accelerate would silently turn into something else."""
    deepspeed = uses_deepspeed()
    if deepspeed and uses_cpu():
        raise ConfigError(
            "ACCELERATE_USE_CPU is set together with DeepSpeed (--use_deepspeed); Accelerate would "
            "silently train without DeepSpeed. Unset ACCELERATE_USE_CPU: on a machine without a GPU "
            "DeepSpeed runs on the CPU by itself"
        )
    if deepspeed and importlib.util.find_spec("transformers") is None:
        raise ConfigError(
            "DeepSpeed through Accelerate needs the transformers package importable (Accelerate "
            "checks its version); install it with: pip install 'ntire[deepspeed]'"
        )
    if deepspeed and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("--use_deepspeed given but DeepSpeed is not installed (pip install 'ntire[deepspeed]')")
    # `accelerate launch --cpu --num_processes N` runs one plain process with MASTER_ADDR set and no
    # WORLD_SIZE (its launcher leaves spawning to mpirun, which sets the MPI sizes). The launcher
    # always sets ACCELERATE_MIXED_PRECISION: a plain `python` run with MASTER_ADDR is left alone.
    if (
        uses_cpu()
        and "ACCELERATE_MIXED_PRECISION" in os.environ
        and "MASTER_ADDR" in os.environ
        and "WORLD_SIZE" not in os.environ
        and not any(name in os.environ for name in _MPI_SIZE_VARS)
    ):
        raise ConfigError(
            "`accelerate launch --cpu --num_processes N` starts only one process (without mpirun). "
            "For several CPU processes use `accelerate launch --multi_gpu --num_processes N ...` "
            "(ntire runs them on the CPU by itself) or --config_file cluster/accelerate/cpu_2proc.yaml"
        )


def accelerator_kwargs(config: TrainConfig) -> dict[str, Any]:
    """The keyword arguments `make_accelerator` builds its Accelerator with, for this launch."""
    from accelerate.utils import AutocastKwargs, DistributedDataParallelKwargs, InitProcessGroupKwargs

    handlers: list[Any] = []
    if has_gpu() and config.capture:
        # Autocast's cache of casted weights is not meant for CUDA graph capture (torch refuses it
        # in make_graphed_callables); here it saves nothing, since each weight is cast once per
        # forward, and backward keeps its own copy.
        handlers.append(AutocastKwargs(cache_enabled=False))
    kwargs: dict[str, Any] = {
        "mixed_precision": config.mixed_precision,
        "gradient_accumulation_steps": config.optim.grad_accum,
    }
    if network_of(config.model.kind).multi_scale:
        # Each batch runs one scale's branches; DDP must not wait for the others' gradients.
        handlers.append(DistributedDataParallelKwargs(find_unused_parameters=True))
    if uses_deepspeed():
        if not has_gpu():
            # DeepSpeed picks gloo by itself on CPU, but Accelerate, not told, sees no backend and
            # counts one process: the batch-size check then fails or, worse, the ranks disagree.
            handlers.append(InitProcessGroupKwargs(backend="gloo"))
    elif launched_world_size() > 1 and not has_gpu():
        # Without cpu=True, N processes on a machine without a GPU each train alone.
        kwargs["cpu"] = True
    kwargs["kwargs_handlers"] = handlers
    return kwargs


def make_accelerator(config: TrainConfig) -> Accelerator:
    """The Accelerator for `config` under the current launch (one process, several, several
    machines, with or without DeepSpeed); launch settings fill in what the config leaves.

    Raises ConfigError for a launch that would silently run other than asked (see module doc).
    """
    from accelerate import Accelerator

    check_launch()
    accelerator = Accelerator(**accelerator_kwargs(config))
    if uses_deepspeed():
        _fill_deepspeed_config(accelerator, config)
    check_world_size(accelerator)
    return accelerator


def _fill_deepspeed_config(accelerator: Accelerator, config: TrainConfig) -> None:
    """Set the DeepSpeed config entries left "auto" from the training config.

    Accelerate would take the micro-batch size from a prepared DataLoader (ntire's loader is not
    prepared: it splits the shards itself) and would clip gradients at 1.0 by default.
    """
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        raise ConfigError("DeepSpeed was asked for but Accelerate set up no DeepSpeed plugin")
    ds = plugin.deepspeed_config
    if int(ds.get("zero_optimization", {}).get("stage", 0)) >= 3:
        # Measured: training runs, but fit() exports (and validates) the weights the main process
        # holds, which ZeRO-3 has partitioned away (empty tensors), so the export fails.
        raise ConfigError(
            "DeepSpeed ZeRO stage 3 is not supported by ntire's fit() yet: it partitions the "
            "weights, which export and validation read whole on each process. EDSR (43M "
            "parameters) fits on any GPU; use ZeRO-1 or 2 (cluster/accelerate/deepspeed_zero2.yaml)"
        )
    if "optimizer" in ds:
        source = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") or "the DeepSpeed config"
        raise ConfigError(
            f"{source}: remove its \"optimizer\" section: ntire passes its own Adam (and a DeepSpeed "
            "optimizer would compile FusedAdam on first use)"
        )
    wanted = {
        "train_micro_batch_size_per_gpu": config.data.batch_size,
        "gradient_accumulation_steps": config.optim.grad_accum,
        "gradient_clipping": float(config.optim.grad_clip or 0.0),  # 0: no clipping
    }
    for key, value in wanted.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
    if ds.get("train_batch_size", "auto") == "auto":
        ds["train_batch_size"] = (
            ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * accelerator.num_processes
        )
    _deepspeed_precision(ds, accelerator.mixed_precision)


def _deepspeed_precision(ds: dict[str, Any], mixed_precision: str) -> None:
    """Mixed precision under DeepSpeed as everywhere else in ntire: fp32 weights, autocast forward.

    DeepSpeed's own `bf16`/`fp16` modes store the model itself in half precision, so the fp32
    batches ntire feeds it fail ("Input type (float) and bias type (c10::BFloat16) should be the
    same") and the exported weights would be half precision. Its `torch_autocast` section keeps
    fp32 weights and autocasts the forward pass (gradients of convolutions are reduced in bf16).
    """
    if "torch_autocast" in ds:
        return  # the user's own choice
    if mixed_precision == "fp16":
        raise ConfigError(
            "fp16 under DeepSpeed is not supported by ntire (no loss scaling with ZeRO autocast); "
            "use --mixed-precision bf16 or no"
        )
    if mixed_precision == "bf16":
        ds["bf16"] = {**ds.get("bf16", {}), "enabled": False}
        ds["fp16"] = {**ds.get("fp16", {}), "enabled": False}
        ds["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}


def check_world_size(accelerator: Accelerator) -> None:
    """Refuse an Accelerator that sees fewer processes than the launcher started."""
    launched = launched_world_size()
    if launched > 1 and accelerator.num_processes != launched:
        raise ConfigError(
            f"the launcher started {launched} processes but the Accelerator sees "
            f"{accelerator.num_processes} ({accelerator.distributed_type}); each would train alone. "
            "Launch with `accelerate launch --multi_gpu` (GPU or CPU) or --use_deepspeed, not --cpu"
        )


def world_info(accelerator: Accelerator) -> dict[str, Any]:
    """Where this process stands: rank, local rank, world size, machines, backend, device."""
    num_machines = _env_int("GROUP_WORLD_SIZE", 0) or _env_int("NNODES", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", 0)
    if not num_machines and local_world:
        num_machines = max(1, accelerator.num_processes // local_world)
    return {
        "rank": accelerator.process_index,
        "local_rank": accelerator.local_process_index,
        "world_size": accelerator.num_processes,
        "num_machines": num_machines or 1,
        "machine_rank": _env_int("GROUP_RANK", 0),
        "distributed_type": str(accelerator.distributed_type).rsplit(".", 1)[-1],
        "backend": accelerator.state.backend,
        "device": str(accelerator.device),
        "mixed_precision": mixed_precision(accelerator),
        "deepspeed_zero_stage": _zero_stage(accelerator),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


def mixed_precision(accelerator: Accelerator) -> str:
    """The precision the forward pass runs in: "no", "bf16" or "fp16".

    Under DeepSpeed, `accelerator.mixed_precision` reads DeepSpeed's bf16/fp16 sections, which
    `make_accelerator` turns off in favour of its `torch_autocast` section; this reads both.
    """
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None:
        autocast = plugin.deepspeed_config.get("torch_autocast", {})
        if autocast.get("enabled"):
            return "bf16" if str(autocast.get("dtype", "bfloat16")).endswith(("bfloat16", "bf16")) else "fp16"
    return accelerator.mixed_precision


def _zero_stage(accelerator: Accelerator) -> int | None:
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return None
    return int(plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0))


def weights_digest(model: nn.Module, accelerator: Accelerator | None = None) -> str:
    """SHA-256 over this process's copy of the weights and buffers (names, dtypes, shapes, bytes).

    Under ZeRO-3 each process holds only a partition; the parameters are gathered first (a
    collective: every process must call this then).
    """
    # Not `accelerator.unwrap_model`: it imports DeepSpeed whenever it is installed (seconds, and
    # DeepSpeed's "Setting accelerator to CPU" warning on every CPU run that never uses it).
    module = unwrap(model)
    gather = _zero3_gather(module, accelerator)
    digest = hashlib.sha256()
    with gather:
        for name, tensor in sorted(module.state_dict().items()):
            # reshape(-1) of a contiguous copy: flat with stride 1 whatever the memory format
            # (channels-last weights with 1x1 kernels count as contiguous yet keep odd strides).
            t = tensor.detach().to("cpu").contiguous().reshape(-1)
            digest.update(f"{name}:{t.dtype}:{tuple(tensor.shape)};".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _zero3_gather(module: nn.Module, accelerator: Accelerator | None) -> Any:
    import contextlib

    if accelerator is None or _zero_stage(accelerator) != 3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)


def record_rank(accelerator: Accelerator, model: nn.Module, output_dir: str | os.PathLike,
                **extra: Any) -> Path:
    """Write `<output_dir>/ranks/rank-<i>.json`: `world_info`, the weights' digest and `extra`.

    Every process must call it (ZeRO-3 gathers). Comparing the files of a run shows whether all
    ranks ended with the same weights and whether the job ran with the world size it was given.
    """
    digest = weights_digest(model, accelerator)
    record = {**world_info(accelerator), "weights_sha256": digest, **extra}
    path = Path(output_dir) / RANKS_DIR / f"rank-{accelerator.process_index}.json"
    atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n")
    return path


def read_rank_records(output_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The `record_rank` files of a run, ordered by rank."""
    folder = Path(output_dir) / RANKS_DIR
    records = [json.loads(p.read_text()) for p in folder.glob("rank-*.json")] if folder.is_dir() else []
    return sorted(records, key=lambda r: r["rank"])


def finish(accelerator: Accelerator) -> None:
    """End a job's accelerator: barrier, destroy the process group, reset Accelerate's state.

    After this another `fit` in the same process may build a different Accelerator. The barrier
    is skipped while an exception is propagating (the other ranks may never reach it).
    """
    from accelerate.state import AcceleratorState

    failing = sys.exc_info()[0] is not None
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed and not failing:
        torch.distributed.barrier()  # no rank tears the group down while another still uses it
    accelerator.end_training()  # also destroys the process group (Accelerate >= 1.x)
    if distributed and torch.distributed.is_initialized() and not accelerator.state.fork_launched:
        torch.distributed.destroy_process_group()
    # Accelerate keeps one process-wide state and refuses a second Accelerator with other settings
    # (e.g. precision) until it is reset, as its own test-suite does between tests.
    AcceleratorState._reset_state(reset_partial_state=True)


__all__ = [
    "RANKS_DIR",
    "accelerator_kwargs",
    "check_launch",
    "check_world_size",
    "finish",
    "has_gpu",
    "launched_world_size",
    "make_accelerator",
    "mixed_precision",
    "read_rank_records",
    "record_rank",
    "uses_deepspeed",
    "weights_digest",
    "world_info",
]
