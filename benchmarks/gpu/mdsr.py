"""Section 4, MDSR: one update per scale, and branch isolation (an x3 update leaves x2/x4 untouched)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from typing import Any

from benchmarks.gpu.common import fp32_name, train_flops_per_patch
from benchmarks.gpu.context import Run, free_memory, reset_accelerate
from benchmarks.gpu.report import MEASURED, Section

PAPER_LR = 1e-4
"""EDSR/MDSR's Adam learning rate. A larger one (1e-2 was tried) turns the full MDSR into NaN
within a few updates on random data, and NaN != NaN would fail the isolation check for the wrong reason."""
ADAM_STATE = ("step", "exp_avg", "exp_avg_sq")


def branch(name: str) -> int | None:
    """The scale branch (0, 1, 2 for x2, x3, x4) a parameter of MDSR belongs to; None: shared."""
    parts = name.split(".")
    return int(parts[1]) if parts[0] in ("pre_process", "upsample") else None


def isolation(before: dict[str, Any], states_before: dict[str, dict[str, Any]], after: dict[str, Any],
              states_after: dict[str, dict[str, Any]],
              untouched: Callable[[str], bool]) -> list[tuple[str, bool, str]]:
    """The two isolation checks of one update, as (item, passed, note): the parameters `untouched`
    names kept their weights and Adam state bit for bit, and every other one moved and counted one
    more Adam step. Every weight and Adam moment must be finite first: a NaN fails both checks,
    named, since comparing it would say nothing (NaN != NaN)."""
    import torch

    kept = "x3 update leaves x2/x4 branches' weights and Adam state untouched"
    moved = "x3 update moves the x3 branch and the shared body"
    tensors = {**{f"{n} (before)": t for n, t in before.items()}, **{f"{n} (after)": t for n, t in after.items()}}
    for n, state in {**{f"{k} (before)": v for k, v in states_before.items()},
                     **{f"{k} (after)": v for k, v in states_after.items()}}.items():
        tensors.update({f"{n} {k}": state[k] for k in ADAM_STATE[1:] if k in state})
    bad = [n for n, t in tensors.items() if not bool(torch.isfinite(t).all())]
    if bad:
        note = (f"non-finite values in {len(bad)} of {len(tensors)} weight and Adam-moment tensors, e.g. "
                f"{', '.join(bad[:3])}: the update diverged, nothing compared")
        return [(kept, False, note), (moved, False, note)]
    kept_bad, moved_bad = [], []
    for name, p in after.items():
        state, old = states_after.get(name, {}), states_before.get(name, {})
        if untouched(name):
            same_state = state.keys() == old.keys() and all(torch.equal(state[k], old[k]) for k in state)
            if not (torch.equal(p, before[name]) and same_state):
                kept_bad.append(name)
        elif torch.equal(p, before[name]) or "step" not in state or int(state["step"]) != int(old.get("step", 0)) + 1:
            moved_bad.append(name)
    n_kept = sum(1 for n in after if untouched(n))
    return [
        (kept, not kept_bad, f"changed: {', '.join(kept_bad[:4])}" if kept_bad else
         f"{n_kept} tensors compared bit for bit"),
        (moved, not moved_bad and len(states_before) == len(before),
         f"not moved: {', '.join(moved_bad[:4])}" if moved_bad else f"{len(after) - n_kept} tensors moved"),
    ]


def section_mdsr(run: Run, sec: Section) -> None:
    import torch

    from ntire.config import build_config
    from ntire.data.stream import Batch
    from ntire.models.build import build_model
    from ntire.training.distributed import finish, make_accelerator
    from ntire.training.setup import step_plan
    from ntire.training.step import (
        WARMUP_UPDATES,
        conv_autotuning,
        make_optimizer,
        training_step,
    )

    s = run.sizes
    config = build_config(overrides={
        "model": {"preset": "mdsr", "scales": [2, 3, 4], **s.model_overrides},
        "optim": {"grad_clip": 1.0, "lr": PAPER_LR, "weight_decay": 1e-3},
        "data": {"batch_size": s.batch, "patch_size": s.patch}, "tracking": {"enabled": False}, "mixed_precision": "no",
    })
    reset_accelerate()
    accelerator = make_accelerator(config)
    cleanup = contextlib.ExitStack()
    try:
        # The step as fit() builds it: captured as CUDA graphs (one per scale) on a GPU, else eager.
        torch.manual_seed(0)
        plan = step_plan(config, accelerator, "precision as configured")
        model = build_model(config.model)
        o = config.optim
        optimizer = make_optimizer(model, o, fused=plan.fused_adam, capturable=plan.captured)
        model, optimizer = accelerator.prepare(model, optimizer)
        step_fn = training_step(model, optimizer, accelerator, config, plan, lr=o.lr)
        cleanup.enter_context(conv_autotuning(accelerator.device))  # as fit() trains

        def update(b: Any) -> None:
            step_fn([b])

        sec.notes.append(f"{config.model.name} (scales 2, 3, 4) on {accelerator.device}, {fp32_name(run)}, batch "
                         f"{s.batch}, {s.patch}x{s.patch}, through ntire's training step as fit() builds it "
                         f"(ntire.training.step; grad clip 1.0, Adam at the paper's lr {o.lr:g} with weight decay "
                         f"{o.weight_decay:g}: the paths a missing gradient could upset): {plan.line}")

        def batch(scale: int) -> Any:
            g = torch.Generator().manual_seed(scale)
            lr = torch.randint(0, 256, (s.batch, 3, s.patch, s.patch), dtype=torch.uint8, generator=g)
            hr = torch.randint(0, 256, (s.batch, 3, s.patch * scale, s.patch * scale), dtype=torch.uint8, generator=g)
            return Batch(lr, hr, scale)

        warmup, steps = s.mdsr_steps
        if plan.captured:  # time replays: each scale's eager warm-up and its capture come first
            warmup = max(warmup, WARMUP_UPDATES + 2)
        flops = {k: train_flops_per_patch(run.model_config("mdsr", (k,)), s.patch) for k in (2, 3, 4)}
        for scale in (2, 3, 4):
            b = batch(scale)
            for _ in range(warmup):
                update(b)
            run.clock.sync()
            start = run.clock.mark()
            for _ in range(steps):
                update(b)
            ms = run.clock.ms(start, run.clock.mark()) / steps
            sec.row(item=f"x{scale} update", step_ms=ms, patches_s=s.batch / (ms / 1e3),
                    tflops=flops[scale] * s.batch / (ms / 1e3) / 1e12, figure=MEASURED,
                    note=f"{warmup} warm-up + {steps} timed updates")

        names = {id(p): n for n, p in model.named_parameters()}
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
        states = {names[id(p)]: copy.deepcopy(st) for p, st in optimizer.state.items()}
        update(batch(3))  # branch index 1; a replay when captured
        run.clock.sync()
        after = {n: p.detach() for n, p in model.named_parameters()}
        after_states = {names[id(p)]: st for p, st in optimizer.state.items()}
        checks = isolation(params, states, after, after_states, untouched=lambda n: branch(n) in (0, 2))
        for item, ok, note in checks:
            sec.check(item, ok, figure=MEASURED, note=note)
        del model, optimizer
    finally:
        cleanup.close()
        finish(accelerator)
        free_memory(run)

