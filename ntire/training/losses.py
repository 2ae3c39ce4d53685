"""The training losses, in one table: what `optim.loss` names.

The paper trains with L1 and shows (Table 1) that it beats L2 for PSNR; Charbonnier, a smooth L1
(sqrt(d^2 + eps^2)), is the common third in later SR work. Every loss takes SR and HR as float
tensors on the 0-`rgb_range` scale the networks work in and returns their mean.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def l1(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """Mean absolute error (the paper's)."""
    return F.l1_loss(sr, hr)


def l2(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """Mean squared error."""
    return F.mse_loss(sr, hr)


def charbonnier(eps: float) -> Loss:
    """Mean of sqrt((sr - hr)^2 + eps^2): L1 away from zero, differentiable at it."""

    def loss(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        return torch.sqrt((sr - hr).square() + eps * eps).mean()

    return loss


LOSSES: dict[str, Callable[[float], Loss]] = {
    "l1": lambda eps: l1,
    "l2": lambda eps: l2,
    "charbonnier": charbonnier,
}
"""Each loss by its config name, made from its epsilon in pixel units (used by Charbonnier only)."""


def make_loss(name: str, *, eps: float, rgb_range: float) -> Loss:
    """The loss `name` (a key of LOSSES); `eps` is on the [0, 1] image scale, as papers state it."""
    return LOSSES[name](eps * rgb_range)
