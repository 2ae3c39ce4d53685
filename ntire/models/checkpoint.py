"""ntire's own model checkpoints: weights in safetensors with the architecture beside them.

A checkpoint folder holds

    model.safetensors   the state_dict (released key names; mean shifts included)
    config.yaml         `model:` the ModelConfig fields, `metadata:` free-form (source, step, ...)

so a path alone rebuilds the network. `load_model` also accepts the authors' released `.pt`
files and BasicSR's/mmagic's EDSR `.pth` files (`official.py`, `zoo.py`). `init_from` starts a
x3/x4 (or MDSR) model from a trained x2 one, as the paper does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ntire.config import ModelConfig
from ntire.config_io import load_yaml, save_yaml, to_dict
from ntire.errors import CheckpointError, NtireError
from ntire.files import atomic_path
from ntire.models.build import build_model, unwrap
from ntire.models.config import network_of
from ntire.models.networks import NETWORKS
from ntire.models.official import check_weights, load_released, load_weights

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.yaml"
RELEASED_SUFFIXES = (".pt", ".pth")


@dataclass
class SavedModel:
    """Contents of a checkpoint's config.yaml."""

    model: ModelConfig
    """Architecture of the network whose weights lie beside this file."""

    metadata: dict[str, Any] = field(default_factory=dict)
    """Free-form provenance: where the weights came from, training step, scores, ..."""


def save_model(
    directory: str | os.PathLike,
    model: nn.Module,
    config: ModelConfig,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write `model`'s weights and `config` (plus `metadata`) into `directory`; return it.

    Each file is replaced atomically, weights first and config.yaml last, so a reader never sees
    a half-written file. Raises CheckpointError if `model` is not the network `config` describes.
    """
    directory = Path(directory)
    model = unwrap(model)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with torch.device("meta"):  # shapes only: no memory, no init cost even for the 43M EDSR
        reference = build_model(config)
    try:
        check_weights(reference, state)
    except CheckpointError as e:
        raise CheckpointError(
            f"{directory}: the model is not the {config.name} x{config.scales} of its config: {e}"
        ) from None

    saved = SavedModel(model=config, metadata=dict(metadata or {}))
    try:  # fail before writing anything if the metadata cannot be written as YAML
        yaml.safe_dump(to_dict(saved))
    except yaml.YAMLError as e:
        raise CheckpointError(f"{directory}: metadata is not plain YAML data ({e})") from None

    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "model": config.name})
    save_yaml(saved, directory / CONFIG_NAME)
    return directory


def load_model(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    *,
    say: Callable[[str], None] | None = None,
) -> tuple[nn.Module, ModelConfig]:
    """Load (model in eval mode on `map_location`, config) from a checkpoint path.

    `path` may be a checkpoint folder, its `model.safetensors` (config.yaml beside it), or a
    released `.pt`/`.pth` file: the authors' state_dict or a BasicSR/mmagic EDSR file, for which
    `say` (if given) gets one line naming the toolbox and the weights used (`params_ema` over
    `params`). Anything else raises CheckpointError naming the path.
    """
    path = Path(path)
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            hint = "; released .pt files are loaded by their own path" if any(path.glob("*.pt")) else ""
            raise CheckpointError(f"{path}: not a checkpoint folder (no {WEIGHTS_NAME}){hint}")
    elif path.is_file() and path.suffix == ".safetensors":
        weights = path
    elif path.is_file() and path.suffix in RELEASED_SUFFIXES:
        return load_released(path, map_location, say=say)
    elif not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    else:
        raise CheckpointError(
            f"{path}: not a checkpoint: expected a folder with {WEIGHTS_NAME} and {CONFIG_NAME}, "
            f"a .safetensors file, or a released .pt/.pth file (authors', BasicSR or mmagic EDSR)"
        )

    config_path = weights.parent / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(f"{weights}: no {CONFIG_NAME} beside it to say which network it holds")
    try:
        config = load_yaml(SavedModel, config_path).model
    except NtireError as e:
        raise CheckpointError(str(e)) from None

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({e})") from None
    model = build_model(config)
    try:
        load_weights(model, state)
    except CheckpointError as e:
        raise CheckpointError(f"{weights}: does not match {config_path.name} ({config.name}): {e}") from None
    return model.to(map_location).eval(), config


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The `metadata` saved with a checkpoint folder (or its .safetensors file)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    try:
        return load_yaml(SavedModel, folder / CONFIG_NAME).metadata
    except NtireError as e:
        raise CheckpointError(str(e)) from None


@dataclass
class InitReport:
    """What `init_from` copied into the new model and what it left at its fresh initialisation."""

    transferred: list[str]
    """Keys of the new model that received the source's tensor."""

    skipped: list[str]
    """Keys of the new model left as initialised."""

    reasons: dict[str, str] = field(default_factory=dict)
    """Why each skipped key was skipped."""

    def __str__(self) -> str:
        lines = [f"initialised {len(self.transferred)} tensors from the source, skipped {len(self.skipped)}"]
        by_reason: dict[str, list[str]] = {}
        for key in self.skipped:
            by_reason.setdefault(self.reasons.get(key, "skipped"), []).append(key)
        for reason, keys in by_reason.items():
            lines.append(f"  {reason}: {', '.join(keys)}")
        return "\n".join(lines)


def init_from(
    model: nn.Module, config: ModelConfig, source_state_dict: Mapping[str, torch.Tensor]
) -> InitReport:
    """Copy a trained (typically x2) network's weights into `model`, except its upsampler.

    Tensors are matched by role (each network's `role`, ntire/models/network.py), so an EDSR source
    also initialises an MDSR's head, body and final conv (`tail.1` -> `tail.0`). Upsampler tensors
    are never transferred, whatever their shape (the paper retrains them); nor are tensors whose
    shape differs or that the source lacks (e.g. MDSR pre-processing from an EDSR). Raises
    CheckpointError if not even the body was transferred.
    """
    model = unwrap(model)
    own_role = network_of(config.kind).role
    source = _by_role(source_state_dict)
    own = model.state_dict()
    transferred: list[str] = []
    skipped: list[str] = []
    reasons: dict[str, str] = {}
    updates: dict[str, torch.Tensor] = {}
    for key, tensor in own.items():
        role = own_role(key)
        if role.startswith("upsampler."):
            reasons[key] = "upsampler (retrained for the new scale)"
        elif role not in source:
            reasons[key] = "not in the source"
        elif source[role].shape != tensor.shape:
            reasons[key] = f"shape differs (source {tuple(source[role].shape)})"
        else:
            updates[key] = source[role]
            transferred.append(key)
            continue
        skipped.append(key)
    if not any(k.startswith("body.") for k in transferred):
        raise CheckpointError(
            f"cannot initialise {config.name} x{config.scales} from this state_dict: no body tensor "
            f"matches (different depth or width?); {len(skipped)} of {len(own)} keys would be skipped"
        )
    with torch.no_grad():
        for key, value in updates.items():
            own[key].copy_(value)
    return InitReport(transferred=transferred, skipped=skipped, reasons=reasons)


def _by_role(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # A state_dict does not say which network it came from, so each tensor is filed under its own
    # key (a source of the target's layout matches key for key) and under the role every network's
    # layout would give it; a target key looks up its own network's role among these.
    by_role = dict(state_dict)
    for key, value in state_dict.items():
        for network in NETWORKS.values():
            by_role.setdefault(network.role(key), value)
    return by_role


__all__ = ["InitReport", "SavedModel", "init_from", "load_model", "read_metadata", "save_model"]
