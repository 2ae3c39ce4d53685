"""Options every command spells the same way: submit's flags from its dataclass fields, one track
and one scale list, one tile option with `auto`."""

from __future__ import annotations

import argparse

import pytest

from ntire.__main__ import build_parser
from ntire.config_io import options
from ntire.data.challenge import SCALES, TRACKS
from ntire.errors import ConfigError
from ntire.options import options_from_args
from ntire.submission.options import SubmitOptions, ZipCheckOptions


def command(name: str, *more: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for part in (name, *more):
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[part]
    return parser


def actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {name: a for a in parser._actions for name in a.option_strings}


def test_every_submit_field_is_a_flag_whose_help_is_its_docstring():
    by_dest = {a.dest: a for a in command("submit")._actions}
    fields = [o for cls in (SubmitOptions, ZipCheckOptions) for o in options(cls)]
    for option in fields:
        assert by_dest[option.path].help.startswith(option.doc), option.path
    assert set(by_dest) - {o.path for o in fields} == {"help", "device", "precision"}


def test_the_submit_flags_users_type_still_work():
    p = command("submit")
    args = p.parse_args(["--manifest", "m.yaml", "--track", "bicubic", "unknown", "--scales", "2", "4",
                         "--split", "valid", "--data", "d", "--out", "o", "--no-self-ensemble", "--tile", "0",
                         "--max-batch", "2", "--io-workers", "3", "--no-compare", "--no-mlflow",
                         "--tracking-uri", "sqlite:///x.db", "--no-progress", "--device", "cpu", "--precision", "fp32"])
    assert options_from_args(SubmitOptions, args) == SubmitOptions(
        manifest="m.yaml", track=("bicubic", "unknown"), scales=(2, 4), split="valid", data="d", out="o",
        self_ensemble=False, tile=0, max_batch=2, io_workers=3, compare=False, mlflow=False,
        tracking_uri="sqlite:///x.db", progress=False)
    assert (args.device, args.precision) == ("cpu", "fp32")
    check = p.parse_args(["--check", "z.zip", "--lr", "lr", "--scale", "3", "--partial"])
    assert options_from_args(ZipCheckOptions, check) == ZipCheckOptions(check="z.zip", lr="lr", scale=3, partial=True)
    assert options_from_args(SubmitOptions, p.parse_args([])) == SubmitOptions()
    assert options_from_args(SubmitOptions, p.parse_args(["--self-ensemble"])).self_ensemble is True
    with pytest.raises(ConfigError, match="^--io-workers must be a positive integer, got 0$"):
        options_from_args(SubmitOptions, p.parse_args(["--io-workers", "0"]))


@pytest.mark.parametrize("where", [("train",), ("submit",), ("degrade",), ("data", "shard"), ("data", "check")])
def test_every_track_option_offers_the_challenge_tracks(where):
    assert tuple(actions(command(*where))["--track"].choices) == TRACKS


@pytest.mark.parametrize("where", [("submit",), ("benchmark",), ("data", "shard"), ("data", "check")])
def test_every_scales_option_offers_the_challenge_scales(where):
    assert tuple(actions(command(*where))["--scales"].choices) == SCALES


TILED = [("upscale",), ("compare",), ("benchmark",), ("submit",)]


@pytest.mark.parametrize("where", TILED)
def test_every_tile_option_takes_auto_and_defaults_to_it(where):
    tile = actions(command(*where))["--tile"]
    assert tile.type("auto") == "auto" and tile.type("0") == 0 and tile.type("96") == 96
    assert tile.default == ("auto" if where != ("submit",) else None)  # submit: the manifest's, itself auto


@pytest.mark.parametrize("where", TILED)
def test_every_tile_option_refuses_a_bad_size_with_one_message(where, capsys):
    parser = command(*where)
    with pytest.raises(SystemExit):
        parser.parse_args(["--tile", "-2"])
    assert "argument --tile: '-2': expected auto, 0 (the whole image) or a positive number of LR pixels" in (
        capsys.readouterr().err)


def test_shard_size_takes_explicit_units_and_names_itself_when_bad(capsys):
    shard = command("data", "shard")
    base = ["--root", "r", "--out", "o"]
    assert shard.parse_args([*base, "--shard-size", "1G"]).shard_size == 10**9
    assert shard.parse_args([*base, "--shard-size", "1GiB"]).shard_size == 2**30
    assert shard.parse_args(base).shard_size == 256 * 2**20
    assert "KiB, MiB, GiB, TiB are 2^10..2^40" in actions(shard)["--shard-size"].help
    with pytest.raises(SystemExit):
        shard.parse_args([*base, "--shard-size", "1Gb/s"])
    assert "argument --shard-size: '1Gb/s': not a byte size" in capsys.readouterr().err
