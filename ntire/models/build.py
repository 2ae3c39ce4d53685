"""Build a network from its ModelConfig, and the facts about it other code needs."""

from __future__ import annotations

from torch import nn

from ntire.models.config import ModelConfig, network_of


def build_model(config: ModelConfig) -> nn.Module:
    """The network `config` describes (an SRNetwork), freshly initialised (PyTorch defaults)."""
    return network_of(config.kind).build(config)


def receptive_field_radius(config: ModelConfig) -> int:
    """How far, in LR pixels, an output pixel can see from the LR pixel it lies in (the largest
    over the config's scales). Tiles that overlap by at least this much give the same output as
    the whole image. Each network derives its own (e.g. `ntire.models.edsr.receptive_field`)."""
    return network_of(config.kind).receptive_field(config)


def activation_elements_per_pixel(config: ModelConfig, scale: int) -> int:
    """Elements one image of a forward batch at `scale` holds at the pass's peak, per LR pixel of
    its input: the network's own memory model (e.g. `ntire.models.blocks.residual_sr_peak_elements`)."""
    return network_of(config.kind).activation_elements_per_pixel(config, scale)


def count_parameters(model: nn.Module) -> int:
    """Learnable parameters (the fixed mean shifts are buffers and not counted).

    This is the convention of the paper's counts: EDSR x2 has 40,729,603 ("40.7M").
    """
    return sum(p.numel() for p in model.parameters())


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside training wrappers: DDP, DataParallel or DeepSpeed (`.module`) and
    torch.compile (`._orig_mod`).

    Not `accelerator.unwrap_model`, which imports DeepSpeed whenever it is installed (seconds, and
    a warning on every CPU run), and is not needed outside training.
    """
    while True:
        for attr in ("module", "_orig_mod"):
            inner = getattr(model, attr, None)
            if isinstance(inner, nn.Module):
                model = inner
                break
        else:
            return model
