"""Dataclass configs as plain data and YAML, with errors that name the file and the key: the one
YAML reader (`read_yaml`), `to_dict`/`from_dict` (types checked and coerced field by field),
layering (`merge`, `--set KEY=VALUE` by `parse_set`), flat tracking params (`flatten`) and the
walker over every option of a config class (`options`, with each field's docstring), from which
ntire.options derives the command-line flags. The configs themselves live in ntire.config (and
the model's in ntire.models.config).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from ntire.errors import ConfigError, one_line
from ntire.files import atomic_write_text

T = TypeVar("T")


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass as plain YAML-safe data (tuples become lists)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, Path):
            return str(value)
        return value

    return plain(config)


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass `cls` from plain data, recursing into nested dataclasses.

    Unknown keys raise ConfigError naming `where` and the key; values are coerced to the field's
    annotated type where that is unambiguous (lists to tuples, ints to floats).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
    kwargs = {name: _coerce(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        candidates = [a for a in args if a is not type(None)]
        if len(candidates) == 1:
            # Optional[X]: X's own error says more than "does not fit X | None".
            return _coerce(candidates[0], value, where)
        for arg in candidates:
            try:
                return _coerce(arg, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not fit {hint}")
    if origin is tuple and isinstance(value, (list, tuple)):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, where) for v in value)
        if args and len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {list(value)!r}")
        if args:
            return tuple(_coerce(a, v, where) for a, v in zip(args, value, strict=True))
        return tuple(value)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads 1e-4 (no dot) as a string
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def read_yaml(path: str | os.PathLike, what: str = "a mapping of settings") -> dict[str, Any]:
    """The mapping in the YAML file `path` (empty file: {}); errors name the file.

    The one YAML reader of ntire: configs, search spaces, submission manifests, training states
    and model folders all come through it, so every bad file gets the same kind of message.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid YAML ({one_line(e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected {what}, got {type(data).__name__}")
    return data


def load_yaml(cls: type[T], path: str | os.PathLike) -> T:
    """Load dataclass `cls` from a YAML file; errors name the file and the key."""
    return from_dict(cls, read_yaml(path), str(path))


def save_yaml(config: Any, path: str | os.PathLike) -> None:
    """Write a dataclass to a YAML file atomically."""
    atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))


@dataclass(frozen=True)
class Option:
    """One config field as the command line and sweeps see it."""

    path: str
    """Dotted name, e.g. `data.batch_size`."""
    hint: Any
    """The field's type annotation, resolved."""
    default: Any
    """Its default value."""
    doc: str
    """Its docstring, on one line."""
    flags: tuple[str, ...] = ()
    """Short flags declared with `flag(...)`, besides the dotted one."""
    metavar: str | None = None
    parse: Any = None
    """The `parse(value, where)` declared with `flag(...)` that reads the value (ntire.values)."""


def options(cls: type, prefix: str = "") -> list[Option]:
    """Every leaf field of the config dataclass `cls` (e.g. TrainConfig), nested ones dotted."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    out: list[Option] = []
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            out.extend(options(hints[f.name], f"{path}."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        meta = f.metadata or {}
        out.append(Option(path, hints[f.name], default, docs.get(f.name, ""), tuple(meta.get("flags", ())),
                          meta.get("metavar"), meta.get("parse")))
    return out


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of dataclass `cls`, read from its source.

    Python keeps no attribute docstrings at run time; reading them from the source (as Sphinx and
    jsonargparse do) is what lets the docstring be the one definition of an option's help.
    """
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):  # no source (e.g. a frozen application): no help texts
        return {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, after in zip(body, body[1:], strict=False):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively overlay `override` on `base` (mappings merge, anything else replaces)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """`["optim.lr=2e-4", "data.patch_size=32"]` as a nested mapping; values are YAML scalars."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. optim.lr=2e-4")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({e})") from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is set both as a value and a section")
        node[parts[-1]] = value
    return out


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """A config as flat `section.field -> value` pairs (for tracking params)."""
    data = to_dict(config) if dataclasses.is_dataclass(config) else config
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
