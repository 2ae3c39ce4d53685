"""Typed configuration: dataclasses with a docstring per field, loaded from and saved to YAML.

Variants are made with `dataclasses.replace`; YAML files name fields exactly, and an unknown key is
an error naming it (a typo must never be silently ignored).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from ntire.errors import ConfigError
from ntire.files import atomic_write_text

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)
"""Mean RGB of DIV2K train (0-1), subtracted inside every network."""

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "edsr-baseline": dict(kind="edsr", n_blocks=16, n_feats=64, res_scale=1.0),
    "edsr": dict(kind="edsr", n_blocks=32, n_feats=256, res_scale=0.1),
    "mdsr-baseline": dict(kind="mdsr", n_blocks=16, n_feats=64, res_scale=1.0),
    "mdsr": dict(kind="mdsr", n_blocks=80, n_feats=64, res_scale=1.0),
}
"""The paper's four networks; `ModelConfig.preset` builds a config from one of these names."""

SUPPORTED_SCALES = (2, 3, 4)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one EDSR or MDSR network; everything needed to rebuild it from weights."""

    kind: Literal["edsr", "mdsr"] = "edsr"
    """Network family: `edsr` (one scale) or `mdsr` (shared body, one branch per scale)."""

    scales: tuple[int, ...] = (2,)
    """Upscaling factors. EDSR has exactly one; MDSR one pre-processing and upsampling branch each."""

    n_blocks: int = 16
    """Residual blocks in the body (B in the paper)."""

    n_feats: int = 64
    """Feature channels (F in the paper)."""

    res_scale: float = 1.0
    """Residual scaling applied inside each block (0.1 for the wide EDSR, 1 otherwise)."""

    rgb_range: float = 255.0
    """Pixel range of the network's input and output (the paper uses 0-255)."""

    rgb_mean: tuple[float, float, float] = DIV2K_RGB_MEAN
    """Per-channel mean (0-1) subtracted at the input and added back at the output."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(int(s) for s in self.scales))
        object.__setattr__(self, "rgb_mean", tuple(float(m) for m in self.rgb_mean))
        if self.kind not in ("edsr", "mdsr"):
            raise ConfigError(f"model kind must be 'edsr' or 'mdsr', got {self.kind!r}")
        if not self.scales or any(s not in SUPPORTED_SCALES for s in self.scales):
            raise ConfigError(f"model scales must be drawn from {SUPPORTED_SCALES}, got {self.scales}")
        if len(set(self.scales)) != len(self.scales):
            raise ConfigError(f"model scales repeat: {self.scales}")
        if self.kind == "edsr" and len(self.scales) != 1:
            raise ConfigError(f"an EDSR model has exactly one scale, got {self.scales}")
        if self.n_blocks < 1 or self.n_feats < 1:
            raise ConfigError(f"n_blocks and n_feats must be positive, got {self.n_blocks}, {self.n_feats}")
        if len(self.rgb_mean) != 3:
            raise ConfigError(f"rgb_mean needs 3 values, got {self.rgb_mean}")

    @classmethod
    def preset(cls, name: str, scales: int | tuple[int, ...] | None = None, **overrides: Any) -> "ModelConfig":
        """The paper's network `name` (see MODEL_PRESETS) at `scales` (default 2, MDSR 2, 3, 4)."""
        if name not in MODEL_PRESETS:
            raise ConfigError(f"unknown model {name!r}; choose from {', '.join(MODEL_PRESETS)}")
        fields = dict(MODEL_PRESETS[name])
        if scales is None:
            scales = (2, 3, 4) if fields["kind"] == "mdsr" else (2,)
        elif isinstance(scales, int):
            scales = (scales,)
        fields.update(overrides)
        return cls(scales=tuple(scales), **fields)

    @property
    def name(self) -> str:
        """Short name: the preset this matches (e.g. `edsr-baseline`), else `<kind>-b<B>f<F>`."""
        for preset, fields in MODEL_PRESETS.items():
            if all(getattr(self, k) == v for k, v in fields.items()):
                return preset
        return f"{self.kind}-b{self.n_blocks}f{self.n_feats}"


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
        if args and len(args) == len(value):
            return tuple(_coerce(a, v, where) for a, v in zip(args, value))
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


def load_yaml(cls: type[T], path: str | os.PathLike) -> T:
    """Load dataclass `cls` from a YAML file; errors name the file and the key."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    return from_dict(cls, data, str(path))


def save_yaml(config: Any, path: str | os.PathLike) -> None:
    """Write a dataclass to a YAML file atomically."""
    atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))


__all__ = [
    "DIV2K_RGB_MEAN",
    "MODEL_PRESETS",
    "SUPPORTED_SCALES",
    "ModelConfig",
    "from_dict",
    "load_yaml",
    "save_yaml",
    "to_dict",
]
