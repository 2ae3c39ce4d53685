"""Other toolboxes' EDSR files (BasicSR, mmagic/mmediting), recognised by their contents and
rewritten into the authors' released layout, which `official.py` then loads like any released file.

BasicSR (`basicsr/archs/edsr_arch.py`) saves `{"params": state_dict}`, training runs with EMA also
`"params_ema"` (preferred here: it is what BasicSR evaluates and releases), with its own key
names. Its network takes [0, 1] input and computes `x = (x - mean) * img_range`, ...,
`x / img_range + mean`; with BasicSR's img_range 255 that is exactly ntire's network on
[0, 255] input (`sub_mean` subtracts 255 * mean, `add_mean` adds it), so the weights are copied
unchanged: the released EDSR files are the authors' weights under new names.

mmagic (`mmagic/models/editors/edsr/edsr_net.py`, mmediting's `EDSR` before it) saves
`{"meta": ..., "state_dict": {"generator.<key>": ...}, ...}`. Its network also takes [0, 1]
input but computes `(x - mean) / std` with no image range (std 1 in every mmagic EDSR config),
so its features are 1/255 of ntire's: the first conv's weights are divided by 255 and the last
conv's weights and bias multiplied by 255, which is the same function on 0-255 pixels.

Neither toolbox stores the mean, the image range or the residual scale in the file (they are
constructor arguments, not tensors): the DIV2K mean (0.4488, 0.4371, 0.4040), BasicSR's
img_range 255 and mmagic's std 1 are the values of their official EDSR configs. Files of any other
network from these toolboxes (RRDBNet, RCAN, SwinIR, ...) are refused in one line naming it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ntire.config import DIV2K_RGB_MEAN
from ntire.errors import CheckpointError
from ntire.models.blocks import MeanShift

BASICSR_ENTRIES = ("params_ema", "params")
"""Entries of a BasicSR file that hold a state_dict, most preferred first."""

MMAGIC_PREFIXES = ("generator_ema.", "generator.")
"""Prefixes of an mmagic state_dict's generator keys, most preferred first."""

RGB_RANGE = 255.0
"""ntire's pixel range; also BasicSR's img_range in its official EDSR configs."""

# Other networks these toolboxes (and the authors' EDSR-PyTorch family) save, told apart by a key
# only they have. Checked on keys with the toolbox's own prefix already removed.
_OTHER_NETWORKS = (
    (re.compile(r"body\.\d+\.rdb\d+\."), "RRDBNet (ESRGAN / Real-ESRGAN)"),
    (re.compile(r"body\.\d+\.residual_group\.\d+\.rcab\."), "RCAN"),
    (re.compile(r"body\.\d+\.body\.\d+\.body\.\d+\."), "RCAN"),  # RCAN's own EDSR-style layout
    (re.compile(r"layers\.\d+\.residual_group\.overlap_attn\."), "HAT"),
    (re.compile(r"layers\.\d+\.residual_group\.blocks\."), "SwinIR"),
    (re.compile(r"(upconv1|conv_hr)\."), "MSRResNet (SRResNet)"),
    (re.compile(r"(RDBs|rdbs)\.\d+\."), "RDN"),
    (re.compile(r"pcd_align\."), "EDVR"),
    (re.compile(r"spynet\."), "BasicVSR"),
    # a plain conv stack `body.{i}` (conv, PReLU, ...); EDSR's `body.0` is always a residual block
    (re.compile(r"body\.0\.weight$"), "SRVGGNetCompact (Real-ESRGAN compact)"),
)

_BASICSR_EDSR_KEYS = ("conv_first.weight", "conv_after_body.weight", "upsample.0.weight", "conv_last.weight")
_MMAGIC_EDSR_KEYS = (
    "conv_first.weight", "conv_after_body.weight", "upsample.0.upsample_conv.weight", "conv_last.weight"
)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass(frozen=True)
class ZooFile:
    """A toolbox's EDSR file rewritten into the authors' released layout."""

    state_dict: dict[str, torch.Tensor]
    """Released-layout keys (`head.0`, `body.{i}.body.{0,2}`, `body.{B}`, `tail.0.*`, `tail.1`),
    mean shifts for ntire's 0-255 input included."""

    toolbox: str
    """`basicsr` or `mmagic`."""

    weights: str
    """Which of the file's weights were used: `params_ema`, `params`, `state_dict/generator`, ..."""

    others: tuple[str, ...] = ()
    """The file's other weights, not used (e.g. `params` when `params_ema` was)."""

    conversion: str = ""
    """What was done to the weights besides renaming them, if anything."""


