"""Checkpoint averaging: the element-wise mean of a run's last K or best K checkpoints' weights.

A cheap, well-known gain (averaging weights along the end of a trajectory lands nearer the centre
of the basin than any single point of it), which the SR toolboxes do not ship as a command. The
result is a normal model folder (safetensors + config.yaml) that `ntire upscale`, `benchmark` and
`submit` take, scored on the run's validation images beside the best single checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ntire.config import ModelConfig, TrainConfig
from ntire.config_io import from_dict
from ntire.errors import CheckpointError, ConfigError
from ntire.training.state import Checkpoint, best_checkpoint, list_checkpoints

WEIGHTS = "model.safetensors"
"""The network's weights in a training checkpoint (Accelerate's save_state)."""


@dataclass(frozen=True)
class Averaged:
    """What `average_run` wrote and measured."""

    model_dir: Path
    checkpoints: list[Checkpoint]
    """The checkpoints averaged, oldest first."""
    best: Checkpoint | None
    """The best single checkpoint by recorded validation PSNR (None if none recorded one)."""
    scores: dict[str, dict[int, float]]
    """Validation PSNR per scale of "averaged" and of "best" (empty without validation data)."""

    def lines(self) -> list[str]:
        steps = ", ".join(str(c.state.step) for c in self.checkpoints)
        out = [f"averaged {len(self.checkpoints)} checkpoints (steps {steps}) into {self.model_dir}"]
        for scale, psnr in sorted(self.scores.get("averaged", {}).items()):
            best = self.scores.get("best", {}).get(scale)
            against = (f", best single checkpoint (step {self.best.state.step}) {best:.3f} dB, "
                       f"{psnr - best:+.3f} dB") if best is not None and self.best is not None else ""
            out.append(f"x{scale} valid PSNR: averaged {psnr:.3f} dB{against}")
        return out


def select(run_dir: str | Path, *, last: int | None = None, best: int | None = None) -> list[Checkpoint]:
    """The newest run's last `last` checkpoints, or its best `best` by validation PSNR (among
    those that recorded one), oldest first. ConfigError when fewer than asked are kept."""
    if (last is None) == (best is None):
        raise ConfigError("give one of --last K or --best K")
    k = last if last is not None else best
    assert k is not None
    if k < 2:
        raise ConfigError(f"averaging needs at least 2 checkpoints, got {k}")
    every = list_checkpoints(run_dir)
    if not every:
        raise CheckpointError(f"{run_dir}: no checkpoints (a training run's --output-dir holds checkpoints/)")
    lineage = every[-1].state.lineage
    mine = [c for c in every if c.state.lineage == lineage]
    if best is not None:
        mine = sorted((c for c in mine if c.state.valid_psnr is not None),
                      key=lambda c: (c.state.valid_psnr, c.state.step))
    if len(mine) < k:
        kind = "validated checkpoints" if best is not None else "checkpoints"
        raise ConfigError(f"{run_dir}: {len(mine)} {kind} kept, {k} asked; train with a larger --keep-last "
                          f"(and --eval-every no larger than --save-every for --best)")
    return sorted(mine[-k:], key=lambda c: c.state.step)


def average_weights(checkpoints: Sequence[Checkpoint]) -> dict[str, torch.Tensor]:
    """The mean of the checkpoints' weights, summed in float64, in each tensor's own dtype.
    Buffers that are not floats (none in EDSR/MDSR) must agree and are kept."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    total: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for checkpoint in checkpoints:
        path = checkpoint.path / WEIGHTS
        try:
            weights = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
        if total and weights.keys() != total.keys():
            raise CheckpointError(f"{path}: its tensors differ from {checkpoints[0].path / WEIGHTS}'s")
        for name, tensor in weights.items():
            if not tensor.is_floating_point():
                if name in total and not torch.equal(total[name], tensor):
                    raise CheckpointError(f"{path}: {name} differs between the checkpoints")
                total[name] = tensor
                continue
            dtypes[name] = tensor.dtype
            total[name] = total.get(name, 0) + tensor.to(torch.float64)
    return {name: (t / len(checkpoints)).to(dtypes[name]) if name in dtypes else t for name, t in total.items()}


def average_run(run_dir: str | Path, out: str | Path, *, last: int | None = None, best: int | None = None,
                device: Any = "cpu", say: Callable[[str], None] = print) -> Averaged:
    """Average `run_dir`'s checkpoints (see `select`) into the model folder `out`, then score it and
    the best single checkpoint on the run's validation images when it has them."""
    from ntire.models.checkpoint import save_model

    chosen = select(run_dir, last=last, best=best)
    config = from_dict(TrainConfig, chosen[-1].state.config, where=f"{chosen[-1].path} config")
    averaged = average_weights(chosen)
    network = _network(config.model, averaged)
    scored = [c for c in list_checkpoints(run_dir) if c.state.lineage == chosen[-1].state.lineage]
    top = best_checkpoint(scored)
    scores: dict[str, dict[int, float]] = {}
    images = _validation_images(config, say)
    if images:
        from ntire.training.validate import validate

        scores["averaged"] = {s: r.psnr for s, r in validate(network, config.model, images, device=device,
                                                             tile=config.data.valid_tile).scales.items()}
        if top is not None:
            single = _network(config.model, average_weights([top]))
            scores["best"] = {s: r.psnr for s, r in validate(single, config.model, images, device=device,
                                                             tile=config.data.valid_tile).scales.items()}
    metadata: dict[str, Any] = {
        "source": "ntire average",
        "averaged": [str(c.path) for c in chosen],
        "steps": [c.state.step for c in chosen],
        "mode": f"last {last}" if last is not None else f"best {best}",
        "track": config.data.track,
    }
    if "averaged" in scores:
        metadata["valid"] = {f"psnr_x{s}": round(v, 4) for s, v in scores["averaged"].items()}
    model_dir = save_model(out, network, config.model, metadata)
    return Averaged(model_dir, chosen, top, scores)


def _network(config: ModelConfig, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    from ntire.models.build import build_model
    from ntire.models.official import load_weights

    with torch.device("meta"):
        network = build_model(config)
    network = network.to_empty(device="cpu")
    load_weights(network, weights)
    return network.eval()


def _validation_images(config: TrainConfig, say: Callable[[str], None]) -> list[Any]:
    from ntire.errors import DataError
    from ntire.training.inputs import validation_set

    try:
        images = validation_set(config)
    except DataError as e:
        say(f"not validated: {e}")
        return []
    if images is None:
        say("not validated: the run has no validation data")
        return []
    return images
