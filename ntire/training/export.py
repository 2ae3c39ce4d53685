"""The exported model folder of a run (`<output_dir>/model`: safetensors + config.yaml), which
inference and submissions read."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from ntire.config import TrainConfig, data_name
from ntire.training.weights import fp32_network

if TYPE_CHECKING:
    from accelerate import Accelerator

    from ntire.training.validate import Validation


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


__all__ = ["export_model"]
