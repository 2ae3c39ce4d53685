"""What `ntire tune` takes, as dataclass fields whose docstrings are the flags' help: how the
sweep runs (`SweepOptions`, passed to `ntire.tune.sweep.run_sweep`) and what it sweeps and where
(`SweepSetup`). Imports no Ray, so `ntire tune --help` stays fast and works without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ntire.errors import ConfigError
from ntire.fields import flag


@dataclass(frozen=True)
class SweepOptions:
    """How a sweep runs (what `ntire tune` takes besides the config, the space and where it runs):
    each field is a flag of `ntire tune` (`--num-samples`, ...), its docstring the flag's help."""

    num_samples: int = field(default=4, metadata=flag(metavar="N"))
    """Trials drawn from the space (times the grid's combinations, if any)."""

    scheduler: Literal["asha", "fifo"] = "asha"
    """`asha`: stop poor trials early at the validation steps; `fifo`: run every trial to the end."""

    reduction_factor: int = field(default=2, metadata=flag(metavar="N"))
    """ASHA keeps about 1/reduction_factor of the trials at each rung."""

    cpus_per_trial: float = field(default=1.0, metadata=flag(metavar="N"))
    """CPUs per trial (per worker when workers_per_trial > 1)."""

    gpus_per_trial: float = field(default=0.0, metadata=flag(metavar="N"))
    """GPUs per trial (per worker when workers_per_trial > 1)."""

    workers_per_trial: int = field(default=1, metadata=flag(metavar="N"))
    """Training processes per trial; more than 1 runs each trial as a Ray Train TorchTrainer."""

    max_concurrent: int | None = field(default=None, metadata=flag(metavar="N"))
    """Trials running at once; default as many as the resources allow."""

    max_failures: int = field(default=2, metadata=flag(metavar="N"))
    """Times a crashed trial is retried from its last checkpoint."""

    seed: int | None = field(default=0, metadata=flag(metavar="N"))
    """Seed of the random search (None: a different draw each time)."""

    storage: str | None = field(default=None, metadata=flag(metavar="DIR|URI"))
    """Where Ray keeps trial results and checkpoints (a folder or s3://...; every node must reach
    it on a multi-node cluster); default the sweep's output folder."""

    verbose: int = field(default=1, metadata=flag(metavar="N"))
    """Ray Tune's console output: 0 silent (also --quiet), 1 status table, 2 every result."""

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ConfigError(f"--num-samples must be positive, got {self.num_samples}")
        if self.workers_per_trial < 1:
            raise ConfigError(f"--workers-per-trial must be positive, got {self.workers_per_trial}")
        if self.cpus_per_trial < 0 or self.gpus_per_trial < 0:
            raise ConfigError("--cpus-per-trial and --gpus-per-trial must be >= 0")
        if self.max_failures < 0:
            raise ConfigError(f"--max-failures must be >= 0, got {self.max_failures}")
        if self.reduction_factor < 2:
            raise ConfigError(f"--reduction-factor must be >= 2, got {self.reduction_factor}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ConfigError(f"--max-concurrent must be positive, got {self.max_concurrent}")


@dataclass(frozen=True)
class SweepSetup:
    """What `ntire tune` sweeps over and where its results go (besides the training config)."""

    space: str | None = field(default=None, metadata=flag(metavar="FILE"))
    """Search space YAML: a path or a shipped name (tiny, paper; see ntire/configs/spaces/); no
    default: required unless --resume."""

    output_dir: str = field(default="runs/tune", metadata=flag(metavar="DIR"))
    """Sweep folder: sweep.yaml, trials/, best.yaml, mlflow.db."""

    address: str | None = field(default=None, metadata=flag(metavar="auto|HOST:PORT"))
    """Ray cluster to run on; default: start Ray on this machine."""

    resume: bool = False
    """Continue the interrupted sweep in --output-dir (its config, space and options as it was
    started)."""


__all__ = ["SweepOptions", "SweepSetup"]
