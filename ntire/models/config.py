"""The architecture of a network (`ModelConfig`) and the paper's presets.

`kind` names a network in the table of ntire/models/networks.py, which the config checks against
(the table's modules import torch, so it is imported when a config is first checked, not with this
module: `ntire --help` stays fast). Everything else here is plain data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ntire.data.challenge import SCALES
from ntire.errors import ConfigError
from ntire.fields import flag
from ntire.models.network import DIV2K_RGB_MEAN, Network

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "edsr-baseline": dict(kind="edsr", scales=(2,), n_blocks=16, n_feats=64, res_scale=1.0),
    "edsr": dict(kind="edsr", scales=(2,), n_blocks=32, n_feats=256, res_scale=0.1),
    "mdsr-baseline": dict(kind="mdsr", scales=(2, 3, 4), n_blocks=16, n_feats=64, res_scale=1.0),
    "mdsr": dict(kind="mdsr", scales=(2, 3, 4), n_blocks=80, n_feats=64, res_scale=1.0),
}
"""The paper's four networks; `ModelConfig.preset` builds a config from one of these names. Their
`scales` are the default when none are given; any scales keep the preset's name."""

SUPPORTED_SCALES = SCALES
"""The scales a network may serve: the challenge's (ntire.data.challenge)."""


def network_of(kind: str) -> Network:
    """The table's entry for `kind`; ConfigError naming the known kinds if there is none."""
    from ntire.models.networks import NETWORKS

    if kind not in NETWORKS:
        raise ConfigError(f"model kind {kind!r} is not a known network; known: {', '.join(NETWORKS)}")
    return NETWORKS[kind]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one network (EDSR, MDSR, ...); everything needed to rebuild it from weights."""

    kind: str = "edsr"
    """Network family, a key of the table in ntire/models/networks.py: `edsr` (one scale) or `mdsr`
    (shared body, one branch per scale)."""

    scales: tuple[int, ...] = field(default=(2,), metadata=flag("--scale", metavar="S"))
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
        network = network_of(self.kind)
        if not self.scales or any(s not in SUPPORTED_SCALES for s in self.scales):
            raise ConfigError(f"model scales must be drawn from {SUPPORTED_SCALES}, got {self.scales}")
        if len(set(self.scales)) != len(self.scales):
            raise ConfigError(f"model scales repeat: {self.scales}")
        if not network.multi_scale and len(self.scales) != 1:
            raise ConfigError(f"{network.display_name} models have exactly one scale, got {self.scales}")
        if self.n_blocks < 1 or self.n_feats < 1:
            raise ConfigError(f"n_blocks and n_feats must be positive, got {self.n_blocks}, {self.n_feats}")
        if len(self.rgb_mean) != 3:
            raise ConfigError(f"rgb_mean needs 3 values, got {self.rgb_mean}")

    @classmethod
    def preset(cls, name: str, scales: int | tuple[int, ...] | None = None, **overrides: Any) -> ModelConfig:
        """The paper's network `name` (see MODEL_PRESETS) at `scales` (default 2, MDSR 2, 3, 4)."""
        data: dict[str, Any] = {"preset": name, **overrides}
        if scales is not None:
            data["scales"] = (scales,) if isinstance(scales, int) else tuple(scales)
        return cls(**expand_model(data, "model"))

    @property
    def name(self) -> str:
        """Short name: the preset this matches (e.g. `edsr-baseline`), else `<kind>-b<B>f<F>`."""
        for preset, fields in MODEL_PRESETS.items():
            if all(getattr(self, k) == v for k, v in fields.items() if k != "scales"):
                return preset
        return f"{self.kind}-b{self.n_blocks}f{self.n_feats}"


def expand_model(data: Any, where: str) -> Any:
    """Expand `{preset: NAME, ...}` in a model mapping into the preset's explicit fields."""
    if not isinstance(data, dict) or "preset" not in data:
        return data
    data = dict(data)
    name = data.pop("preset")
    if name not in MODEL_PRESETS:
        raise ConfigError(f"{where}.preset: unknown model {name!r}; choose from {', '.join(MODEL_PRESETS)}")
    fields = dict(MODEL_PRESETS[name])
    fields["scales"] = list(fields["scales"])
    fields.update(data)
    return fields
