"""The trained network out of its training wrappers (DDP, DeepSpeed, compile, autocast): its
weights, and a plain fp32 copy of it, which validation scores and the export writes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ntire.config import TrainConfig
from ntire.models.build import build_model, unwrap

if TYPE_CHECKING:
    from accelerate import Accelerator


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
