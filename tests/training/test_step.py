"""The training step: eager and captured updates agree, accumulate, isolate MDSR branches; the
precision/layout table; the one-line reason a run is eager; the learning rate as a function of the step.

CUDA graph capture itself needs a GPU (benchmarks/gpu checks it there); here the captured step's
logic runs with a capture that replays its body eagerly, exactly as a graph replay would: with the
gradients set to None before each replay, so that its first backward writes them.
"""

from __future__ import annotations

import copy

import pytest
import torch

from ntire.config import build_config
from ntire.data.stream import Batch

TINY_MODEL = {"n_blocks": 1, "n_feats": 8}


def replay_eagerly(optimizer):
    """A Capture for CPU tests: what a CUDA graph replay does, run eagerly."""

    def capture(body):
        def replay():
            optimizer.zero_grad(set_to_none=True)
            body()

        return replay

    return capture


def batch(scale: int, seed: int, n: int = 2, p: int = 8) -> Batch:
    g = torch.Generator().manual_seed(seed)
    lr = torch.randint(0, 256, (n, 3, p, p), dtype=torch.uint8, generator=g)
    return Batch(lr, torch.randint(0, 256, (n, 3, p * scale, p * scale), dtype=torch.uint8, generator=g), scale)


def make_step(kind: str, config, *, optimizer_factory=None):
    """(step, model, optimizer, accelerator) of `kind` "eager" or "captured" on the CPU."""
    from accelerate import Accelerator

    from ntire.models.build import build_model
    from ntire.training.step import CapturedStep, TrainStep

    acc = Accelerator(cpu=True, gradient_accumulation_steps=config.optim.grad_accum)
    torch.manual_seed(0)
    model = build_model(config.model)
    optimizer = (optimizer_factory or (lambda m: torch.optim.Adam(m.parameters(), lr=config.optim.lr)))(model)
    model, optimizer = acc.prepare(model, optimizer)
    if kind == "eager":
        return TrainStep(model, optimizer, acc, config), model, optimizer, acc
    inner = optimizer.optimizer
    return CapturedStep(model, optimizer, acc, config, capture=replay_eagerly(inner), warmup=1), model, optimizer, acc


@pytest.fixture
def finish_accelerators():
    made = []
    yield made
    from ntire.training.distributed import finish

    for acc in made:
        finish(acc)


def test_captured_step_computes_what_the_eager_step_does(finish_accelerators):
    from ntire.training.step import set_lr

    config = build_config(None, {"model": {"kind": "mdsr", "scales": [2, 3], **TINY_MODEL},
                                 "optim": {"grad_accum": 2, "grad_clip": 0.5, "lr": 1e-3}})
    updates = [[batch(2, 1), batch(2, 2)], [batch(3, 3), batch(3, 4)], [batch(2, 5), batch(2, 6)],
               [batch(3, 7), batch(3, 8)], [batch(2, 9), batch(2, 10)], [batch(2, 11), batch(3, 12)]]
    results = {}
    for kind in ("eager", "captured"):
        step, model, optimizer, acc = make_step(kind, config)
        finish_accelerators.append(acc)
        losses = []
        for i, micro in enumerate(updates):
            if i == 3:
                set_lr(optimizer, 5e-4)  # a schedule change reaches every later update
            step(micro)
            loss, n = step.take_loss()
            losses.append(float(loss) / n)
        results[kind] = ({k: v.detach().clone() for k, v in model.state_dict().items()}, losses)
        if kind == "captured":  # each shape warmed up once, then captured and replayed
            assert sorted(step.eager_runs.values()) == [1, 1, 1] and len(step.replays) == 2
    eager, captured = results["eager"], results["captured"]
    assert captured[1] == eager[1]
    for name, value in eager[0].items():
        assert torch.equal(value, captured[0][name]), name  # the same kernels in the same order
    initial = make_step("eager", config)
    finish_accelerators.append(initial[3])
    assert any(not torch.equal(v, initial[1].state_dict()[k]) for k, v in eager[0].items())  # it trained


@pytest.mark.parametrize("kind", ["eager", "captured"])
def test_mdsr_step_leaves_other_scales_and_their_adam_state_untouched(kind, finish_accelerators):
    config = build_config(None, {"model": {"kind": "mdsr", "scales": [2, 3, 4], **TINY_MODEL},
                                 "optim": {"grad_clip": 1.0, "lr": 1e-4}})
    step, model, optimizer, acc = make_step(
        kind, config, optimizer_factory=lambda m: torch.optim.Adam(m.parameters(), lr=1e-4, weight_decay=1e-3))
    finish_accelerators.append(acc)
    for scale in (2, 3, 4, 2, 3, 4):  # every branch moved, with Adam moments; captured ones replay
        step([batch(scale, scale)])
    names = {id(p): n for n, p in model.named_parameters()}
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    states = {names[id(p)]: copy.deepcopy(s) for p, s in optimizer.state.items()}
    assert len(states) == len(params)
    assert all(torch.isfinite(p).all() for p in params.values())  # a NaN would make equality meaningless

    step([batch(3, 30)])  # branch index 1

    def branch(name: str) -> int | None:
        parts = name.split(".")
        return int(parts[1]) if parts[0] in ("pre_process", "upsample") else None

    for name, p in model.named_parameters():
        state = optimizer.state[p]
        if branch(name) in (0, 2):  # x2 and x4: untouched, weights and moments alike
            assert torch.equal(p, params[name]), name
            for key in ("step", "exp_avg", "exp_avg_sq"):
                assert torch.equal(state[key], states[name][key]), (name, key)
        else:  # x3's branch and the shared body moved
            assert not torch.equal(p, params[name]), name
            assert state["step"] == states[name]["step"] + 1, name
    assert any(branch(n) == 1 for n in params)


