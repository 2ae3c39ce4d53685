"""package: the readme, the validator (every problem named at once), zips that never replace a
valid one with a broken one, and the readme's description."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ntire.images import encode_png
from ntire.submission.package import (
    README_FIELDS,
    Expected,
    Readme,
    SubmissionError,
    check_zip,
    format_readme,
    load_expected,
    parse_readme,
    write_zip,
)


def _png16(width: int, height: int) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    raw = b"".join(b"\x00" + b"\x12\x34" * 3 * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _pil_png(mode: str, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


GOOD_README = format_readme(Readme(runtime=1.5, cpu=True, extra_data=False, description="EDSR+, checkpoint x"))
EXPECTED = Expected(scale=2, lr_sizes={"0901x2.png": (5, 4), "0902x2.png": (6, 3)})


def _good_members() -> dict[str, bytes]:
    rgb = lambda w, h: encode_png(np.zeros((h, w, 3), np.uint8))  # noqa: E731
    return {"readme.txt": GOOD_README.encode(), "0901x2.png": rgb(10, 8), "0902x2.png": rgb(12, 6)}


def _zip(tmp_path: Path, members: dict[str, bytes], folders: tuple[str, ...] = ()) -> Path:
    path = tmp_path / "sub.zip"
    with zipfile.ZipFile(path, "w") as z:
        for folder in folders:
            z.writestr(zipfile.ZipInfo(folder + "/"), b"")
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_validator_accepts_a_good_submission(tmp_path):
    assert check_zip(_zip(tmp_path, _good_members()), EXPECTED) == []
    assert check_zip(_zip(tmp_path, _good_members())) == []  # without LR sizes too


BAD = {
    "missing image": (lambda m: m.pop("0902x2.png"), "0902x2.png: missing"),
    "wrong size": (
        lambda m: m.update({"0901x2.png": encode_png(np.zeros((8, 11, 3), np.uint8))}),
        "0901x2.png: 11x8 pixels; expected 10x8",
    ),
    "greyscale": (lambda m: m.update({"0901x2.png": _pil_png("L", (10, 8))}), "0901x2.png: 8-bit greyscale PNG"),
    "rgba": (lambda m: m.update({"0901x2.png": _pil_png("RGBA", (10, 8))}), "0901x2.png: 8-bit RGBA PNG"),
    "palette": (lambda m: m.update({"0901x2.png": _pil_png("P", (10, 8))}), "bit palette PNG; expected 8-bit RGB"),
    "16-bit": (lambda m: m.update({"0901x2.png": _png16(10, 8)}), "0901x2.png: 16-bit RGB PNG"),
    "not png": (lambda m: m.update({"0901x2.png": b"GIF89a..."}), "0901x2.png: not a PNG"),
    "extra image": (lambda m: m.update({"0999x2.png": m["0901x2.png"]}), "0999x2.png: extra image"),
    "extra file": (lambda m: m.update({"notes.txt": b"hi"}), "notes.txt: unexpected file"),
    "file in folder": (lambda m: m.update({"sr/0903x2.png": m["0901x2.png"]}), "sr/: folder holding 0903x2.png"),
    "no readme": (lambda m: m.pop("readme.txt"), "readme.txt: missing"),
    "readme field missing": (
        lambda m: m.update({"readme.txt": GOOD_README.replace("CPU[1] / GPU[0] : 1\n", "").encode()}),
        "field 'CPU[1] / GPU[0]' is missing",
    ),
    "readme bad flag": (
        lambda m: m.update(
            {"readme.txt": GOOD_README.replace("No Extra Data [0] : 0", "No Extra Data [0] : yes").encode()}
        ),
        "is 'yes'; expected 0 or 1",
    ),
    "readme bad runtime": (
        lambda m: m.update({"readme.txt": GOOD_README.replace(": 1.50", ": fast").encode()}),
        "'runtime per image [s]' is 'fast'",
    ),
    "readme empty description": (
        lambda m: m.update({"readme.txt": GOOD_README.replace("EDSR+, checkpoint x", "").encode()}),
        "'Other description' is empty",
    ),
    "readme stray line": (
        lambda m: m.update({"readme.txt": (GOOD_README + "GPU model : V100\n").encode()}),
        "line 5 'GPU model : V100' is not one of the fields",
    ),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_validator_names_each_kind_of_problem(tmp_path, kind):
    mutate, message = BAD[kind]
    members = _good_members()
    mutate(members)
    problems = check_zip(_zip(tmp_path, members), EXPECTED)
    assert any(message in p for p in problems), problems


def test_validator_reports_a_stray_empty_folder_and_every_problem_at_once(tmp_path):
    members = _good_members()
    members.pop("0901x2.png")
    members["0902x2.png"] = _pil_png("RGBA", (12, 6))
    problems = check_zip(_zip(tmp_path, members, folders=("__MACOSX",)), EXPECTED)
    assert any(p.startswith("__MACOSX/: folder") for p in problems)
    assert any("0901x2.png: missing" in p for p in problems)
    assert any("0902x2.png: 8-bit RGBA" in p for p in problems)


def test_validator_without_sizes_checks_scale_consistency(tmp_path):
    members = _good_members()
    members["0903x3.png"] = members["0901x2.png"]
    assert any("different scales" in p for p in check_zip(_zip(tmp_path, members)))


def test_readme_round_trip_and_exact_fields():
    text = format_readme(Readme(runtime=0.0123, cpu=False, extra_data=True, description="a\nb"))
    assert [line.split(" : ")[0] for line in text.splitlines()] == list(README_FIELDS)
    readme, problems = parse_readme(text)
    assert problems == [] and readme == Readme(runtime=0.0123, cpu=False, extra_data=True, description="a b")


def test_broken_build_never_replaces_a_valid_zip(tmp_path):
    folder = tmp_path / "sr"
    folder.mkdir()
    for name, data in _good_members().items():
        (folder / name).write_bytes(data)
    target = tmp_path / "bicubic_x2.zip"
    write_zip(folder, target, EXPECTED)
    good = target.read_bytes()
    assert check_zip(target, EXPECTED) == []

    (folder / "0902x2.png").unlink()
    (folder / "0901x2.png").write_bytes(_pil_png("L", (10, 8)))
    with pytest.raises(SubmissionError) as e:
        write_zip(folder, target, EXPECTED)
    assert "0902x2.png: missing" in str(e.value) and "0901x2.png: 8-bit greyscale" in str(e.value)
    assert target.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bicubic_x2.inputs.json", "bicubic_x2.zip", "sr"]


def test_zip_check_of_the_built_zip_itself(tmp_path, monkeypatch):
    """A zip that breaks after the folder passed (e.g. a full disk) is caught before the rename."""
    import ntire.submission.package as package

    folder = tmp_path / "sr"
    folder.mkdir()
    for name, data in _good_members().items():
        (folder / name).write_bytes(data)
    target = tmp_path / "x.zip"
    target.write_bytes(b"old valid zip")
    monkeypatch.setattr(package, "check_zip", lambda path, expected: ["x.zip: truncated"])
    with pytest.raises(SubmissionError, match="truncated"):
        write_zip(folder, target, EXPECTED)
    assert target.read_bytes() == b"old valid zip"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_load_expected_from_lr_folder_record_or_nothing(tmp_path):
    from ntire.errors import ConfigError
    from ntire.images import write_png

    lr = tmp_path / "X2"
    write_png(lr / "0901x2.png", np.zeros((4, 5, 3), np.uint8))
    write_png(lr / "0902x2.png", np.zeros((3, 6, 3), np.uint8))
    target = tmp_path / "bicubic_x2.zip"
    expected, how = load_expected(target, lr, None)
    assert expected == EXPECTED and "LR images in" in how and "(x2)" in how
    unchecked = "image sizes and count not checked (give --lr DIR, the LR folder, to check them)"
    assert load_expected(target, None, None) == (None, unchecked)
    folder = tmp_path / "sr"
    folder.mkdir()
    for name, data in _good_members().items():
        (folder / name).write_bytes(data)
    write_zip(folder, target, EXPECTED)
    expected, how = load_expected(target, None, None)
    assert expected == EXPECTED and "bicubic_x2.inputs.json" in how
    with pytest.raises(ConfigError, match="--scale 3 disagrees"):
        load_expected(target, None, 3)


def test_description_names_the_model_and_checkpoint_used(tmp_path):
    from ntire.submission.manifest import ModelEntry
    from ntire.submission.package import describe

    candidates = [str(tmp_path / "demo"), str(tmp_path / "small")]
    entry = ModelEntry(checkpoint=candidates, scales=(2,), description="the sample model.")
    text = describe(entry, tmp_path / "small", "mdsr-b4f16", 123_456, True)
    assert text == (
        f"the sample model; model mdsr-b4f16 (0.12M parameters); checkpoint {tmp_path / 'small'}; "
        "geometric self-ensemble x8"
    )
    released = tmp_path / "edsr_x4-4f62e9ef.pt"
    released.write_bytes(b"")
    text = describe(ModelEntry(checkpoint=str(released), scales=(4,)), released, "edsr", 43_090_000, False)
    assert text == "model edsr (43.09M parameters); checkpoint edsr_x4-4f62e9ef.pt; no self-ensemble"
