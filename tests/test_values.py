"""The shared value parsers: byte sizes and tile sizes."""

from __future__ import annotations

import pytest

from ntire.errors import ConfigError
from ntire.values import parse_bytes, parse_tile


def test_decimal_units_are_powers_of_1000_and_binary_units_powers_of_1024():
    assert parse_bytes("1000", "--x") == 1000 and parse_bytes(1000, "--x") == 1000
    assert parse_bytes("1G", "--x") == parse_bytes("1GB", "--x") == parse_bytes("1 gb", "--x") == 10**9
    assert parse_bytes("1GiB", "--x") == parse_bytes("1gib", "--x") == 2**30
    assert parse_bytes("64K", "--x") == parse_bytes("64kB", "--x") == 64_000
    assert parse_bytes("64KiB", "--x") == 64 * 2**10
    assert parse_bytes("2M", "--x") == 2 * 10**6 and parse_bytes("2MiB", "--x") == 2 * 2**20
    assert parse_bytes("3T", "--x") == 3 * 10**12 and parse_bytes("3TiB", "--x") == 3 * 2**40
    assert parse_bytes("1.5GiB", "--x") == int(1.5 * 2**30)


@pytest.mark.parametrize("bad", ["", "-1", "1X", "G", "1 GiBs", "1e9", True])
def test_a_bad_size_is_one_line_naming_the_option_or_variable(bad):
    with pytest.raises(ConfigError, match=r"^--shard-size .*not a byte size \(bytes, or a number with a unit") as e:
        parse_bytes(bad, "--shard-size")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"^NTIRE_MEMORY_BUDGET=.*not a byte size"):
        parse_bytes(bad, "NTIRE_MEMORY_BUDGET")


def test_tiles_are_auto_whole_or_a_size():
    assert parse_tile("auto", "--tile") == parse_tile(" Auto ", "--tile") == "auto"
    assert parse_tile("0", "--tile") == 0 == parse_tile(0, "tile") and parse_tile(None, "tile") is None
    assert parse_tile("128", "--tile") == 128 == parse_tile(128, "tile")


@pytest.mark.parametrize("bad", ["-1", -1, "big", "", 1.5, True])
def test_a_bad_tile_is_one_message_naming_the_option(bad):
    with pytest.raises(ConfigError, match=r"^--tile .*: expected auto, 0 \(the whole image\) or a positive number"):
        parse_tile(bad, "--tile")
