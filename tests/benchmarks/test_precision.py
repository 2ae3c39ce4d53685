"""benchmarks/precision.py: the PSNR cost of bf16 (and TF32 on CUDA) against fp32 on real photos."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def _benchmark():
    sys.path.insert(0, str(REPO))
    try:
        from benchmarks import precision
    finally:
        sys.path.remove(str(REPO))
    return precision


def test_precision_table_on_cpu_measures_bf16_and_says_tf32_does_not_exist(tmp_path, capsys):
    from ntire.config import ModelConfig
    from ntire.models.build import build_model
    from ntire.models.checkpoint import save_model

    precision = _benchmark()
    config = ModelConfig(kind="edsr", scales=(2,), n_blocks=1, n_feats=8)
    torch.manual_seed(0)
    checkpoint = save_model(tmp_path / "tiny", build_model(config), config)
    assert precision.main(["--checkpoint", str(checkpoint), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "tf32: not measured: TF32 is a mode of NVIDIA tensor cores and does not exist on a CPU" in out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows[1:]] == ["| fp32", "| bf16"]
    assert "| fp32 | 7 | +0.0000 dB | +0.0000 dB" in rows[1]  # the reference against itself
    assert not rows[2].startswith("| bf16 | 7 | +0.0000 dB | +0.0000 dB") and "| 0.00% |" not in rows[2]


def test_precision_without_a_trained_model_says_how_to_make_one(tmp_path, capsys):
    assert _benchmark().main(["--checkpoint", str(tmp_path / "none"), "--device", "cpu"]) == 2
    assert "make demo" in capsys.readouterr().err