@pytest.mark.parametrize("kind", ["eager", "captured"])
def test_gradient_accumulation_averages_micro_batches(kind, finish_accelerators):
    # Each micro-batch's loss is divided by the accumulation count: two micro-batches of 2 give the
    # update one batch of 4 gives (not twice it, as summing would).
    from ntire.models.build import build_model

    g = torch.Generator().manual_seed(0)
    lr = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=g)
    hr = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=g)

    def weights_after(micro_batches: list, grad_accum: int) -> dict[str, torch.Tensor]:
        config = build_config(None, {"model": TINY_MODEL, "optim": {"grad_accum": grad_accum}})
        step, model, _, acc = make_step(kind, config, optimizer_factory=lambda m: torch.optim.SGD(m.parameters(),
                                                                                                 lr=1e-3))
        finish_accelerators.append(acc)
        if kind == "captured":
            step.warmup = 0  # straight to the captured body
        step(micro_batches)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    whole = weights_after([Batch(lr, hr, 2)], 1)
    halves = weights_after([Batch(lr[:2], hr[:2], 2), Batch(lr[2:], hr[2:], 2)], 2)
    assert all(torch.allclose(whole[k], halves[k], atol=1e-6) for k in whole)
    # What summed gradients would have given (SGD is linear): twice the step. Not what happened.
    torch.manual_seed(0)
    initial = build_model(build_config(None, {"model": TINY_MODEL}).model).state_dict()
    summed = {k: initial[k] + 2 * (whole[k] - initial[k]) for k in whole}
    assert not all(torch.allclose(summed[k], halves[k], atol=1e-6) for k in whole)


def test_each_reason_to_run_eager_is_one_line():
    from ntire.training.setup import StepPlan, eager_reason

    base = dict(device="cuda", capture=True, processes=1, deepspeed=False, precision="bf16", compiled=False)
    assert eager_reason(**base) is None
    cases = {
        "device": ("cpu", "CUDA graphs need a CUDA device; this run is on cpu"),
        "capture": (False, "--no-capture"),
        "deepspeed": (True, "DeepSpeed"),
        "processes": (2, "2 processes: DDP's gradient all-reduce is not captured"),
        "precision": ("fp16", "fp16's gradient scaler"),
        "compiled": (True, "--compile"),
        "distributed": (True, "wraps the model in DDP"),
    }
    for key, (value, expected) in cases.items():
        reason = eager_reason(**{**base, key: value})
        assert reason is not None and expected in reason and "\n" not in reason, key
    captured = StepPlan(device="cuda", precision="bf16", channels_last=True, captured=True, why="auto: ...",
                        fused_adam=True)
    assert captured.line.startswith("training step: captured as CUDA graphs, bf16 autocast, channels_last")
    assert "cudnn.benchmark, fused Adam" in captured.line
    eager = StepPlan(device="cpu", precision="no", channels_last=False, captured=False, why="why not")
    assert eager.line == "training step: eager, fp32, NCHW (why not)"


def test_no_capture_flag_comes_from_the_config_field():
    import argparse

    from ntire.options import add_train_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    assert config_from_args(parser.parse_args([])).capture is True
    assert config_from_args(parser.parse_args(["--no-capture"])).capture is False


def test_auto_picks_the_measured_fastest_precision_and_layout():
    from ntire.training.setup import choose_setup

    def pick(preset: str, *, device: str = "cuda", processes: int = 1, native: bool = True, distributed: bool = False,
             **overrides):
        config = build_config(None, {"model": {"preset": preset}, **overrides})
        precision, channels_last, why = choose_setup(config, device=device, processes=processes, deepspeed=False,
                                                     native_bf16=lambda: native, distributed=distributed)
        assert why and "\n" not in why
        return precision, channels_last

    assert pick("edsr-baseline") == ("bf16", True)  # captured: bf16 + channels_last wins for both
    assert pick("edsr") == ("bf16", True)
    assert pick("edsr-baseline", processes=2) == ("no", False)  # eager and launch-bound: fp32
    assert pick("edsr-baseline", capture=False) == ("no", False)
    assert pick("edsr-baseline", distributed=True) == ("no", False)  # one DDP process: eager
    assert pick("edsr", processes=2) == ("bf16", True)  # eager but compute-bound: bf16
    assert pick("edsr-baseline", native=False) == ("no", False)
    assert pick("edsr-baseline", device="cpu") == ("bf16", True)
    assert pick("edsr-baseline", device="cpu", native=False) == ("no", False)
    assert pick("edsr-baseline", mixed_precision="no") == ("no", None)  # as configured
    assert pick("edsr", channels_last=False) == ("bf16", False)


