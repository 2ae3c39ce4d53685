"""Packaging a submission: the readme, the validator, the zip, and `ntire submit --check`.

A submission (one track, one scale) is a zip holding, at its top level and nothing else:

- one SR image per LR input, named after it (`0901x4.png` for `DIV2K_test_LR_bicubic/X4/0901x4.png`),
  an 8-bit RGB PNG exactly `scale` times the LR size;
- `readme.txt` with the challenge's four lines (see `format_readme`).

The validator never stops at the first problem: every check runs and each problem is reported as
one line naming the file and what is wrong, so a broken build can be fixed in one pass. Sizes are
checked only where the LR sizes are known (`Expected`); without them the file names, PNG format,
pixel mode and readme are still checked. `write_zip` validates the folder, then the zip it wrote
under a temporary name, and only then renames it over the target, so a valid zip is never
replaced by a broken one.
"""

from __future__ import annotations

import json
import math
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import UnidentifiedImageError

from ntire.errors import ConfigError, ImageError, NtireError
from ntire.files import atomic_path, atomic_write_text
from ntire.images import open_image
from ntire.submission.manifest import ModelEntry
from ntire.submission.predict import png_header, sr_name

README_NAME = "readme.txt"

README_FIELDS = (
    "runtime per image [s]",
    "CPU[1] / GPU[0]",
    "Extra Data [1] / No Extra Data [0]",
    "Other description",
)
"""The readme's four keys, in the order the challenge's template lists them."""

_COLOR_TYPES = {0: "greyscale", 2: "RGB", 3: "palette", 4: "greyscale+alpha", 6: "RGBA"}
_SCALE_IN_NAME = re.compile(r"x(\d+)\.png$", re.IGNORECASE)


