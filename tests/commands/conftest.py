"""Fixtures shared by the command tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny EDSR x2 and MDSR x2/3/4 checkpoint folders (random weights)."""
    from ntire.config import ModelConfig
    from ntire.models.build import build_model
    from ntire.models.checkpoint import save_model

    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for name, config in [
        ("edsr", ModelConfig(kind="edsr", scales=(2,), n_blocks=1, n_feats=8)),
        ("mdsr", ModelConfig(kind="mdsr", scales=(2, 3, 4), n_blocks=1, n_feats=8)),
    ]:
        torch.manual_seed(0)
        out[name] = save_model(root / name, build_model(config), config)
    return out
