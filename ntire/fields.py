"""How a config field declares its command-line form (the flags and metavar `ntire.options` reads).

A module of its own, below every config module (ntire.config, ntire.models.config), so each can
declare flags without importing the others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def flag(*names: str, metavar: str | None = None, parse: Callable[[Any, str], Any] | None = None) -> dict[str, Any]:
    """Field metadata for the command line: the short flag(s) a field also answers to besides its
    dotted name (`--batch-size` besides `--data.batch-size`), the value's metavar, and for a value
    no type annotation describes (a tile: `auto` or a number) the `parse(value, where)` of
    ntire.values that reads it, raising ConfigError."""
    return {"flags": names, "metavar": metavar, "parse": parse}
