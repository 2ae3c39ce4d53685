"""manifest: YAML -> SubmissionManifest with errors naming the key; which checkpoint serves a scale
(first existing candidate; a model folder or a released file, never a run folder); a missing one is
a one-line error saying how to make it."""

from __future__ import annotations

from pathlib import Path

import pytest

from ntire.errors import CheckpointError, ConfigError
from ntire.submission.manifest import (
    ModelEntry,
    checkpoint_exists,
    find_checkpoint,
    load_manifest,
    manifest_checkpoints,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((REPO / "submissions").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_manifests_load(path):
    manifest = load_manifest(path)
    assert manifest.tracks


def test_manifest_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbicubic: {models: [{checkpoint: a, scales: [2], self_ensembel: true}]}\n")
    with pytest.raises(ConfigError, match="self_ensembel"):
        load_manifest(bad)
    bad.write_text("name: x\nbicubic: {models: [{checkpoint: a, scales: [2]}, {checkpoint: b, scales: [2, 3]}]}\n")
    with pytest.raises(ConfigError, match="x2 is served by both a and b"):
        load_manifest(bad)


def test_the_fallback_key_is_gone(tmp_path):
    """The builder does not train: a manifest asking it to is an unknown-key error naming the file."""
    bad = tmp_path / "old.yaml"
    bad.write_text("name: x\nbicubic: {models: [{checkpoint: a, scales: [2], fallback: {output: runs/q}}]}\n")
    with pytest.raises(ConfigError, match=r"old\.yaml: bicubic\.models\[0\]: unknown key\(s\) fallback"):
        load_manifest(bad)


def test_unreadable_manifest_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml: cannot read"):
        load_manifest(tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="list.yaml: expected a submission manifest"):
        load_manifest(bad)


def test_sample_manifest_serves_bicubic_x2_with_the_demo_model():
    manifest = load_manifest(REPO / "submissions" / "sample.yaml")
    x2 = manifest.track("bicubic").entry_for(2)
    assert x2.candidates == ("runs/demo/model",) and x2.made_by == "make demo"
    x3 = "runs/submissions/sample-models/edsr-baseline-x3-bicubic/model"  # fine-tuned from the demo's
    assert manifest.track("bicubic").entry_for(3).candidates == (x3,)
    assert all(e.made_by for t in manifest.tracks for e in manifest.track(t).models)


def test_checkpoint_candidates_must_be_paths(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbicubic: {models: [{checkpoint: [], scales: [2]}]}\n")
    with pytest.raises(ConfigError, match="checkpoint is empty"):
        load_manifest(bad)
    bad.write_text("name: x\nbicubic: {models: [{checkpoint: [a, {b: c}], scales: [2]}]}\n")
    with pytest.raises(ConfigError, match="checkpoint"):
        load_manifest(bad)


def _model_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"weights")
    (path / "config.yaml").write_text("model: {}\n")
    return path


def test_checkpoint_exists_knows_model_folders_and_released_files_not_run_folders(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_config.yaml").write_text("max_steps: 1\n")  # what a training run folder holds
    (run / "config.yaml").write_text("model: {}\n")  # even a stray model config does not make it one
    model = _model_folder(run / "model")
    assert not checkpoint_exists(run)
    assert checkpoint_exists(model)
    assert checkpoint_exists(model / "model.safetensors")  # config.yaml beside it
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes(b"")
    assert not checkpoint_exists(lone)
    for name in ("edsr_x4-4f62e9ef.pt", "mdsr.pth"):
        (tmp_path / name).write_bytes(b"")
        assert checkpoint_exists(tmp_path / name)
    (tmp_path / "notes.txt").write_text("")
    assert not checkpoint_exists(tmp_path / "notes.txt")
    weights_only = tmp_path / "half"
    weights_only.mkdir()
    (weights_only / "model.safetensors").write_bytes(b"")  # an export interrupted before config.yaml
    assert not checkpoint_exists(weights_only)
    assert not checkpoint_exists(tmp_path / "nowhere")


def test_first_existing_candidate_wins(tmp_path):
    small = _model_folder(tmp_path / "small" / "model")
    entry = ModelEntry(checkpoint=[str(tmp_path / "demo" / "model"), str(small)], scales=(2,))
    assert find_checkpoint(entry) == small
    demo = _model_folder(tmp_path / "demo" / "model")
    assert find_checkpoint(entry) == demo


def test_missing_checkpoint_is_one_line_naming_path_and_how_to_make_it(tmp_path):
    entry = ModelEntry(checkpoint=str(tmp_path / "x2"), scales=(2,), made_by="make sample-models TRACK=bicubic")
    with pytest.raises(CheckpointError) as e:
        find_checkpoint(entry, "bicubic")
    assert str(e.value) == (
        f"{tmp_path / 'x2'}: checkpoint not found (bicubic x2); make it with `make sample-models TRACK=bicubic`"
    )
    both = ModelEntry(checkpoint=["a/model", "b/model"], scales=(3, 4))
    with pytest.raises(CheckpointError) as e:
        find_checkpoint(both)
    message = str(e.value)
    assert "\n" not in message and message.startswith("a/model or b/model: checkpoint not found (x3/x4); ")
    assert "ntire train" in message and "ntire convert" in message


def test_a_run_folder_is_refused_with_the_model_folder_to_give(tmp_path):
    run = tmp_path / "runs" / "edsr_x2"
    _model_folder(run / "model")
    (run / "train_config.yaml").write_text("max_steps: 1\n")
    with pytest.raises(CheckpointError, match=r"training run folder; its model is .*edsr_x2/model$"):
        find_checkpoint(ModelEntry(checkpoint=str(run), scales=(2,)), "bicubic")


def test_manifest_checkpoints_maps_every_scale_of_a_track(tmp_path):
    mdsr = _model_folder(tmp_path / "mdsr")
    edsr = _model_folder(tmp_path / "edsr")
    path = tmp_path / "m.yaml"
    path.write_text(
        f"name: m\nbicubic: {{models: [{{checkpoint: {edsr}, scales: [2]}}, "
        f"{{checkpoint: [{tmp_path / 'no'}, {mdsr}], scales: [4, 3]}}]}}\n"
    )
    assert manifest_checkpoints(path, "bicubic") == {2: edsr, 3: mdsr, 4: mdsr}
    with pytest.raises(ConfigError, match="has no `unknown:` track"):
        manifest_checkpoints(path, "unknown")
    path.write_text(f"name: m\nbicubic: {{models: [{{checkpoint: {tmp_path / 'gone'}, scales: [2]}}]}}\n")
    with pytest.raises(CheckpointError, match="gone: checkpoint not found"):
        manifest_checkpoints(path, "bicubic")


def test_manifest_checkpoints_defaults_to_the_sample_manifest(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no runs/ here: the sample's checkpoints are all missing
    message = r"^runs/demo/model: checkpoint not found \(bicubic x2\); make it with `make demo`$"
    with pytest.raises(CheckpointError, match=message):
        manifest_checkpoints(None, "bicubic")


def test_tile_is_auto_by_default_and_takes_whole_or_a_size(tmp_path):
    path = tmp_path / "m.yaml"
    base = "name: x\nbicubic: {models: [{checkpoint: a, scales: [2]}]}\n"
    path.write_text(base)
    assert load_manifest(path).tile == "auto"
    for text, want in (("auto", "auto"), ("AUTO", "auto"), ("0", 0), ("null", None), ("256", 256)):
        path.write_text(base + f"tile: {text}\n")
        assert load_manifest(path).tile == want, text
    for text in ("-1", "big", "true", "12.5"):
        path.write_text(base + f"tile: {text}\n")
        with pytest.raises(ConfigError, match="tile"):
            load_manifest(path)
