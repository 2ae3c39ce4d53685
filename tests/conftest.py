"""Shared test fixtures. Tests run on 2 CPU cores: tiny models, tiny images, no network."""

from __future__ import annotations

import os

# Keep every test process (and the processes it spawns) from oversubscribing the two cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def photo() -> np.ndarray:
    """A real photograph (scikit-image's astronaut), 512x512 RGB uint8."""
    from skimage import data

    return data.astronaut()
