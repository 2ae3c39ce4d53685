"""Search spaces: the YAML files that say which training config fields a sweep draws, and how.

A search space names config fields (dotted paths or nested sections): a plain value fixes the
field for every trial, a one-key mapping `{DISTRIBUTION: ARGS}` samples it (see DISTRIBUTIONS).
For example

    optim.lr: {loguniform: [1.0e-4, 1.0e-3]}
    model: {n_feats: {choice: [8, 16]}, n_blocks: 2}

This module parses such a space, checks it against a training config before any trial starts
(errors name the file and the field), and applies drawn values to a TrainConfig.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from ntire.config import CONFIG_DIR, TrainConfig, resolve_shipped
from ntire.config_io import from_dict, options, read_yaml
from ntire.errors import ConfigError

SPACE_DIR = CONFIG_DIR / "spaces"
"""The search spaces shipped with the package (`--space tiny` finds `tiny.yaml` here)."""

# What trial_config sets for every trial itself; a space may not sweep or fix these.
RESERVED = ("output_dir", "resume", "progress", "save_every", "keep_last", "tracking.uri", "tracking.run_name")


@dataclass(frozen=True)
class Distribution:
    """One way of drawing a value, as a search space names it."""

    build: Callable[..., Any]
    """Makes the Ray Tune domain from the YAML arguments."""

    arity: int | None
    """Number of arguments; None: one list of values."""

    usage: str
    """The arguments, for error messages."""


DISTRIBUTIONS: dict[str, Distribution] = {
    "uniform": Distribution(tune.uniform, 2, "[low, high]"),
    "quniform": Distribution(tune.quniform, 3, "[low, high, q]"),
    "loguniform": Distribution(tune.loguniform, 2, "[low, high]"),
    "qloguniform": Distribution(tune.qloguniform, 3, "[low, high, q]"),
    "randn": Distribution(tune.randn, 2, "[mean, sd]"),
    "randint": Distribution(tune.randint, 2, "[low, high] (high excluded)"),
    "qrandint": Distribution(tune.qrandint, 3, "[low, high, q] (high included)"),
    "lograndint": Distribution(tune.lograndint, 2, "[low, high] (high excluded)"),
    "choice": Distribution(tune.choice, None, "[value, value, ...]"),
    "grid": Distribution(tune.grid_search, None, "[value, value, ...] (each value num-samples times)"),
}
"""The distributions a search space may name: Ray Tune's sampling functions of the same names
(`grid` is tune.grid_search)."""


@dataclass(frozen=True)
class SpaceEntry:
    """One config field of a search space: fixed to a value or drawn from a distribution."""

    path: str
    """Dotted config field, e.g. `optim.lr`."""

    kind: str
    """A name in DISTRIBUTIONS, or `fixed`."""

    args: tuple[Any, ...]
    """The distribution's arguments (for `choice`/`grid`: the values; for `fixed`: the value)."""

    def domain(self) -> Any:
        """The Ray Tune domain (or grid) to sample this field from."""
        dist = DISTRIBUTIONS[self.kind]
        return dist.build(list(self.args)) if dist.arity is None else dist.build(*self.args)

    def probes(self) -> list[Any]:
        """Values this entry can take that are worth validating up front (bounds, every choice)."""
        if self.kind == "fixed":
            return [self.args[0]]
        if self.kind in ("choice", "grid"):
            return list(self.args)
        if self.kind in ("randint", "lograndint"):
            return [self.args[0], self.args[1] - 1]
        if self.kind == "randn":
            return []
        return [self.args[0], self.args[1]]


@dataclass(frozen=True)
class SearchSpace:
    """A parsed search space file."""

    entries: tuple[SpaceEntry, ...]
    source: str
    """Where it came from (file path), for messages."""

    @property
    def fixed(self) -> dict[str, Any]:
        """Fields set to the same value in every trial."""
        return {e.path: e.args[0] for e in self.entries if e.kind == "fixed"}

    @property
    def sampled(self) -> tuple[SpaceEntry, ...]:
        """Fields drawn per trial."""
        return tuple(e for e in self.entries if e.kind != "fixed")

    def param_space(self) -> dict[str, Any]:
        """Ray Tune's `param_space`: dotted field -> domain."""
        return {e.path: e.domain() for e in self.sampled}

    def trials(self, num_samples: int) -> int:
        """Trials a sweep of `num_samples` runs: each grid combination `num_samples` times."""
        grid = math.prod(len(e.args) for e in self.sampled if e.kind == "grid")
        return num_samples * grid

    def to_data(self) -> dict[str, Any]:
        """The space as YAML-ready data (dotted keys), which `parse_space` reads back."""
        return {e.path: (e.args[0] if e.kind == "fixed" else {e.kind: list(e.args)}) for e in self.entries}


def resolve_space_path(name: str | os.PathLike) -> Path:
    """A search space file path, or the name of a shipped one (`tiny`, `paper.yaml`)."""
    return resolve_shipped(name, SPACE_DIR, "search space file", "spaces")


def load_space(name: str | os.PathLike, base: TrainConfig | None = None) -> SearchSpace:
    """Read a search space file (or shipped name); with `base`, check every field and value
    against that training config (errors name the file and the field)."""
    path = resolve_space_path(name)
    space = parse_space(read_yaml(path, "a mapping of config fields"), str(path))
    if base is not None:
        check_space(space, base)
    return space


