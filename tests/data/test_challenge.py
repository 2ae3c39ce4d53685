"""One list of tracks and one of scales, which every config field and check offers."""

from __future__ import annotations

import typing

from ntire.config import SUPPORTED_SCALES, DataConfig
from ntire.data.challenge import SCALES, TRACKS


def test_the_config_offers_exactly_the_challenge_tracks_and_scales():
    assert TRACKS == ("bicubic", "unknown") and SCALES == (2, 3, 4)
    assert typing.get_args(typing.get_type_hints(DataConfig)["track"]) == TRACKS
    assert SUPPORTED_SCALES == SCALES  # the models' check (ntire/models/config.py)


def test_the_manifest_and_the_degradations_use_the_same_lists():
    from ntire.data import degrade, sample
    from ntire.submission import manifest

    assert manifest.TRACKS is TRACKS and degrade.TRACKS is TRACKS and sample.SAMPLE_SCALES is SCALES