def identify_other_network(keys: list[str]) -> str | None:
    """The name of the non-EDSR network whose state_dict has these keys, if it is a known one."""
    for pattern, name in _OTHER_NETWORKS:
        if any(pattern.match(k) for k in keys):
            return name
    return None


def read_zoo_file(obj: object) -> ZooFile | None:
    """`obj` (what `torch.load` returned) as a released-layout state_dict if it is a BasicSR or
    mmagic file, else None (it is then a plain state_dict or not a checkpoint at all).

    Raises CheckpointError (one line) for a file of these toolboxes that is not an EDSR one, or
    whose EDSR weights do not fit together.
    """
    if not isinstance(obj, Mapping):
        return None
    entries = [e for e in BASICSR_ENTRIES if isinstance(obj.get(e), Mapping)]
    if entries:
        used = entries[0]
        sd = _tensors(obj[used], f"'{used}'")
        what = f"a BasicSR checkpoint ('{used}')"
        _refuse_other_network(sd, what)
        if not all(k in sd for k in _BASICSR_EDSR_KEYS):
            raise CheckpointError(
                f"{what} of a network that is not EDSR (keys: {_some(sd)}); ntire loads EDSR/MDSR networks only"
            )
        return ZooFile(_from_basicsr(sd), "basicsr", used, tuple(entries[1:]))

    state = obj.get("state_dict") if isinstance(obj.get("state_dict"), Mapping) else obj
    if not any(isinstance(k, str) and k.startswith(MMAGIC_PREFIXES) for k in state):
        return None
    where = "state_dict/" if state is not obj else ""
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    prefixes = [p for p in MMAGIC_PREFIXES if any(k.startswith(p) for k in tensors)]
    used = f"{where}{prefixes[0].rstrip('.')}"
    sd = {k[len(prefixes[0]):]: v for k, v in tensors.items() if k.startswith(prefixes[0])}
    sd.pop("steps", None)  # an EMA wrapper's update counter
    sd = _strip(sd)
    what = f"an mmagic checkpoint ('{used}')"
    _refuse_other_network(sd, what)
    if not all(k in sd for k in _MMAGIC_EDSR_KEYS):
        raise CheckpointError(
            f"{what} of a network that is not EDSRNet (keys: {_some(sd)}); ntire loads EDSR/MDSR networks only"
        )
    others = tuple(f"{where}{p.rstrip('.')}" for p in prefixes[1:])
    return ZooFile(
        _from_mmagic(sd),
        "mmagic",
        used,
        others,
        conversion="first conv's weights / 255, last conv's weights and bias x 255 (mmagic works on 0-1 "
        "features)",
    )


def _edsr_renames(n_blocks: int, upsampler_convs: list[str]) -> dict[str, str]:
    """Module-name map shared by both toolboxes' EDSR layouts (they name the same parts alike):
    theirs -> the released layout; `upsampler_convs` their upsampler convs in order."""
    renames = {"conv_first": "head.0", "conv_after_body": f"body.{n_blocks}", "conv_last": "tail.1"}
    for i in range(n_blocks):
        renames[f"body.{i}.conv1"] = f"body.{i}.body.0"
        renames[f"body.{i}.conv2"] = f"body.{i}.body.2"
    for j, name in enumerate(upsampler_convs):
        renames[name] = f"tail.0.{2 * j}"
    return renames


