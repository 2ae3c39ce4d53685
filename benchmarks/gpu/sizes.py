"""The sizes of one run: the GPU run and the CPU smoke run differ only here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Sizes:
    """Everything whose size differs between the GPU run and the smoke run."""

    model_overrides: dict[str, Any]
    """Applied to every preset (smoke: 1 block of 8 features)."""
    need_s: dict[str, float]
    """Least time left for a section to start (the training section also leaves the later ones theirs)."""
    matmul_n: int
    matmul_reps: int
    copy_mib: int
    ref_side: int
    """LR side of the float64 reference forward passes."""
    grad_batch: int
    grad_patch: int
    tile_image: tuple[int, int]
    """(H, W) LR of the tiled == whole check; larger than a tile plus twice the EDSR overlap."""
    tile: int
    ensemble_image: tuple[int, int]
    images: int
    """Synthetic training images."""
    hr_size: tuple[int, int]
    """(H, W) of every synthetic HR image (DIV2K: 1356 x 2040)."""
    batch: int
    patch: int
    train_models: tuple[str, ...]
    """Presets of the training section (the smoke run's tiny ones would all run the same code)."""
    steps: dict[str, tuple[int, int]]
    """(warm-up, timed) updates per model preset."""
    shuffle_buffer: int
    compile_backend: str | None
    """torch.compile backend forced in this run (None: torch's default, inductor)."""
    mdsr_steps: tuple[int, int]
    infer_hr: tuple[int, int]
    infer_tile: int
    infer_reps: int
    accel_batch: int
    accel_patch: int
    case_s: dict[str, float]
    """Guessed seconds of one training case (plain + fit), per model, and for a compile case."""
    submit_images: int
    """Images per zip of the six-submission run (at least 5 on a GPU, as issue 16 asks)."""
    submit_check_images: int
    """Images per zip compared with the old tiled NCHW path (its x8 ensemble is slow)."""


GPU = Sizes(
    model_overrides={},
    need_s={"environment": 10, "correctness": 30, "training": 40, "mdsr": 10, "inference": 30, "submissions": 120,
            "accelerate": 45},
    matmul_n=8192, matmul_reps=10, copy_mib=1024,
    ref_side=32, grad_batch=2, grad_patch=24,
    tile_image=(240, 300), tile=100, ensemble_image=(64, 80),
    images=16, hr_size=(1356, 2040), batch=16, patch=48,
    train_models=("edsr-baseline", "edsr"), steps={"edsr-baseline": (10, 30), "edsr": (5, 15)},
    shuffle_buffer=256, compile_backend=None,
    mdsr_steps=(2, 5), infer_hr=(1356, 2040), infer_tile=512, infer_reps=2,
    accel_batch=4, accel_patch=24,
    case_s={"edsr-baseline": 10, "edsr": 15, "compile": 30},
    submit_images=5, submit_check_images=1,
)

SMOKE = Sizes(
    model_overrides={"n_blocks": 1, "n_feats": 8},
    need_s={"environment": 2, "correctness": 3, "training": 5, "mdsr": 2, "inference": 2, "submissions": 10,
            "accelerate": 15},
    matmul_n=256, matmul_reps=3, copy_mib=8,
    ref_side=16, grad_batch=2, grad_patch=12,
    tile_image=(40, 52), tile=12, ensemble_image=(20, 24),
    images=4, hr_size=(72, 96), batch=4, patch=16,
    train_models=("edsr-baseline",), steps={"edsr-baseline": (1, 2)}, shuffle_buffer=16, compile_backend="eager",
    mdsr_steps=(1, 2), infer_hr=(72, 96), infer_tile=16, infer_reps=1,
    accel_batch=2, accel_patch=12,
    case_s={"edsr-baseline": 3, "edsr": 3, "compile": 5},
    submit_images=2, submit_check_images=1,
)

