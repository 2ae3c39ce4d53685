"""How a config field declares its command-line form (the flags and metavar `ntire.options` reads).

A module of its own, below every config module (ntire.config, ntire.models.config), so each can
declare flags without importing the others.
"""

from __future__ import annotations

from typing import Any


def flag(*names: str, metavar: str | None = None) -> dict[str, Any]:
    """Field metadata for the command line: the short flag(s) a field also answers to besides its
    dotted name (`--batch-size` besides `--data.batch-size`), and the value's metavar."""
    return {"flags": names, "metavar": metavar}