def test_training_tflop_counts_every_convolution():
    from ntire.training.setup import training_tflop

    config = build_config(None, {"model": {"preset": "edsr-baseline"}})
    f = 64
    per_lr_pixel = (2 * 3 * f * 9 + 33 * 2 * f * f * 9 + 2 * f * 4 * f * 9  # head, body, upsampler
                    + 4 * 2 * f * 3 * 9 + 2 * 3 * 3 * (1 + 4))  # tail at 2x2 the pixels; mean shifts
    expected = 3 * per_lr_pixel * 48 * 48 * 16 / 1e12
    assert training_tflop(config.model, batch=16, patch=48) == pytest.approx(expected, rel=0.01)
    assert training_tflop(build_config(None, {"model": {"preset": "edsr"}}).model, batch=16, patch=48) > 20 * expected


def test_learning_rate_is_the_paper_step_schedule_of_the_update_count():
    from ntire.config import OptimConfig
    from ntire.training.step import learning_rate

    optim = OptimConfig(lr=1e-4, lr_step=3, lr_gamma=0.5)
    model = torch.nn.Linear(1, 1)
    reference = torch.optim.Adam(model.parameters(), lr=1e-4)
    schedule = torch.optim.lr_scheduler.StepLR(reference, step_size=3, gamma=0.5)
    for step in range(10):
        assert learning_rate(optim, step) == pytest.approx(schedule.get_last_lr()[0], rel=1e-12)
        reference.step()
        schedule.step()


def test_a_resumed_optimizer_is_set_up_for_this_run():
    # A checkpoint written by a GPU run (fused, capturable: step counters on the device) resumed on
    # the CPU, and the other way round, must run as this run needs.
    from ntire.training.step import configure_optimizer, set_lr

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    saved = optimizer.state_dict()
    for group in saved["param_groups"]:
        group.update(fused=True, capturable=True, lr=torch.tensor(1e-3))
    resumed = torch.optim.Adam(model.parameters(), lr=1e-3)
    resumed.load_state_dict(saved)
    configure_optimizer(resumed, fused=False, capturable=False, lr=2e-4, device=torch.device("cpu"))
    group = resumed.param_groups[0]
    assert group["lr"] == 2e-4 and group["capturable"] is False and not group["fused"]
    resumed.step()  # would raise with capturable=True on the CPU

    tensor_lr = torch.optim.Adam(model.parameters(), lr=torch.tensor(1e-3), foreach=False)
    held = tensor_lr.param_groups[0]["lr"]
    set_lr(tensor_lr, 5e-4)
    assert tensor_lr.param_groups[0]["lr"] is held and float(held) == pytest.approx(5e-4)  # filled in place


@pytest.mark.parametrize("kind", ["eager", "captured"])
def test_the_weight_average_follows_every_update(kind, finish_accelerators):
    from ntire.models.build import unwrap

    config = build_config(None, {"model": {"kind": "mdsr", "scales": [2, 3], **TINY_MODEL},
                                 "optim": {"lr": 1e-2, "ema_decay": 0.75}})
    step, model, _, acc = make_step(kind, config)
    finish_accelerators.append(acc)
    expected = {n: p.detach().clone() for n, p in unwrap(model).named_parameters()}
    for i, scale in enumerate((2, 3, 2, 3, 2)):
        step([batch(scale, i)])
        for name, p in unwrap(model).named_parameters():  # every parameter, even a branch not run
            expected[name] = 0.75 * expected[name] + 0.25 * p.detach()
    averaged = step.ema.state_dict()
    assert set(averaged) == set(expected)
    for name, value in expected.items():
        assert torch.allclose(averaged[name], value, rtol=1e-6, atol=1e-7), name
    trained = unwrap(model).state_dict()
    assert not torch.equal(step.ema.weights(trained)["head.0.weight"], trained["head.0.weight"])

    from ntire.errors import CheckpointError

    copy_of = {k: v.clone() for k, v in averaged.items()}
    step.ema.load_state_dict({k: torch.zeros_like(v) for k, v in averaged.items()})
    assert all(float(t.abs().sum()) == 0 for t in step.ema.state_dict().values())
    step.ema.load_state_dict(copy_of)
    with pytest.raises(CheckpointError, match="do not match"):
        step.ema.load_state_dict({"head.0.weight": copy_of["head.0.weight"]})
