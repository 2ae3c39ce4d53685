"""The training step: one optimizer update over `grad_accum` micro-batches, eager or captured.

On a GPU the step of a small network (EDSR-baseline at the paper's batch: a few hundred small
kernels) is paced by the CPU launching kernels, not by the GPU running them: measured on an H200,
a plain eager step takes 10.4 ms and the same step captured as one CUDA graph 4.1 ms (bf16 +
channels_last). So on CUDA the whole update (forward, L1, backward, clipping, Adam) is captured
once per batch shape and scale and replayed; the data go in through static input buffers, the
learning rate through a device tensor that Adam reads at every replay, and the loss is summed on
the device for the meter to read at log points. Capture needs a capturable optimizer (here fused
Adam, whose step counters live on the device) and no host synchronisation inside the step, which
rules out several processes (DDP's all-reduce), DeepSpeed, fp16 (GradScaler reads its scale on the
host) and torch.compile (its own kernels); those run the eager step, and the run says why.

Written on top of `torch.cuda.graphs` rather than `torch.compile(mode="reduce-overhead")`: the
whole update is one graph, with no compilation (15-20 s per model on the H200) and the same
kernels as eager, so a captured run computes what an eager one does. The loss is `optim.loss`
(ntire.training.losses; L1 as the paper). Whether a run captures, and in which precision and
layout, is decided by ntire.training.setup, which says so in one line.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ntire.config import OptimConfig, TrainConfig
from ntire.errors import CheckpointError
from ntire.models.network import SRNetwork
from ntire.training.losses import make_loss
from ntire.training.setup import StepPlan

if TYPE_CHECKING:
    from accelerate import Accelerator

WARMUP_UPDATES = 3
"""Eager updates of each batch shape before it is captured: cuDNN's benchmark mode picks its
convolution algorithms and Adam creates its state on these, which capture must not do."""


# ---------------------------------------------------------------------------------------------
# Learning rate and optimizer


def learning_rate(optim: OptimConfig, step: int) -> float:
    """The paper's step schedule: `lr`, times `lr_gamma` every `lr_step` updates. A function of the
    update count alone, so a resumed run needs no scheduler state (and unpickles none)."""
    return optim.lr * optim.lr_gamma ** (step // optim.lr_step)


def make_optimizer(model: nn.Module, optim: OptimConfig, *, fused: bool, capturable: bool) -> torch.optim.Adam:
    """The paper's Adam. `fused` (CUDA): one kernel for all parameters. `capturable`: its step
    counters live on the device, so a CUDA graph can replay it (configure_optimizer then puts the
    learning rate there too)."""
    kwargs: dict[str, Any] = {"fused": True} if fused else {}
    return torch.optim.Adam(model.parameters(), lr=optim.lr, betas=optim.betas, eps=optim.eps,
                            weight_decay=optim.weight_decay, capturable=capturable, **kwargs)


def configure_optimizer(optimizer: torch.optim.Optimizer, *, fused: bool, capturable: bool,
                        lr: float, device: torch.device) -> None:
    """Make a (possibly resumed) Adam run as this run needs, at learning rate `lr`: a checkpoint
    carries its writer's flags (a CPU run's step counters on the host, a float lr), which a captured
    step cannot use. A captured step reads the lr from a device tensor that set_lr fills in place."""
    for group in optimizer.param_groups:
        group["fused"] = fused or None
        group["capturable"] = capturable
        group["foreach"] = None
        group["lr"] = torch.tensor(lr, dtype=torch.float32, device=device) if capturable else lr
    on_device = fused or capturable
    for state in optimizer.state.values():
        step = state.get("step")
        if isinstance(step, torch.Tensor):
            state["step"] = step.to(device=device if on_device else "cpu", dtype=torch.float32)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate; a device tensor is filled in place, where a captured step
    reads it (the caller sets it only when the schedule changes it: no kernel per update)."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


# ---------------------------------------------------------------------------------------------
# The step


def model_inputs(lr: torch.Tensor, hr: torch.Tensor, device: torch.device,
                 channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 LR and HR patches as float [0, 255] tensors on `device` (copied from pinned memory
    without blocking when the loader pinned them; already there for a captured step's inputs)."""
    lr = torch.as_tensor(lr).to(device, non_blocking=True).float()
    hr = torch.as_tensor(hr).to(device, non_blocking=True).float()
    if channels_last:
        lr = lr.contiguous(memory_format=torch.channels_last)
    return lr, hr


