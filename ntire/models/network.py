"""What every network of ntire declares (`Network`), and the interface training and inference call
it through (`SRNetwork`).

A network module (edsr.py, mdsr.py) holds its class and, beside it, one `Network` value: how to
build it from a ModelConfig and the facts other code needs about it (receptive field for exact
tiling, activation memory for the tile planner, init-from roles, display name). The table in
ntire/models/networks.py maps each `ModelConfig.kind` to these values; adding a network is its
module plus one line there.

This module imports no torch (only for type checking), so the config that validates kinds stays
fast to import.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from torch import Tensor, nn

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)
"""Mean RGB of DIV2K train (0-1), subtracted inside every network."""


class Architecture(Protocol):
    """The fields of a ModelConfig that a network's functions read.

    ntire.models.config.ModelConfig is one. A protocol rather than the class, because the config
    checks its `kind` against the table of networks: a network module importing the config would
    make a cycle.
    """

    @property
    def kind(self) -> str: ...
    @property
    def scales(self) -> tuple[int, ...]: ...
    @property
    def n_blocks(self) -> int: ...
    @property
    def n_feats(self) -> int: ...
    @property
    def res_scale(self) -> float: ...
    @property
    def rgb_range(self) -> float: ...
    @property
    def rgb_mean(self) -> tuple[float, ...]: ...


class SRNetwork(Protocol):
    """What training and inference assume of a network: `net(x, scale)` maps an (N, 3, H, W) batch
    in [0, rgb_range] to (N, 3, scale*H, scale*W), for each scale in `scales`, each image
    independently of the others (tiling and batching rely on it); it is an nn.Module (parameters,
    state_dict, train/eval). Wrappers (DDP, torch.compile) forward the call unchanged."""

    scales: tuple[int, ...]

    def forward(self, x: Tensor, scale: int) -> Tensor: ...

    def __call__(self, x: Tensor, scale: int) -> Tensor: ...


def same_role(key: str) -> str:
    """The role of a state_dict key that needs no renaming: the key itself."""
    return key


def tail_roles(*, upsampler: str, final: str) -> Callable[[str], str]:
    """A `role` for a network whose upsampler keys match the regular expression `upsampler` and
    whose final conv's match `final` (each with one group: the rest of the key): those become
    `upsampler.<rest>` and `final.<rest>`, every other key stays as it is."""
    upsampler_re, final_re = re.compile(upsampler), re.compile(final)

    def role(key: str) -> str:
        if m := upsampler_re.fullmatch(key):
            return f"upsampler.{m.group(1)}"
        if m := final_re.fullmatch(key):
            return f"final.{m.group(1)}"
        return key

    return role


@dataclass(frozen=True)
class Network:
    """One network family: its builder and the facts about it that other code needs."""

    display_name: str
    """How figures and messages spell it (`EDSR`); a preset's suffix is appended (`EDSR-baseline`)."""

    build: Callable[[Architecture], nn.Module]
    """A fresh network (PyTorch's default initialisation) for a config of this kind; an SRNetwork."""

    receptive_field: Callable[[Architecture], int]
    """How far, in LR pixels, an output pixel can see from the LR pixel it lies in (for MDSR-like
    networks the largest over the scales). Tiles overlapping by this much give the whole image's
    output exactly (ntire.inference)."""

    activation_elements_per_pixel: Callable[[Architecture, int], int]
    """Elements one image of a forward batch holds at the pass's peak, per LR pixel of its input,
    at a scale: the tile planner's memory model (ntire.inference multiplies by the element size)."""

    role: Callable[[str], str] = same_role
    """A state_dict key's name by what it does, so `init_from` can match networks of different
    layouts: `upsampler.*` for scale-specific tensors (never transferred: retrained for the new
    scale), `body.*` for the body (which must transfer), anything else as it is."""

    multi_scale: bool = False
    """Serves several scales at once with one branch per scale (MDSR): a batch of one scale leaves
    the other branches unused. False: a config of this kind has exactly one scale."""
