"""The loss table: each loss's value, the config's choices are the table's keys, a run trains with each."""

from __future__ import annotations

import typing

import pytest
import torch

from ntire.config import OptimConfig, build_config
from ntire.errors import ConfigError


def test_each_loss_computes_its_formula():
    from ntire.training.losses import make_loss

    sr = torch.tensor([0.0, 10.0, 250.0])
    hr = torch.tensor([3.0, 10.0, 246.0])
    assert float(make_loss("l1", eps=1e-3, rgb_range=255)(sr, hr)) == pytest.approx(7 / 3)
    assert float(make_loss("l2", eps=1e-3, rgb_range=255)(sr, hr)) == pytest.approx(25 / 3)
    eps = 1e-3 * 255  # stated on [0, 1] images, applied on 0-255 ones
    expected = (torch.sqrt(torch.tensor([9.0, 0.0, 16.0]) + eps**2)).mean()
    charbonnier = make_loss("charbonnier", eps=1e-3, rgb_range=255)
    assert float(charbonnier(sr, hr)) == pytest.approx(float(expected))
    x = torch.zeros(4, requires_grad=True)
    charbonnier(x, torch.zeros(4)).backward()
    assert torch.isfinite(x.grad).all()  # differentiable at zero, unlike a bare sqrt


def test_the_config_offers_exactly_the_tables_losses():
    from ntire.training.losses import LOSSES

    choices = typing.get_args(typing.get_type_hints(OptimConfig)["loss"])
    assert set(choices) == set(LOSSES)
    with pytest.raises(ConfigError, match="loss"):
        build_config(None, {"optim": {"loss": "l3"}})
    with pytest.raises(ConfigError, match="loss_eps"):
        build_config(None, {"optim": {"loss": "charbonnier", "loss_eps": 0}})


@pytest.mark.parametrize("loss", ["l2", "charbonnier"])
def test_a_step_trains_with_the_configured_loss(loss):
    from accelerate import Accelerator

    from ntire.data.stream import Batch
    from ntire.models.build import build_model
    from ntire.training.distributed import finish
    from ntire.training.step import TrainStep

    config = build_config(None, {"model": {"n_blocks": 1, "n_feats": 8}, "optim": {"loss": loss, "lr": 1e-3}})
    acc = Accelerator(cpu=True)
    try:
        torch.manual_seed(0)
        model = build_model(config.model)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        model, optimizer = acc.prepare(model, optimizer)
        step = TrainStep(model, optimizer, acc, config)
        g = torch.Generator().manual_seed(0)
        lr = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8, generator=g)
        hr = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8, generator=g)
        with torch.no_grad():
            out = model(lr.float(), 2)
        expected = step.loss_fn(out, hr.float())
        step([Batch(lr, hr, 2)])
        total, n = step.take_loss()
        assert n == 1 and float(total) == pytest.approx(float(expected), rel=1e-5)  # the configured loss
        l1 = torch.nn.functional.l1_loss(out, hr.float())
        assert abs(float(total) - float(l1)) > 1e-3  # and not L1 (Charbonnier is close to it, not equal)
    finally:
        finish(acc)