class WeightAverage:
    """The exponential moving average of the weights (BasicSR's `ema_decay`), updated after every
    update: ema = decay * ema + (1 - decay) * w, in fp32 on the device, in place (a captured step
    updates these very tensors).

    Written here rather than with torch.optim.swa_utils.AveragedModel, whose update reads its
    counter on the host (`if self.n_averaged == 0`) every time: a synchronisation per update,
    which a CUDA graph cannot hold. Parameters only: EDSR/MDSR's buffers are fixed.
    """

    def __init__(self, model: nn.Module, decay: float):
        from ntire.models.build import unwrap

        self.decay = decay
        named = [(n, p) for n, p in unwrap(model).named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.shadow = [p.detach().float().clone(memory_format=torch.preserve_format) for p in self.params]

    def update(self) -> None:
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged parameters by name, on the CPU (what a checkpoint stores)."""
        return {n: t.detach().to("cpu").contiguous() for n, t in zip(self.names, self.shadow, strict=True)}

    def load_state_dict(self, state: dict[str, torch.Tensor], *, where: str = "EMA state") -> None:
        """Restore from `state_dict()`'s output, copying into the tensors in place."""
        if set(state) != set(self.names):
            missing, extra = sorted(set(self.names) - set(state)), sorted(set(state) - set(self.names))
            raise CheckpointError(f"{where}: its tensors do not match the network (missing {missing[:3]}, "
                                  f"unexpected {extra[:3]})")
        for name, tensor in zip(self.names, self.shadow, strict=True):
            tensor.copy_(state[name])

    def weights(self, trained: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`trained` (the network's state_dict) with the averaged parameters in place of its own."""
        averaged = dict(trained)
        for name, tensor in zip(self.names, self.shadow, strict=True):
            averaged[name] = tensor.detach().to(trained[name].device, trained[name].dtype)
        return averaged


class TrainStep:
    """One optimizer update per call, over the micro-batches given; the loss summed on the device.

    `loss_sum` adds up each update's mean loss and `updates` counts them; the meter reads and
    resets both at log points (`take_loss`), so no update waits for the device.
    """

    def __init__(self, model: SRNetwork, optimizer: Any, accelerator: Accelerator, config: TrainConfig):
        self.model = model
        self.optimizer = optimizer
        self.accelerator = accelerator
        self.config = config
        self.device = accelerator.device
        self.loss_fn = make_loss(config.optim.loss, eps=config.optim.loss_eps, rgb_range=config.model.rgb_range)
        self.loss_sum = torch.zeros((), device=self.device)
        self.updates = 0
        self.ema = WeightAverage(model, config.optim.ema_decay) if config.optim.ema_decay > 0 else None

    def __call__(self, micro_batches: Sequence[Any]) -> None:
        """One update: Accelerate's accumulation (no DDP sync before the last micro-batch, each
        loss divided by the count, so the gradients add up to their average: the update equals
        one on all micro-batches at once). Gradients are reset to None, not zero: Adam skips a
        parameter without a gradient, so MDSR's branches for other scales keep their weights and
        Adam moments untouched."""
        accelerator, config = self.accelerator, self.config
        total = torch.zeros((), device=self.device)
        for batch in micro_batches:
            lr, hr = model_inputs(batch.lr, batch.hr, self.device, config.channels_last)
            with accelerator.accumulate(self.model):
                loss = self.loss_fn(self.model(lr, batch.scale), hr)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.optim.grad_clip:
                    accelerator.clip_grad_norm_(self.model.parameters(), config.optim.grad_clip)
                self.optimizer.step()  # Accelerate skips it until the last micro-batch
                self.optimizer.zero_grad(set_to_none=True)
            total += loss.detach()
        if self.ema is not None:
            self.ema.update()
        self.loss_sum += total / len(micro_batches)
        self.updates += 1

    def take_loss(self) -> tuple[torch.Tensor, int]:
        """The summed loss (a new tensor) and the updates it covers since the last call; resets."""
        loss, updates = self.loss_sum.clone(), self.updates
        self.loss_sum.zero_()  # in place: a captured step adds to this very tensor
        self.updates = 0
        return loss, updates

    def peek_loss(self) -> torch.Tensor:
        """The loss summed since the last `take_loss`, without resetting it."""
        return self.loss_sum


Capture = Callable[[Callable[[], None]], Callable[[], None]]
"""Records `body` (which must then not run) and returns what replays it."""


def cuda_graph_capture(optimizer: torch.optim.Optimizer) -> Capture:
    """Capture into a torch.cuda.CUDAGraph. Gradients are set to None first, so that the first
    backward of the graph writes them (into the graph's memory) and every replay does the same:
    a replay needs no zero_grad, and parameters without a gradient (MDSR's other branches) stay
    out of the graph's Adam step."""

    def capture(body: Callable[[], None]) -> Callable[[], None]:
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        # thread_local: the loader's pin-memory thread allocates pinned buffers (cudaHostAlloc)
        # while a capture is under way; in the default "global" mode that call would invalidate
        # the capture and poison the thread. Nothing that thread does belongs in the graph.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            body()
        return graph.replay

    return capture


class CapturedStep(TrainStep):
    """The update as a CUDA graph per batch shape (scale and patch sizes of each micro-batch).

    Each shape's first WARMUP_UPDATES updates run eagerly on a side stream (cuDNN's autotuning,
    Adam's state); the next one captures the body and replays it, and so does every later one. The
    body is the eager step without Accelerate's wrappers (one process, no DeepSpeed, no fp16:
    there is nothing for them to do): the same forward (Accelerate's autocast), the loss divided
    by the micro-batch count, torch's clip_grad_norm_ and the Adam update.

    `capture` is cuda_graph_capture(optimizer) on a GPU; tests pass one that replays eagerly.
    """

    def __init__(self, model: SRNetwork, optimizer: Any, accelerator: Accelerator, config: TrainConfig,
                 *, capture: Capture | None = None, warmup: int = WARMUP_UPDATES):
        super().__init__(model, optimizer, accelerator, config)
        self.inner = getattr(optimizer, "optimizer", optimizer)  # Accelerate's wrapper adds nothing here
        self.capture = capture or cuda_graph_capture(self.inner)
        self.warmup = warmup
        self.inputs: dict[tuple, list[tuple[torch.Tensor, torch.Tensor, int]]] = {}
        self.replays: dict[tuple, Callable[[], None]] = {}
        self.eager_runs: dict[tuple, int] = {}
        self.params = [p for p in model.parameters() if p.requires_grad]

    def __call__(self, micro_batches: Sequence[Any]) -> None:
        key = tuple((b.scale, tuple(b.lr.shape), tuple(b.hr.shape)) for b in micro_batches)
        if key not in self.inputs:
            self.inputs[key] = [
                (torch.empty(b.lr.shape, dtype=torch.uint8, device=self.device),
                 torch.empty(b.hr.shape, dtype=torch.uint8, device=self.device), b.scale)
                for b in micro_batches
            ]
        for (lr, hr, _), batch in zip(self.inputs[key], micro_batches, strict=True):
            # Ordered after the previous replay on the same stream: no race on the static inputs.
            lr.copy_(torch.as_tensor(batch.lr), non_blocking=True)
            hr.copy_(torch.as_tensor(batch.hr), non_blocking=True)
        replay = self.replays.get(key)
        if replay is None:
            runs = self.eager_runs.get(key, 0)
            if runs < self.warmup:
                self._eager(key)
                self.eager_runs[key] = runs + 1
            else:
                replay = self.replays[key] = self.capture(lambda: self._body(key))
        if replay is not None:
            replay()
        self.updates += 1

    def _body(self, key: tuple) -> None:
        inputs = self.inputs[key]
        total = torch.zeros((), device=self.device)
        for lr_u8, hr_u8, scale in inputs:
            lr, hr = model_inputs(lr_u8, hr_u8, self.device, self.config.channels_last)
            loss = self.loss_fn(self.model(lr, scale), hr)
            (loss / len(inputs)).backward()
            total = total + loss.detach()
        if self.config.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.optim.grad_clip, foreach=True)
        self.inner.step()
        if self.ema is not None:
            self.ema.update()
        self.loss_sum.add_(total / len(inputs))

    def _eager(self, key: tuple) -> None:
        stream = _side_stream(self.device)
        with stream, warnings.catch_warnings():
            # Adam warns that a capturable instance runs uncaptured: these updates are meant to.
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            # None before, since a replay leaves its gradients in place (the next replay writes
            # them anew, an eager backward would add to them); None after, for the next capture.
            self.inner.zero_grad(set_to_none=True)
            self._body(key)
            self.inner.zero_grad(set_to_none=True)


def training_step(model: SRNetwork, optimizer: Any, accelerator: Accelerator, config: TrainConfig, plan: StepPlan,
                  *, lr: float) -> TrainStep:
    """The step `plan` says, over a prepared model and optimizer (resumed already, if resuming):
    the optimizer set up for it at learning rate `lr`, captured or eager."""
    configure_optimizer(optimizer, fused=plan.fused_adam, capturable=plan.captured, lr=lr, device=accelerator.device)
    kind = CapturedStep if plan.captured else TrainStep
    return kind(model, optimizer, accelerator, config)


def _side_stream(device: torch.device) -> contextlib.AbstractContextManager:
    """Warm-up on a side stream, as CUDA graph capture wants (lazy initialisations stay off the
    capture stream); the current stream waits for it before and after."""
    if device.type != "cuda":
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def side() -> Iterator[None]:
        main, side_stream = torch.cuda.current_stream(device), torch.cuda.Stream(device)
        side_stream.wait_stream(main)
        with torch.cuda.stream(side_stream):
            yield
        main.wait_stream(side_stream)

    return side()


@contextlib.contextmanager
def conv_autotuning(device: torch.device, enabled: bool = True) -> Iterator[None]:
    """cuDNN's benchmark mode for the fixed patch shape of training (free speed); off again for
    validation, whose every image size would be autotuned anew."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def all_finite(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether every value of every tensor is finite (one host read)."""
    flags = [torch.isfinite(t.detach()).all() for t in tensors]
    return bool(torch.stack(flags).all()) if flags else True


__all__ = ["WARMUP_UPDATES", "CapturedStep", "TrainStep", "WeightAverage", "all_finite", "configure_optimizer",
           "conv_autotuning", "cuda_graph_capture", "learning_rate", "make_optimizer", "model_inputs", "set_lr",
           "training_step"]
