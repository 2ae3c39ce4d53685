"""ONNX export: tiny EDSR/MDSR files run under onnxruntime (CPU) at several sizes and match torch."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from ntire import __version__
from ntire.config import ModelConfig
from ntire.errors import ConfigError, NtireError
from ntire.models.build import build_model
from ntire.models.onnx_export import (
    INPUT_NAME,
    OUTPUT_NAME,
    ExportError,
    export_onnx,
    onnx_paths,
    read_onnx_metadata,
    require_onnx,
    run_onnx,
    verify_onnx,
)

EDSR = ModelConfig(kind="edsr", scales=(3,), n_blocks=1, n_feats=8)
MDSR = ModelConfig(kind="mdsr", scales=(2, 3, 4), n_blocks=1, n_feats=8)
TOLERANCE = 1e-3  # on the 0-255 scale
# (N, H, W): two different image sizes (dynamic H/W) and two batch sizes (dynamic N).
SHAPES = [(1, 7, 9), (2, 12, 5)]


def _model(config, seed=0):
    torch.manual_seed(seed)
    return build_model(config).eval()


def _lr(n, h, w, seed=0):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 255


def _max_diff(path, model, scale):
    worst = 0.0
    for i, (n, h, w) in enumerate(SHAPES):
        lr = _lr(n, h, w, seed=i)
        with torch.no_grad():
            expected = model(lr, scale).numpy()
        got = run_onnx(path, lr)
        assert got.shape == (n, 3, h * scale, w * scale) and got.dtype == np.float32
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


@pytest.fixture(scope="module")
def ort():
    return pytest.importorskip("onnxruntime")


def test_edsr_runs_under_onnxruntime_at_two_sizes_and_matches_torch(ort, tmp_path):
    model = _model(EDSR)
    path = export_onnx(model, EDSR, tmp_path / "edsr.onnx")
    assert path == tmp_path / "edsr.onnx" and path.is_file()
    assert list(tmp_path.iterdir()) == [path]  # one self-contained file, no temp or external data left
    diff = _max_diff(path, model, 3)
    print(f"EDSR x3 max |onnxruntime - torch| = {diff:.3g}")
    assert diff <= TOLERANCE


@pytest.mark.slow
def test_every_mdsr_scale_is_its_own_file_and_matches_torch(ort, tmp_path):
    model = _model(MDSR)
    for scale in MDSR.scales:
        path = export_onnx(model, MDSR, tmp_path / f"mdsr_x{scale}.onnx", scale=scale)
        diff = _max_diff(path, model, scale)
        print(f"MDSR x{scale} max |onnxruntime - torch| = {diff:.3g}")
        assert diff <= TOLERANCE
        assert read_onnx_metadata(path)["scale"] == str(scale)


def test_graph_has_dynamic_batch_height_width_and_metadata(ort, tmp_path):
    import onnx

    path = export_onnx(_model(EDSR), EDSR, tmp_path / "m.onnx", metadata={"source": "edsr.pt"})
    proto = onnx.load(str(path))
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert (inp.name, out.name) == (INPUT_NAME, OUTPUT_NAME)
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims[1] == 3 and all(isinstance(d, str) and d for d in (dims[0], dims[2], dims[3]))
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.opset_import[0].version == 18
    meta = read_onnx_metadata(path)
    assert meta["model"] == EDSR.name and meta["kind"] == "edsr" and meta["scale"] == "3"
    assert meta["rgb_range"] == "255" and meta["ntire_version"] == __version__
    assert meta["source"] == "edsr.pt" and "[0, 255]" in meta["input"] and "unrounded" in meta["output"]


def test_uint8_option_rounds_and_clips_as_ntire_upscale_does(ort, tmp_path):
    from ntire.images import tensor_to_image

    model = _model(EDSR)
    path = export_onnx(model, EDSR, tmp_path / "u8.onnx", uint8=True)
    lr = _lr(1, 10, 11)
    got = run_onnx(path, lr)
    assert got.dtype == np.uint8 and got.shape == (1, 3, 30, 33)
    with torch.no_grad():
        expected = tensor_to_image(model(lr, 3)).transpose(2, 0, 1)[None]
    # Float differences of ~1e-5 can only flip a value lying on a rounding boundary.
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    assert (got == expected).mean() > 0.999
    assert "uint8" in read_onnx_metadata(path)["output"]
    assert verify_onnx(path, model, EDSR, scale=3) <= 1


def test_verify_reports_the_difference_and_catches_a_wrong_file(ort, tmp_path):
    model = _model(EDSR)
    path = export_onnx(model, EDSR, tmp_path / "m.onnx")
    assert verify_onnx(path, model, EDSR, scale=3) <= TOLERANCE
    with pytest.raises(ExportError, match="differs from torch"):
        verify_onnx(path, _model(EDSR, seed=1), EDSR, scale=3)


def test_file_names_say_the_scale():
    assert {s: p.as_posix() for s, p in onnx_paths("out/m.onnx", EDSR, [3]).items()} == {3: "out/m.onnx"}
    assert {s: p.as_posix() for s, p in onnx_paths("out/m.onnx", MDSR, [2, 3, 4]).items()} == {
        2: "out/m_x2.onnx", 3: "out/m_x3.onnx", 4: "out/m_x4.onnx"}
    assert {s: p.as_posix() for s, p in onnx_paths("out", MDSR, [2, 4]).items()} == {
        2: f"out/{MDSR.name}_x2.onnx", 4: f"out/{MDSR.name}_x4.onnx"}


def test_scale_errors_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"x2 is not served.*x3 only"):
        export_onnx(_model(EDSR), EDSR, tmp_path / "m.onnx", scale=2)
    with pytest.raises(ConfigError, match="say which one"):
        export_onnx(_model(MDSR), MDSR, tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


def test_missing_onnx_packages_name_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # makes `import onnxscript` raise ImportError
    with pytest.raises(ConfigError, match=r"onnxscript.*pip install 'ntire\[onnx\]'") as e:
        export_onnx(_model(EDSR), EDSR, tmp_path / "m.onnx")
    assert isinstance(e.value, NtireError) and "\n" not in str(e.value)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ConfigError, match="onnxscript, onnxruntime"):
        require_onnx(runtime=True)