def parse_space(data: Any, where: str = "space") -> SearchSpace:
    """A search space from plain data: dotted keys or nested sections; plain values are fixed,
    one-key mappings `{distribution: args}` are sampled."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of config fields, got {type(data).__name__}")
    entries = [_entry(path, value, where) for path, value in _flatten_space(data, "", where)]
    if not any(e.kind != "fixed" for e in entries):
        raise ConfigError(f"{where}: nothing to sweep; give at least one field a distribution, "
                          f"e.g. optim.lr: {{loguniform: [1.0e-4, 1.0e-3]}}")
    seen: set[str] = set()
    for e in entries:
        if e.path in seen:
            raise ConfigError(f"{where}: {e.path} is given twice")
        seen.add(e.path)
    return SearchSpace(tuple(entries), where)


def _flatten_space(data: dict, prefix: str, where: str) -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{where}: field names must be text, got {key!r}")
        path = f"{prefix}{key}"
        if isinstance(value, dict) and not _is_distribution(value):
            if not value:
                raise ConfigError(f"{where}: {path} is an empty section")
            yield from _flatten_space(value, f"{path}.", where)
        else:
            yield path, value


def _is_distribution(value: dict) -> bool:
    return len(value) == 1 and next(iter(value)) in DISTRIBUTIONS


def _entry(path: str, value: Any, where: str) -> SpaceEntry:
    if not isinstance(value, dict):
        return SpaceEntry(path, "fixed", (value,))
    (kind, args), = value.items()
    usage, arity = DISTRIBUTIONS[kind].usage, DISTRIBUTIONS[kind].arity
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}: {path}: {kind} takes a list {usage}, got {args!r}")
    if arity is None:
        return SpaceEntry(path, kind, tuple(args))
    if len(args) != arity:
        raise ConfigError(f"{where}: {path}: {kind} takes {usage}, got {args!r}")
    numbers = []
    for a in args:
        try:
            # YAML reads 1e-4 (no dot) as text; every ranged distribution takes numbers.
            number = float(a) if not isinstance(a, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise ConfigError(f"{where}: {path}: {kind} takes numbers {usage}, got {args!r}")
        numbers.append(int(number) if kind.endswith("randint") else number)
    if kind != "randn" and not numbers[0] < numbers[1]:
        raise ConfigError(f"{where}: {path}: {kind} needs low < high, got {args!r}")
    if kind.startswith("log") or kind.startswith("qlog"):
        if numbers[0] <= 0:
            raise ConfigError(f"{where}: {path}: {kind} needs a positive low bound, got {args!r}")
    return SpaceEntry(path, kind, tuple(numbers))


def check_space(space: SearchSpace, base: TrainConfig) -> None:
    """Refuse unknown or reserved fields, and values the training config would refuse."""
    known = [o.path for o in options(TrainConfig)]
    sections = {p.rsplit(".", i)[0] for p in known for i in range(1, p.count(".") + 1)}
    for e in space.entries:
        if e.path in sections:
            raise ConfigError(f"{space.source}: {e.path} is a section; sweep its fields ({e.path}.FIELD)")
        parent, _, last = e.path.rpartition(".")
        if parent in known:
            raise ConfigError(f"{space.source}: {parent}: unknown distribution {last!r}; "
                              f"choose from {', '.join(DISTRIBUTIONS)}")
        if e.path not in known:
            near = ", ".join(p for p in known if p.rsplit(".", 1)[-1] == e.path.rsplit(".", 1)[-1])
            hint = f" (did you mean {near}?)" if near else ""
            raise ConfigError(f"{space.source}: {e.path}: no such training config field{hint}")
        if e.path in RESERVED:
            raise ConfigError(f"{space.source}: {e.path} is set by ntire tune for each trial; leave it out")
        if e.path == "max_steps" and e.kind != "fixed":
            raise ConfigError(f"{space.source}: max_steps cannot be swept (it is every trial's step budget, "
                              "which ASHA divides into rungs); fix it instead")
        for value in e.probes():
            try:
                apply_params(base, {e.path: value})
            except ConfigError as err:
                raise ConfigError(f"{space.source}: {e.path}: value {value!r} is refused: {err}") from None


def apply_params(config: TrainConfig, params: Mapping[str, Any]) -> TrainConfig:
    """`config` with the dotted fields in `params` replaced (nested `dataclasses.replace`).

    Values are checked and coerced as a YAML config file's would be (numbers to the field's type,
    lists to tuples, literals checked), and the config's own validation runs.
    """
    for path, value in params.items():
        config = _replace(config, path.split("."), value, path)
    return config


def _replace(obj: Any, parts: list[str], value: Any, path: str) -> Any:
    name = parts[0]
    if not dataclasses.is_dataclass(obj) or name not in {f.name for f in dataclasses.fields(obj)}:
        raise ConfigError(f"{path}: no such training config field")
    if len(parts) > 1:
        return dataclasses.replace(obj, **{name: _replace(getattr(obj, name), parts[1:], value, path)})
    hint = typing.get_type_hints(type(obj))[name]
    if dataclasses.is_dataclass(hint):
        raise ConfigError(f"{path}: is a section; sweep its fields ({path}.FIELD)")
    # Read the value exactly as a config file's value is read (a one-field dataclass through
    # from_dict): numpy scalars from Ray's samplers become Python numbers first.
    leaf = dataclasses.make_dataclass("Field", [("value", hint)])
    coerced = from_dict(leaf, {"value": _python(value)}, path).value
    try:
        return dataclasses.replace(obj, **{name: coerced})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path}: {e}") from None


def _python(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_python(v) for v in value]
    item = getattr(value, "item", None)  # numpy scalars
    return item() if callable(item) and not isinstance(value, (str, bytes)) else value
