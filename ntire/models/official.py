"""Load the authors' released checkpoints (e.g. `edsr_x4-4f62e9ef.pt`) by path alone, and
BasicSR's and mmagic's EDSR files (`EDSR_Lx4_f256b32_DIV2K_official-76ee1c8f.pth`), which
`zoo.py` recognises by their contents and rewrites into the released layout first.

A released file is a plain state_dict; the architecture is read off the tensors: the family from
the key layout, F from the head conv, B from the body's block indices, each scale from its
upsampler's convs. The residual scale cannot be read off the weights: following the authors (and
BasicSR's official EDSR configs), it is 0.1 for F=256 and 1 otherwise. Files are opened with
`torch.load(weights_only=True)`, which refuses anything but tensors and plain containers, so a
hostile pickle never runs code.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ntire.config import DIV2K_RGB_MEAN, ModelConfig
from ntire.errors import CheckpointError, ConfigError
from ntire.models.build import build_model
from ntire.models.zoo import ZooFile, identify_other_network, read_zoo_file

# Prefixes that wrappers add to every key (DataParallel/DDP, torch.compile, a `model` attribute).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


def infer_config(state_dict: Mapping[str, torch.Tensor]) -> ModelConfig:
    """The ModelConfig of the EDSR/MDSR network whose released-layout state_dict this is.

    Raises CheckpointError saying what is missing or inconsistent.
    """
    sd = _plain_state_dict(state_dict)
    other = identify_other_network(list(sd))
    if other:  # no key of the EDSR/MDSR layouts matches these markers
        raise CheckpointError(f"a state_dict of {other}, not EDSR/MDSR; ntire loads EDSR/MDSR networks only")
    if "head.0.weight" not in sd:
        raise CheckpointError(f"no 'head.0.weight': not an EDSR/MDSR state_dict (keys: {_some(sd)})")
    head = sd["head.0.weight"]
    if head.ndim != 4 or head.shape[1] != 3:
        raise CheckpointError(f"'head.0.weight' has shape {tuple(head.shape)}; expected (F, 3, 3, 3)")
    n_feats = head.shape[0]

    if any(k.startswith("pre_process.") for k in sd):
        kind = "mdsr"
        branches = _indices(sd, "upsample")
        if not branches:
            raise CheckpointError("MDSR state_dict without any 'upsample.{k}' branch")
        scales = tuple(_upsampler_scale(sd, f"upsample.{k}", n_feats) for k in branches)
        n_pre = len(_indices(sd, "pre_process"))
        if n_pre != len(scales):
            raise CheckpointError(f"{n_pre} pre_process branches but {len(scales)} upsample branches")
    else:
        kind = "edsr"
        scales = (_upsampler_scale(sd, "tail.0", n_feats),)

    blocks = _indices(sd, "body", r"\.body\.")
    n_blocks = len(blocks)
    if n_blocks == 0:
        raise CheckpointError("no residual blocks ('body.{i}.body.0.weight') found")
    if f"body.{n_blocks}.weight" not in sd:
        raise CheckpointError(f"missing 'body.{n_blocks}.weight', the conv after {n_blocks} blocks")

    rgb_range, rgb_mean = _mean_shift(sd)
    try:
        return ModelConfig(
            kind=kind,
            scales=scales,
            n_blocks=n_blocks,
            n_feats=n_feats,
            res_scale=0.1 if n_feats == 256 else 1.0,
            rgb_range=rgb_range,
            rgb_mean=rgb_mean,
        )
    except ConfigError as e:
        raise CheckpointError(f"inferred an invalid architecture: {e}") from None


@dataclass(frozen=True)
class Source:
    """Which layout a loaded file was in and which of its weights were used."""

    layout: str = "authors"
    """`authors` (the released EDSR-PyTorch state_dict), `basicsr` or `mmagic`."""

    weights: str | None = None
    """The file's entry the weights came from (`params_ema`, `params`, `state_dict/generator`)."""

    others: tuple[str, ...] = ()
    """The file's other weights, left unused."""

    conversion: str = ""
    """What was done to the tensors besides renaming them."""

    def describe(self, config: ModelConfig) -> str:
        """One line saying what was loaded and what was assumed because the file cannot say it."""
        if self.layout == "authors":
            return f"the authors' released layout: {config.name} x{config.scales}"
        toolbox = {"basicsr": "BasicSR", "mmagic": "mmagic"}.get(self.layout, self.layout)
        if self.others:
            others = f" (preferred over {', '.join(repr(o) for o in self.others)})"
        else:
            others = " (no 'params_ema' in the file)" if self.layout == "basicsr" else ""
        conversion = f"; converted: {self.conversion}" if self.conversion else "; tensors unchanged"
        range_ = "img_range 255" if self.layout == "basicsr" else "std 1"
        return (
            f"{toolbox} EDSR F={config.n_feats} B={config.n_blocks} x{config.scales[0]}, weights "
            f"{self.weights!r}{others}{conversion}; not stored in the file, as in {toolbox}'s official "
            f"EDSR configs: residual scale {config.res_scale:g} (0.1 for F=256, else 1), {range_}, "
            f"DIV2K mean {tuple(round(m, 4) for m in config.rgb_mean)}"
        )

    def as_metadata(self) -> dict[str, object]:
        """Plain YAML fields for a converted checkpoint's metadata."""
        out: dict[str, object] = {"source_layout": self.layout}
        if self.weights is not None:
            out["source_weights"] = self.weights
        return out


