"""`ntire submit` (build, --check, one-line errors) and `make submission`, which prepares the sample
manifest's models with `ntire train` and then calls `ntire submit`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def test_submit_check_cli(tmp_path, built, dataset, capsys):
    from ntire.__main__ import main

    _, _, results = built
    good = results["bicubic"][0].zip_path
    assert main(["submit", "--check", str(good)]) == 0
    assert "valid" in capsys.readouterr().out
    lr_dir = dataset / "DIV2K" / "DIV2K_test_LR_bicubic" / "X2"
    assert main(["submit", "--check", str(good), "--lr", str(lr_dir)]) == 0
    # The x3 zip against the x2 LR folder: wrong names and sizes, each reported.
    assert main(["submit", "--check", str(results["bicubic"][1].zip_path), "--lr", str(lr_dir)]) == 1
    err = capsys.readouterr().err
    assert "0901x2.png: missing" in err and "0901x3.png: extra image" in err

    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(broken, "w") as dst:
        for name in src.namelist():
            if name != "0901x2.png":
                dst.writestr(name, src.read(name))
    assert main(["submit", "--check", str(broken), "--lr", str(lr_dir)]) == 1
    assert "0901x2.png: missing" in capsys.readouterr().err


def test_check_without_the_lr_sizes_is_not_called_valid(tmp_path, built, capsys):
    from ntire.__main__ import main

    _, _, results = built
    good = results["bicubic"][0].zip_path
    # A zip missing an image, with no inputs record beside it and no --lr: sizes and count unknown.
    lone = tmp_path / "lone" / good.name
    lone.parent.mkdir()
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(lone, "w") as dst:
        pngs = [n for n in src.namelist() if n.endswith(".png")]
        for name in src.namelist():
            if name != pngs[0]:
                dst.writestr(name, src.read(name))
    assert main(["submit", "--check", str(lone)]) == 1
    err = capsys.readouterr().err
    assert "NOT FULLY CHECKED" in err and "sizes and count not checked" in err and "--partial" in err
    assert main(["submit", "--check", str(lone), "--partial"]) == 0
    assert "valid as far as checked" in capsys.readouterr().out
    # A --lr folder that does not exist is named as missing.
    assert main(["submit", "--check", str(lone), "--lr", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no such folder" in capsys.readouterr().err


def test_submit_cli_builds_from_manifest_without_mlflow(tmp_path, write_manifest, capsys, monkeypatch):
    from ntire.__main__ import main

    manifest = write_manifest(tmp_path)
    out = tmp_path / "out"
    argv = ["submit", "--manifest", str(manifest), "--track", "unknown", "--scales", "2", "--split", "valid"]
    argv += ["--out", str(out), "--device", "cpu", "--no-progress"]
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if mlflow were not installed
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "unknown" in captured.out and "x2" in captured.out and "bicubic" in captured.out
    assert "not installed" in captured.err and "not logged" in captured.err
    assert (out / "unknown_x2.zip").is_file()
    assert (out / "unknown-report" / "results.json").is_file()


def test_submit_cli_missing_checkpoint_is_one_line_and_nothing_is_built(tmp_path, write_manifest, capsys):
    from ntire.__main__ import main

    manifest = write_manifest(tmp_path)
    data = yaml.safe_load(manifest.read_text())
    missing = tmp_path / "runs" / "mdsr" / "model"
    data["unknown"]["models"][1].update(checkpoint=str(missing), made_by="ntire train --config mdsr")
    manifest.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    # x2 would build, but x3's checkpoint is missing: the command stops before any work.
    argv = ["submit", "--manifest", str(manifest), "--track", "unknown", "--out", str(out)]
    argv += ["--no-progress", "--no-mlflow"]
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [
        f"ntire submit: error: {missing}: checkpoint not found (unknown x3/x4); "
        "make it with `ntire train --config mdsr`"
    ]
    assert not out.exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv", [["--device", "foo"], ["--tile", "-1"], ["--max-batch", "-1"]])
def test_submit_bad_option_is_one_line(tmp_path, argv):
    run = subprocess.run([sys.executable, "-m", "ntire", "submit", *argv], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 2, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert "Traceback" not in run.stderr and not run.stdout
    if argv[0] == "--device":
        assert len(lines) == 1 and lines[0].startswith("ntire submit: error: --device foo: not a torch device"), lines
    elif argv[0] == "--tile":
        want = "expected auto, 0 (the whole image) or a positive number of LR pixels"
        assert lines[-1].endswith(f"argument --tile: {argv[1]!r}: {want}"), lines
    else:
        assert lines == [f"ntire submit: error: {argv[0]} must be a positive integer, got {argv[1]}"], lines


@pytest.mark.parametrize("precision, error", [
    ("fp16", "--precision fp16: unknown precision; choose from fp32, tf32, bf16"),
    ("tf32", "--precision tf32: TF32 exists on CUDA devices only; on cpu use fp32 (or bf16)"),
])
def test_submit_precision_is_validated_in_one_line(tmp_path, write_manifest, capsys, precision, error):
    from ntire.__main__ import main

    out = tmp_path / "out"
    argv = ["submit", "--manifest", str(write_manifest(tmp_path)), "--out", str(out), "--device", "cpu",
            "--precision", precision, "--no-progress", "--no-mlflow"]
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [f"ntire submit: error: {error}"]
    assert not out.exists()


def test_submit_bf16_says_it_costs_psnr_and_records_the_precision(tmp_path, write_manifest, capsys):
    from ntire.__main__ import main
    from ntire.submission.package import parse_readme

    out = tmp_path / "out"
    argv = ["submit", "--manifest", str(write_manifest(tmp_path)), "--track", "unknown", "--scales", "2",
            "--out", str(out), "--device", "cpu", "--no-progress", "--no-mlflow"]
    assert main(argv) == 0
    assert "bf16" not in capsys.readouterr().err
    fp32_readme, _ = parse_readme(zipfile.ZipFile(out / "unknown_x2.zip").read("readme.txt").decode())
    assert fp32_readme.description.endswith("; fp32 inference")
    assert main([*argv, "--precision", "bf16"]) == 0
    captured = capsys.readouterr()
    warning = [line for line in captured.err.splitlines() if "bf16" in line]
    assert len(warning) == 1 and "costs PSNR" in warning[0] and "-0.46 dB" in warning[0]
    assert "bf16" in captured.out  # the result's header names the precision
    readme, _ = parse_readme(zipfile.ZipFile(out / "unknown_x2.zip").read("readme.txt").decode())
    assert readme.description.endswith("; bf16 inference")
    state = yaml.safe_load((out / "unknown" / "x2" / "state-sr.json").read_text())
    assert state["setup"]["precision"] == "bf16"  # a change of precision redid the images


# ---------------------------------------------------------------------------------------------
# make submission


def _make(*args: str) -> list[str]:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    # --no-print-directory: under `make test` (CI) this make is a sub-make, which would add
    # "Entering/Leaving directory" lines around its output.
    run = subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True,
                         check=True)
    return run.stdout.splitlines()


def _index(lines: list[str], needle: str) -> int:
    found = [i for i, line in enumerate(lines) if needle in line]
    assert found, f"{needle!r} not in:\n" + "\n".join(lines)
    return found[0]


def test_make_submission_target_calls_ntire_submit():
    out = "\n".join(_make("submission", "TRACK=unknown", "SCALES=3 4", "SPLIT=valid", "DATA=/d", "MANIFEST=m.yaml"))
    assert "-m ntire submit --manifest m.yaml --track unknown --scales 3 4 --split valid --data /d" in out
    default = "\n".join(_make("submission"))
    assert "-m ntire submit --manifest submissions/sample.yaml --track bicubic" in default
    assert "--scales" not in default and "--split" not in default


DEMO_MODEL = "runs/demo/model"
FINE_TUNE = "runs/submissions/sample-models/edsr-baseline-x{scale}-{track}"
FINE_TUNED_SCALES = {"bicubic": (3, 4), "unknown": (2, 3, 4)}  # bicubic x2 is the demo's model


def _sample_models(track: str) -> list[str]:
    """The exported models `make submission TRACK=track` makes for the sample manifest."""
    tuned = [f"{FINE_TUNE.format(scale=s, track=track)}/model" for s in FINE_TUNED_SCALES[track]]
    return ([DEMO_MODEL] if track == "bicubic" else []) + tuned


@pytest.mark.parametrize("track", ["bicubic", "unknown"])
def test_make_submission_makes_the_demo_then_fine_tunes_from_it_then_submits(track):
    # -B: as on a fresh clone, whatever this checkout has already trained (the venv steps show too).
    lines = _make("-B", "submission", f"TRACK={track}")
    demo = _index(lines, "-m ntire demo")
    submit = _index(lines, "-m ntire submit --manifest submissions/sample.yaml")
    assert lines[submit].split().count("--track") == 1 and f"--track {track}" in lines[submit]
    for scale in FINE_TUNED_SCALES[track]:
        config = f"submissions/train/sample_x{scale}_from_demo.yaml"
        train = _index(lines, f"-m ntire train --config {config}")
        assert demo < _index(lines, "-m ntire data sample --out data/sample") < train < submit
        assert f"--init-from {DEMO_MODEL} " in lines[train]
        assert f"--track {track} --output-dir {FINE_TUNE.format(scale=scale, track=track)}" in lines[train]
        assert (REPO / config).is_file()
    assert sum("-m ntire train" in line for line in lines) == len(FINE_TUNED_SCALES[track])
    # What make makes is what the manifest reads, scale by scale.
    from ntire.submission.manifest import load_manifest

    served = load_manifest(REPO / "submissions" / "sample.yaml").track(track)
    assert {s: served.entry_for(s).candidates for s in (2, 3, 4)} == {
        s: (DEMO_MODEL if (track, s) == ("bicubic", 2) else f"{FINE_TUNE.format(scale=s, track=track)}/model",)
        for s in (2, 3, 4)
    }


@pytest.mark.parametrize("track", ["bicubic", "unknown"])
def test_make_submission_skips_the_sample_models_that_exist(track, tmp_path):
    done = [f"{m}/config.yaml" for m in [DEMO_MODEL, *_sample_models(track)]]
    skip = [arg for path in done for arg in ("-o", path)]  # -o: as if it were there
    lines = _make("submission", f"TRACK={track}", "-o", ".venv/.installed", *skip)
    assert not any("ntire train" in line or "ntire data" in line or "ntire demo" in line for line in lines), lines
    assert any(f"-m ntire submit --manifest submissions/sample.yaml --track {track}" in line for line in lines)
    # The demo made, the fine-tunes not (yet, in an empty SAMPLE_MODELS): only they run.
    lines = _make("submission", f"TRACK={track}", "-o", ".venv/.installed", "-o", f"{DEMO_MODEL}/config.yaml",
                  f"SAMPLE_MODELS={tmp_path}")
    assert not any("ntire demo" in line for line in lines), lines
    assert sum("-m ntire train" in line for line in lines) == len(FINE_TUNED_SCALES[track]), lines


def test_make_submission_prepares_nothing_for_another_manifest():
    lines = _make("-B", "submission", "MANIFEST=submissions/div2k.yaml", "TRACK=unknown")
    assert not any("ntire train" in line or "ntire data" in line for line in lines), lines
    assert "-m ntire submit --manifest submissions/div2k.yaml --track unknown" in lines[-1]


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_sample_fine_tune_configs_start_from_the_demo_model(scale):
    from ntire.config import build_config

    config = build_config(REPO / "submissions" / "train" / f"sample_x{scale}_from_demo.yaml")
    demo = build_config("demo")
    assert config.init_from == DEMO_MODEL == f"{demo.output_dir}/model"
    assert config.model.name == demo.model.name == "edsr-baseline" and config.model.scales == (scale,)
    assert 100 <= config.max_steps <= 1000 and config.resume == "auto"  # minutes on 2 cores, resumable
    assert config.data.source == "data/sample" and config.tracking.enabled is False


def _renamed_copy(good: Path, out: Path, rename) -> Path:
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            dst.writestr(rename(name), src.read(name))
    return out


def test_a_partial_check_still_checks_the_scale_in_every_name(tmp_path, built, capsys):
    from ntire.__main__ import main

    _, _, results = built
    good = results["bicubic"][0].zip_path  # x2
    lone = _renamed_copy(good, tmp_path / good.name, lambda n: n)  # no inputs record beside it
    assert main(["submit", "--check", str(lone), "--partial", "--scale", "2"]) == 0
    capsys.readouterr()
    assert main(["submit", "--check", str(lone), "--partial", "--scale", "3"]) == 1
    err = capsys.readouterr().err
    assert "INVALID" in err and "x2.png: named for x2, but the zip is checked as x3" in err
    bare = _renamed_copy(good, tmp_path / "bare.zip", lambda n: n.replace("x2.png", ".png"))
    assert main(["submit", "--check", str(bare), "--partial"]) == 1
    assert "the name carries no scale" in capsys.readouterr().err


def test_a_second_submit_into_a_busy_folder_is_refused(tmp_path, write_manifest, capsys):
    import os

    from ntire.__main__ import main

    out = tmp_path / "out"
    code = ("import sys\nfrom ntire.locks import hold_folder\n"
            f"with hold_folder({str(out)!r}, 'ntire submit'):\n"
            "    print('held', flush=True)\n    sys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        argv = ["submit", "--manifest", str(write_manifest(tmp_path)), "--track", "unknown", "--scales", "2",
                "--split", "valid", "--out", str(out), "--device", "cpu", "--no-progress", "--no-mlflow"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"pid {holder.pid}" in err and "ntire submit" in err
        assert not list(out.rglob("*.zip"))
    finally:
        holder.stdin.close()
        holder.wait()
