"""Submission fixtures, built once per session: a tiny DIV2K layout, tiny checkpoints, both tracks
built on the test split."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ntire.config import ModelConfig
from ntire.data.degrade import bicubic_downscale, unknown_downscale
from ntire.images import write_png
from ntire.models.build import build_model
from ntire.models.checkpoint import save_model
from ntire.submission.build import RunOptions, build_track
from ntire.submission.manifest import SubmissionManifest, load_manifest

REPO = Path(__file__).resolve().parents[2]
SCALES = (2, 3, 4)
HR_SIZES = {"0801": (48, 60), "0802": (60, 48)}  # (height, width): multiples of 2, 3 and 4
TEST_LR = {"0901": (12, 12), "0902": (12, 18)}  # LR (height, width) of the test split, per x2


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    from skimage import data

    full = data.astronaut() if seed == 0 else data.chelsea()
    return np.ascontiguousarray(full[100 : 100 + h, 120 : 120 + w])


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """A tiny DIV2K layout: valid 0801-0802 (HR + LR), test 0901-0902 (LR only), both tracks."""
    root = tmp_path_factory.mktemp("data")
    base = root / "DIV2K"
    for i, (name, (h, w)) in enumerate(HR_SIZES.items()):
        hr = _photo(h, w, i)
        write_png(base / "DIV2K_valid_HR" / f"{name}.png", hr)
        for track, down in (("bicubic", bicubic_downscale), ("unknown", unknown_downscale)):
            for s in SCALES:
                write_png(base / f"DIV2K_valid_LR_{track}" / f"X{s}" / f"{name}x{s}.png", down(hr, s))
    for i, (name, (h, w)) in enumerate(TEST_LR.items()):
        hr = _photo(h * 2 * 6, w * 2 * 6, i)  # divisible by every scale
        for track, down in (("bicubic", bicubic_downscale), ("unknown", unknown_downscale)):
            for s in SCALES:
                write_png(base / f"DIV2K_test_LR_{track}" / f"X{s}" / f"{name}x{s}.png", down(hr, s))
    return root


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A tiny MDSR for x2-x4 and a tiny EDSR x2, saved in our format."""
    out = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    mdsr = ModelConfig(kind="mdsr", scales=SCALES, n_blocks=1, n_feats=8)
    edsr = ModelConfig(kind="edsr", scales=(2,), n_blocks=1, n_feats=8)
    return {
        "mdsr": save_model(out / "mdsr", build_model(mdsr), mdsr),
        "edsr": save_model(out / "edsr", build_model(edsr), edsr),
    }


@pytest.fixture(scope="session")
def write_manifest(dataset, checkpoints) -> Callable[..., Path]:
    """Writes `tmp/manifest.yaml`: the tiny MDSR on bicubic, the EDSR (x2) and MDSR on unknown."""

    def write(tmp: Path, **extra) -> Path:
        data = {
            "name": "tiny",
            "data": str(dataset),
            "split": "test",
            "tile": None,
            "batch_size": 8,  # the 8 ensemble variants in one forward pass
            "bicubic": {
                "models": [{"checkpoint": str(checkpoints["mdsr"]), "scales": [2, 3, 4], "description": "tiny MDSR"}]
            },
            "unknown": {
                "models": [
                    {"checkpoint": str(checkpoints["edsr"]), "scales": [2], "extra_data": True},
                    {"checkpoint": str(checkpoints["mdsr"]), "scales": [3, 4]},
                ]
            },
        }
        data.update(extra)
        path = tmp / "manifest.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return write


@pytest.fixture(scope="session")
def build(dataset) -> Callable[..., list]:
    """`build(manifest, out, track, split=.., scales=.., **RunOptions fields)` on the tiny dataset."""

    def run(manifest: SubmissionManifest, out: Path, track: str, **kwargs):
        split = kwargs.pop("split", None)
        scales = kwargs.pop("scales", None)
        options = RunOptions(out=out, progress=False, **kwargs)
        return build_track(manifest, track, scales=scales, split=split, data_root=dataset, options=options)

    return run


@pytest.fixture(scope="session")
def built(tmp_path_factory, write_manifest, build):
    """Both tracks built on the test split, once for the session."""
    tmp = tmp_path_factory.mktemp("built")
    manifest = load_manifest(write_manifest(tmp))
    out = tmp / "out"
    results = {t: build(manifest, out, t) for t in ("bicubic", "unknown")}
    return manifest, out, results
