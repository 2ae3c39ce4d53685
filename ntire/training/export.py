"""The trained network out of its training wrappers: a plain fp32 copy, and the exported model
folder (`<output_dir>/model`: safetensors + config.yaml) that inference and submissions read."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ntire.config import TrainConfig, data_name
from ntire.models.build import build_model, unwrap

if TYPE_CHECKING:
    from accelerate import Accelerator

    from ntire.training.validate import Validation


def trained_weights(model: nn.Module, accelerator: Accelerator) -> dict[str, torch.Tensor]:
    """The network's state_dict, gathered from every process under DeepSpeed ZeRO-3 (where all
    processes must call this)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return accelerator.get_state_dict(model)
    return unwrap(model).state_dict()


def fp32_network(model: nn.Module, config: TrainConfig, accelerator: Accelerator, device: Any) -> nn.Module:
    """A plain fp32 copy of the trained network on `device`, outside every training wrapper (DDP,
    DeepSpeed, compile, autocast): what the exported model computes. Every process must call it."""
    weights = trained_weights(model, accelerator)
    with torch.device("meta"):  # no initialisation: no time, and no draw from the RNG
        network = build_model(config.model)
    network = network.to_empty(device=device)
    network.load_state_dict(weights)
    return network


def export_model(model: nn.Module, config: TrainConfig, accelerator: Accelerator, *, step: int,
                 validation: Validation | None, name: str, lineage: str = "") -> Path:
    """Write the trained network to `<output_dir>/model` (safetensors + config.yaml), for
    inference. Every process must call it; the main process writes."""
    from ntire.models.checkpoint import save_model

    model_dir = Path(config.output_dir) / "model"
    network = fp32_network(model, config, accelerator, "cpu")
    if accelerator.is_main_process:
        metadata = {
            "source": "ntire train",
            "run_name": name,
            "step": step,
            "track": config.data.track,
            "data": data_name(config),
            "lineage": lineage,  # which run made it: a later fresh run must not replace it silently
        }
        if validation is not None:
            metadata["valid"] = {k.split("/", 1)[1]: round(v, 4) for k, v in validation.metrics().items()}
        save_model(model_dir, network, config.model, metadata)
    accelerator.wait_for_everyone()
    return model_dir


__all__ = ["export_model", "fp32_network", "trained_weights"]