def _from_basicsr(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BasicSR EDSR keys -> released keys; the tensors themselves are unchanged."""
    n_blocks = _count_blocks(sd, "BasicSR")
    steps = _upsampler_steps(sd, "upsample.{}.weight", step=2)
    renames = _edsr_renames(n_blocks, [f"upsample.{2 * j}" for j in range(steps)])
    return _renamed(sd, renames, "BasicSR EDSR")


def _from_mmagic(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mmagic EDSRNet keys -> released keys, first and last conv rescaled to 0-255 features."""
    n_blocks = _count_blocks(sd, "mmagic")
    steps = _upsampler_steps(sd, "upsample.{}.upsample_conv.weight", step=1)
    renames = _edsr_renames(n_blocks, [f"upsample.{j}.upsample_conv" for j in range(steps)])
    out = _renamed(sd, renames, "mmagic EDSRNet")
    # mmagic: conv_first((y - mean) / 1) on y in [0, 1]; ntire: head(x - 255 * mean) on x = 255 y.
    out["head.0.weight"] = out["head.0.weight"].float() / RGB_RANGE
    # mmagic: y' = conv_last(z) + mean in [0, 1]; ntire: tail.1(z) + 255 * mean = 255 y'.
    out["tail.1.weight"] = out["tail.1.weight"].float() * RGB_RANGE
    out["tail.1.bias"] = out["tail.1.bias"].float() * RGB_RANGE
    return out


def _renamed(sd: dict[str, torch.Tensor], renames: dict[str, str], name: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, tensor in sd.items():
        module, _, param = key.rpartition(".")
        if module in renames and param in ("weight", "bias"):
            out[f"{renames[module]}.{param}"] = tensor
        else:
            unexpected.append(key)
    if unexpected:
        raise CheckpointError(f"{name} state_dict with keys EDSR does not have: {_some(unexpected)}")
    # Mean shifts: not in these files (plain attributes there); ntire's own for 0-255 input.
    for name_, sign in (("sub_mean", -1), ("add_mean", 1)):
        shift = MeanShift(RGB_RANGE, DIV2K_RGB_MEAN, sign)
        out[f"{name_}.weight"], out[f"{name_}.bias"] = shift.weight, shift.bias
    return out


def _count_blocks(sd: Mapping[str, torch.Tensor], toolbox: str) -> int:
    found = sorted({int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.conv1\.weight$", k))})
    if not found or found != list(range(len(found))):
        raise CheckpointError(f"{toolbox} EDSR residual blocks 'body.{{i}}.conv1' not numbered 0..B-1: {found}")
    return len(found)


def _upsampler_steps(sd: Mapping[str, torch.Tensor], key: str, step: int) -> int:
    """Number of conv/shuffle stages of the upsampler; CheckpointError unless x2, x3 or x4."""
    n_feats = sd["conv_first.weight"].shape[0]
    widths = []
    while key.format(step * len(widths)) in sd:
        widths.append(sd[key.format(step * len(widths))].shape[0])
    if widths == [4 * n_feats] or widths == [4 * n_feats] * 2 or widths == [9 * n_feats]:
        return len(widths)
    if widths == [4 * n_feats] * len(widths):
        raise CheckpointError(
            f"an EDSR upsampling x{2 ** len(widths)} ({len(widths)} x2 stages); ntire's networks "
            "upscale x2, x3 and x4 only"
        )
    raise CheckpointError(
        f"an EDSR upsampler of {len(widths)} stage(s) with {widths} output channels; for F={n_feats} "
        f"features x2 has [{4 * n_feats}], x3 [{9 * n_feats}], x4 [{4 * n_feats}, {4 * n_feats}]"
    )


def _refuse_other_network(sd: Mapping[str, torch.Tensor], what: str) -> None:
    other = identify_other_network(list(sd))
    if other:
        raise CheckpointError(f"{what} of {other}, not EDSR; ntire loads EDSR/MDSR networks only")


def _tensors(obj: Mapping[object, object], where: str) -> dict[str, torch.Tensor]:
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{where} is not a state_dict: entries that are not named tensors: {_some(bad)}")
    if not obj:
        raise CheckpointError(f"{where} is an empty state_dict")
    return _strip(dict(obj))  # type: ignore[arg-type]


def _strip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _WRAPPER_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _some(items: object, n: int = 5) -> str:
    items = [str(i) for i in items]  # type: ignore[attr-defined]
    more = f", ... ({len(items)} in all)" if len(items) > n else ""
    return ", ".join(items[:n]) + more