def load_released(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    *,
    say: Callable[[str], None] | None = None,
) -> tuple[nn.Module, ModelConfig]:
    """Load a released-layout `.pt` state_dict, or a BasicSR/mmagic EDSR file, as (model in eval
    mode on `map_location`, config).

    For a BasicSR/mmagic file, `say` (if given) receives one line naming the toolbox, which of the
    file's weights were used (`params_ema` over `params`) and what was assumed. Never executes
    code from the file. Raises CheckpointError naming the file if it is missing, is not a plain
    state_dict (pickled objects, random bytes), or is not an EDSR/MDSR one.
    """
    model, config, source = load_released_file(path, map_location)
    if say is not None and source.layout != "authors":
        say(f"{Path(path).name}: {source.describe(config)}")
    return model, config


def load_released_file(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelConfig, Source]:
    """`load_released`, also returning the file's Source (layout, weights used)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # e.g. "unexpected pickle protocol"
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types; all mean "not a safe state_dict"
        raise CheckpointError(f"{path}: {_why_unloadable(e)}") from None
    try:
        zoo: ZooFile | None = read_zoo_file(obj)
        if zoo is None:
            sd, source = _plain_state_dict(obj), Source()
        else:
            sd = zoo.state_dict
            source = Source(zoo.toolbox, zoo.weights, zoo.others, zoo.conversion)
        config = infer_config(sd)
        model = build_model(config)
        load_weights(model, sd)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return model.to(map_location).eval(), config, source


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """`model.load_state_dict(state_dict, strict=True)`, with a CheckpointError that lists the
    missing, unexpected and mis-shaped keys (a few of each) instead of torch's RuntimeError."""
    check_weights(model, state_dict)
    model.load_state_dict(state_dict, strict=True)


def check_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """CheckpointError unless `state_dict` has exactly `model`'s keys and shapes (works on meta)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    problems = [
        f"{label} {_some(keys)}" for label, keys in
        (("missing", missing), ("unexpected", unexpected), ("wrong shape (file vs model)", wrong))
        if keys
    ]
    if problems:
        raise CheckpointError("weights do not fit the network: " + "; ".join(problems))


def _plain_state_dict(obj: object) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"holds a {type(obj).__name__}, not a state_dict (a mapping of names to tensors)"
        )
    if not obj:
        raise CheckpointError("holds an empty state_dict")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"not a plain state_dict: entries that are not named tensors: {_some(bad)}")
    sd = dict(obj)
    for prefix in _WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _why_unloadable(e: Exception) -> str:
    """A one-line reason from torch.load's (long, multi-line) error."""
    text = str(e)
    unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if unsafe:
        return (
            f"refused: it holds a pickled {unsafe.group(1)}, not just tensors; loading it would "
            "run code from the file"
        )
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    reason = detail.group(1) if detail else (text.strip().splitlines() or [""])[0][:200]
    return f"not a PyTorch state_dict file ({type(e).__name__}: {reason})"


def _indices(sd: Mapping[str, torch.Tensor], prefix: str, then: str = r"\.") -> list[int]:
    """Sorted indices i of keys `prefix.{i}<then>...`; CheckpointError unless they are 0..n-1."""
    pattern = re.compile(rf"{re.escape(prefix)}\.(\d+){then}")
    found = sorted({int(m.group(1)) for k in sd if (m := pattern.match(k))})
    if found != list(range(len(found))):
        raise CheckpointError(f"'{prefix}' indices are not consecutive from 0: {found}")
    return found


def _upsampler_scale(sd: Mapping[str, torch.Tensor], prefix: str, n_feats: int) -> int:
    first = sd.get(f"{prefix}.0.weight")
    if first is None:
        raise CheckpointError(f"missing '{prefix}.0.weight', the upsampler's first conv")
    ratio, rest = divmod(first.shape[0], n_feats)
    if rest == 0 and ratio == 4:
        return 4 if f"{prefix}.2.weight" in sd else 2
    if rest == 0 and ratio == 9:
        return 3
    raise CheckpointError(
        f"'{prefix}.0.weight' has {first.shape[0]} output channels; an upsampler of F={n_feats} "
        f"features has {4 * n_feats} (x2, x4) or {9 * n_feats} (x3)"
    )


def _mean_shift(sd: Mapping[str, torch.Tensor]) -> tuple[float, tuple[float, float, float]]:
    """(rgb_range, rgb_mean) from `sub_mean.bias` = -rgb_range * mean (std 1, as released)."""
    bias = sd.get("sub_mean.bias")
    if bias is None or bias.shape != (3,):
        raise CheckpointError("missing 'sub_mean.bias' (3 values), the input mean shift")
    shift = [-float(b) for b in bias]
    ratios = [s / m for s, m in zip(shift, DIV2K_RGB_MEAN, strict=True)]
    # The DIV2K mean at some pixel range (255 for every released model, 1 for some users' own).
    if max(ratios) - min(ratios) <= 1e-4 * abs(ratios[0]) and ratios[0] > 0:
        rgb_range = round(ratios[0]) if abs(ratios[0] - round(ratios[0])) < 1e-3 else ratios[0]
        return float(rgb_range), DIV2K_RGB_MEAN
    return 255.0, tuple(s / 255.0 for s in shift)  # type: ignore[return-value]


def _some(items: list[str] | Mapping[str, object], n: int = 5) -> str:
    items = list(items)
    more = f", ... ({len(items)} in all)" if len(items) > n else ""
    return ", ".join(items[:n]) + more