class SubmissionError(NtireError):
    """A submission that fails validation; the message lists every problem, one per line."""

    def __init__(self, where: str, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{where}: {len(self.problems)} problem(s):\n{lines}")


# --------------------------------------------------------------------------------------------
# readme.txt


@dataclass(frozen=True)
class Readme:
    """The four fields of a submission's readme.txt."""

    runtime: float
    """Seconds per image, measured on the run that made the images."""

    cpu: bool
    """True if the images were made on a CPU (written 1), False for a GPU (0)."""

    extra_data: bool
    """True if the model was trained on data beyond DIV2K train (1), else 0."""

    description: str
    """One line of free text: model, checkpoint, self-ensemble."""


def _format_runtime(seconds: float) -> str:
    # Two decimals as in the challenge's example; tiny models on the sample data need more.
    return f"{seconds:.2f}" if seconds >= 0.1 else f"{seconds:.4f}"


def format_readme(readme: Readme) -> str:
    """readme.txt text: the four `key : value` lines in the challenge's order."""
    description = " ".join(readme.description.split())  # one line, whatever the manifest held
    values = (_format_runtime(readme.runtime), int(readme.cpu), int(readme.extra_data), description)
    return "".join(f"{key} : {value}\n" for key, value in zip(README_FIELDS, values, strict=True))


def parse_readme(text: str) -> tuple[Readme | None, list[str]]:
    """Parse readme.txt; returns (Readme or None, problems), naming each bad or missing field."""
    problems: list[str] = []
    found: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        key, sep, value = line.partition(":")
        key = " ".join(key.split())
        # "CPU[1] / GPU[0]" has no colon inside, so the first colon always ends the key.
        if not sep or key not in README_FIELDS:
            problems.append(f"{README_NAME}: line {number} {line!r} is not one of the fields {_field_list()}")
            continue
        if key in found:
            problems.append(f"{README_NAME}: field {key!r} appears more than once")
            continue
        found[key] = value.strip()
    for key in README_FIELDS:
        if key not in found:
            problems.append(f"{README_NAME}: field {key!r} is missing")

    runtime = _runtime(found.get(README_FIELDS[0]), problems)
    cpu = _flag(README_FIELDS[1], found.get(README_FIELDS[1]), problems)
    extra = _flag(README_FIELDS[2], found.get(README_FIELDS[2]), problems)
    description = found.get(README_FIELDS[3])
    if description is not None and not description:
        problems.append(f"{README_NAME}: field {README_FIELDS[3]!r} is empty; describe the method")
    if problems:
        return None, problems
    assert runtime is not None and cpu is not None and extra is not None and description
    return Readme(runtime=runtime, cpu=cpu, extra_data=extra, description=description), []


_PRECISION_WORDS = {"fp32": "fp32 inference", "tf32": "fp32 inference with TF32 convolutions",
                    "bf16": "bf16 inference"}


def describe(
    entry: ModelEntry, checkpoint: Path, model_name: str, params: int, self_ensemble: bool,
    precision: str | None = None,
) -> str:
    """The readme's description: the manifest's text, then model, checkpoint, ensemble and precision.

    The appended facts come from the checkpoint actually loaded, so the readme stays true when
    an entry's later candidate stood in for its first.
    """
    text = entry.description.strip().rstrip(".")
    parts = [text] if text else []
    parts.append(f"model {model_name} ({params / 1e6:.2f}M parameters)")
    parts.append(f"checkpoint {checkpoint.name if checkpoint.is_file() else checkpoint}")
    parts.append("geometric self-ensemble x8" if self_ensemble else "no self-ensemble")
    if precision is not None:
        parts.append(_PRECISION_WORDS.get(precision, precision))
    return "; ".join(parts)


def _field_list() -> str:
    return ", ".join(repr(k) for k in README_FIELDS)


def _runtime(value: str | None, problems: list[str]) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        problems.append(
            f"{README_NAME}: field {README_FIELDS[0]!r} is {value!r}; expected a non-negative number of seconds"
        )
        return None
    return seconds


def _flag(key: str, value: str | None, problems: list[str]) -> bool | None:
    if value is None:
        return None
    if value not in ("0", "1"):
        problems.append(f"{README_NAME}: field {key!r} is {value!r}; expected 0 or 1")
        return None
    return value == "1"


# --------------------------------------------------------------------------------------------
# What a submission must contain


@dataclass(frozen=True)
class Expected:
    """What one track/scale submission must hold: an SR file per LR input, and the LR sizes."""

    scale: int
    """Upscaling factor: every SR image is this many times its LR input in each dimension."""

    lr_sizes: dict[str, tuple[int, int]]
    """SR file name (the LR file's name, e.g. `0901x4.png`) -> (width, height) of the LR input."""

    def to_json(self) -> str:
        """This record as JSON, stored beside a zip so `ntire submit --check` can check sizes."""
        sizes = {name: list(size) for name, size in sorted(self.lr_sizes.items())}
        return json.dumps({"scale": self.scale, "lr_sizes": sizes}, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "expected") -> Expected:
        """Read a record written by `to_json`; errors name `where`."""
        try:
            data = json.loads(text)
            return cls(
                scale=int(data["scale"]),
                lr_sizes={str(k): (int(v[0]), int(v[1])) for k, v in data["lr_sizes"].items()},
            )
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise NtireError(f"{where}: not a record of LR sizes ({e})") from None


def expected_from_lr_files(lr_files: Iterable[str | os.PathLike], scale: int) -> Expected:
    """The Expected record for these LR inputs (their headers are read, not their pixels)."""
    sizes = {}
    for path in lr_files:
        path = Path(path)
        try:
            with open_image(path) as im:
                sizes[sr_name(path)] = im.size
        except (OSError, UnidentifiedImageError, SyntaxError) as e:
            raise NtireError(f"{path}: cannot read the LR image's size ({e})") from None
    if not sizes:
        raise NtireError(f"no LR images given for the x{scale} submission")
    return Expected(scale=scale, lr_sizes=sizes)


def expected_from_lr_dir(lr_dir: str | os.PathLike, scale: int) -> Expected:
    """The Expected record for every PNG in an LR folder (e.g. `DIV2K_test_LR_bicubic/X4`)."""
    lr_dir = Path(lr_dir)
    if not lr_dir.is_dir():
        raise NtireError(f"{lr_dir}: LR folder not found")
    files = sorted(p for p in lr_dir.iterdir() if p.is_file() and p.suffix.lower() == ".png")
    if not files:
        raise NtireError(f"{lr_dir}: no PNG images in the LR folder")
    return expected_from_lr_files(files, scale)


# --------------------------------------------------------------------------------------------
# Checking


@dataclass(frozen=True)
class Entry:
    """One member of a submission (a zip member or a file in a folder)."""

    name: str
    """Its path inside the submission, '/'-separated."""

    is_dir: bool
    """True for a folder."""

    read: Callable[[], bytes]
    """Returns the file's bytes."""


def check_entries(entries: list[Entry], expected: Expected | None = None, scale: int | None = None) -> list[str]:
    """Every problem with a submission's members, one message each (empty if it is valid).

    Checks: no folders and nothing below the top level; exactly one readme.txt with the four
    fields well formed; every other member an SR PNG; with `expected`, exactly one SR image per
    LR input (none missing, none extra) of exactly scale x the LR size; every PNG 8-bit RGB and
    decodable. Without `expected` every name must carry the scale (`...x4.png`), all the same one
    and `scale` when given.
    """
    problems: list[str] = []
    files: dict[str, Entry] = {}
    folders: dict[str, list[str]] = {}  # top-level folder -> files found below it
    for entry in entries:
        parts = [p for p in entry.name.replace("\\", "/").split("/") if p]
        if entry.is_dir or len(parts) > 1:
            inside = folders.setdefault(parts[0], [])
            if not entry.is_dir:
                inside.append("/".join(parts[1:]))
            continue
        files[entry.name] = entry
    for top, inside in sorted(folders.items()):
        held = f" holding {', '.join(inside[:3])}{', ...' if len(inside) > 3 else ''}" if inside else ""
        problems.append(f"{top}/: folder{held}; a submission has no folders, files sit at the top level")

    readme = files.pop(README_NAME, None)
    if readme is None:
        problems.append(f"{README_NAME}: missing")
    else:
        try:
            text = readme.read().decode("utf-8")
        except UnicodeDecodeError:
            problems.append(f"{README_NAME}: not UTF-8 text")
        else:
            problems += parse_readme(text)[1]

    images: dict[str, Entry] = {}
    for name, entry in sorted(files.items()):
        if name.lower().endswith(".png"):
            images[name] = entry
        else:
            problems.append(f"{name}: unexpected file; a submission holds only SR PNGs and {README_NAME}")

    if expected is not None:
        scale = expected.scale
        for name in sorted(set(expected.lr_sizes) - set(images)):
            problems.append(f"{name}: missing; every LR input needs its SR image")
        for name in sorted(set(images) - set(expected.lr_sizes)):
            problems.append(f"{name}: extra image; it matches no LR input")
    else:
        scale = _scale_from_names(images, problems, scale)

    def check(item: tuple[str, Entry]) -> list[str]:
        name, entry = item
        want = None
        if expected is not None and name in expected.lr_sizes:
            w, h = expected.lr_sizes[name]
            want = (w * scale, h * scale, w, h)
        return _check_png(name, entry.read(), want, scale)

    # Decoding every PNG is most of a check (80 ms for a 2040x1356 SR image); Pillow's decoder
    # releases the GIL, so threads share it out over the cores. map() keeps the problems in order.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="ntire-check") as pool:
        for found in pool.map(check, images.items()):
            problems += found
    if not images:
        problems.append("no SR images at all")
    return problems


def _scale_from_names(images: dict[str, Entry], problems: list[str], asked: int | None) -> int | None:
    scales = {}
    for name in images:
        m = _SCALE_IN_NAME.search(name)
        scales[name] = int(m.group(1)) if m else None
        if m is None:
            problems.append(f"{name}: the name carries no scale; SR images are named like their LR input "
                            f"(e.g. 0901x{asked or 4}.png)")
        elif asked is not None and scales[name] != asked:
            problems.append(f"{name}: named for x{scales[name]}, but the zip is checked as x{asked} (--scale)")
    found = {s for s in scales.values() if s is not None}
    if len(found) > 1:
        named = ", ".join(f"x{s}" for s in sorted(found))
        problems.append(f"images name different scales ({named}); one zip is one scale")
    if asked is not None:
        return asked
    return found.pop() if len(found) == 1 else None


def _check_png(name: str, data: bytes, want: tuple[int, int, int, int] | None, scale: int | None) -> list[str]:
    header = png_header(data)
    if header is None:
        return [f"{name}: not a PNG file"]
    width, height, depth, color = header
    problems = []
    if (depth, color) != (8, 2):
        kind = _COLOR_TYPES.get(color, f"colour type {color}")
        problems.append(f"{name}: {depth}-bit {kind} PNG; expected 8-bit RGB (no alpha, no palette)")
    if want is not None and (width, height) != want[:2]:
        problems.append(
            f"{name}: {width}x{height} pixels; expected {want[0]}x{want[1]} "
            f"({scale} x the LR input's {want[2]}x{want[3]})"
        )
    try:
        with open_image(data, name) as im:
            im.load()  # a truncated or corrupt file fails here, not at scoring time
    except ImageError as e:
        problems.append(str(e))
    except (OSError, UnidentifiedImageError, SyntaxError, zlib.error) as e:
        problems.append(f"{name}: cannot decode the PNG ({e})")
    return problems


def zip_entries(path: str | os.PathLike) -> list[Entry]:
    """The members of a zip file as Entries; raises NtireError if it is not a readable zip."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise NtireError(f"{path}: not a readable zip file ({e})") from None
    with archive:
        infos = archive.infolist()
        # Read everything now: the archive is closed when this returns.
        return [Entry(i.filename, i.is_dir(), _constant(b"" if i.is_dir() else archive.read(i))) for i in infos]


def folder_entries(folder: str | os.PathLike) -> list[Entry]:
    """Everything inside a folder (recursively) as Entries, paths relative to it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NtireError(f"{folder}: submission folder not found")
    from ntire.files import is_temp_file

    entries = []
    for path in sorted(folder.rglob("*")):
        if is_temp_file(path):  # a killed writer's debris, never part of a submission
            continue
        rel = path.relative_to(folder).as_posix()
        entries.append(Entry(rel, path.is_dir(), _reader(path)))
    return entries


def _constant(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def _reader(path: Path) -> Callable[[], bytes]:
    return path.read_bytes


def check_zip(path: str | os.PathLike, expected: Expected | None = None, scale: int | None = None) -> list[str]:
    """Every problem with a submission zip (see `check_entries`); an unreadable zip is one problem."""
    try:
        entries = zip_entries(path)
    except NtireError as e:
        return [str(e)]
    return check_entries(entries, expected, scale)


def check_folder(folder: str | os.PathLike, expected: Expected | None = None) -> list[str]:
    """Every problem with a folder about to be zipped (see `check_entries`)."""
    return check_entries(folder_entries(folder), expected)


def expected_record_path(zip_path: str | os.PathLike) -> Path:
    """Where the builder records a zip's LR sizes: `bicubic_x4.zip` -> `bicubic_x4.inputs.json`."""
    zip_path = Path(zip_path)
    return zip_path.with_name(zip_path.stem + ".inputs.json")


# --------------------------------------------------------------------------------------------
# Writing the zip, and what `--check` compares against


def write_zip(folder: str | os.PathLike, zip_path: str | os.PathLike, expected: Expected) -> Path:
    """Validate `folder`, zip its files at the top level, validate the zip, then move it in place.

    Raises SubmissionError listing every problem; an existing zip at `zip_path` is then left
    untouched (the new one is built beside it under a temporary name and renamed only once valid).
    Also records the LR sizes beside the zip (`*.inputs.json`) for `ntire submit --check`.
    """
    folder, zip_path = Path(folder), Path(zip_path)
    problems = check_folder(folder, expected)
    if problems:
        raise SubmissionError(str(folder), problems)
    members = [folder / README_NAME] + sorted(p for p in folder.iterdir() if p.name != README_NAME)
    with atomic_path(zip_path) as tmp:
        with zipfile.ZipFile(tmp, "w") as archive:
            for path in members:
                # PNGs are compressed already; deflating them again costs time for nothing.
                method = zipfile.ZIP_DEFLATED if path.suffix == ".txt" else zipfile.ZIP_STORED
                archive.write(path, arcname=path.name, compress_type=method)
        # The folder passed, but the zip itself may not (a full disk truncates it).
        problems = check_zip(tmp, expected)
        if problems:
            raise SubmissionError(f"{zip_path} (not written)", problems)
    atomic_write_text(expected_record_path(zip_path), expected.to_json())
    return zip_path


def load_expected(
    zip_path: str | os.PathLike, lr_dir: str | os.PathLike | None, scale: int | None
) -> tuple[Expected | None, str]:
    """What `--check` compares a zip against, and a line saying where that came from.

    From `lr_dir` when given (scale from `scale`, else from the LR names `0901x4.png`), else from
    the record the builder wrote beside the zip, else None (sizes unchecked).
    """
    if lr_dir is not None:
        lr_dir = Path(lr_dir)
        if not lr_dir.is_dir():
            raise ConfigError(f"--lr {lr_dir}: no such folder (give the LR folder of the zip's inputs)")
        if scale is None:
            found = {int(m.group(1)) for p in lr_dir.glob("*.png") if (m := re.search(r"x(\d+)$", p.stem))}
            if len(found) != 1:
                raise ConfigError(f"--lr {lr_dir}: cannot tell the scale from the file names; give --scale")
            scale = found.pop()
        return expected_from_lr_dir(lr_dir, scale), f"sizes checked against the LR images in {lr_dir} (x{scale})"
    record = expected_record_path(zip_path)
    if record.is_file():
        expected = Expected.from_json(record.read_text(), str(record))
        if scale is not None and scale != expected.scale:
            raise ConfigError(f"--scale {scale} disagrees with {record} (x{expected.scale})")
        return expected, f"sizes checked against {record} (x{expected.scale})"
    return None, "image sizes and count not checked (give --lr DIR, the LR folder, to check them)"


__all__ = [
    "Entry",
    "Expected",
    "README_FIELDS",
    "README_NAME",
    "Readme",
    "SubmissionError",
    "check_entries",
    "check_folder",
    "check_zip",
    "describe",
    "expected_from_lr_dir",
    "expected_from_lr_files",
    "expected_record_path",
    "folder_entries",
    "format_readme",
    "load_expected",
    "parse_readme",
    "write_zip",
    "zip_entries",
]
