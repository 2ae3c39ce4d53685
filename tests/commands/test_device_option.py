"""Every command that takes --device answers a bad one with one clear line, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ntire.__main__ import COMMANDS, build_parser

REPO = Path(__file__).resolve().parents[2]

# The least each command needs besides --device; the device is checked before any of it is read.
MINIMAL_ARGS = {
    "upscale": ["--checkpoint", "missing-model", "--scale", "2", "in.png", "out.png"],
    "benchmark": ["--checkpoint", "missing-model", "--root", "."],
    "compare": ["--hr", "missing.png", "--checkpoint", "missing-model", "--scale", "2", "--out", "fig.png"],
    "submit": ["--manifest", "missing.yaml"],
    "average": ["missing-run", "--last", "2"],
}


def commands_with_device() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sorted(name for name, p in sub.choices.items()
                  if any("--device" in a.option_strings for a in p._actions))


def test_the_table_names_every_command_with_a_device_option():
    assert commands_with_device() == sorted(MINIMAL_ARGS)


@pytest.mark.parametrize("name", sorted(MINIMAL_ARGS))
@pytest.mark.parametrize("device", ["foo", "cuda:7"])
def test_bad_device_is_one_line_naming_the_option(name, device, tmp_path):
    assert name in COMMANDS
    run = subprocess.run([sys.executable, "-m", "ntire", name, *MINIMAL_ARGS[name], "--device", device],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""})
    assert run.returncode == 2, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert lines[0].startswith(f"ntire {name}: error: --device {device}:"), lines[0]


def test_resolve_device_accepts_cpu_and_defaults_to_an_available_device():
    import torch

    from ntire.options import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
