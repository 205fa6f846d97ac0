"""ONNX / TorchScript export of a folded detector: parity with the unfolded PyTorch model, dynamic batch, CLI."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

import cspwrc  # noqa: F401 - registers the cspwrc models
from cspwrc.deploy import export as export_mod
from cspwrc.deploy.export import deploy_model, export_onnx, export_torchscript, half_onnx
from cspwrc.deploy.postprocess import postprocess_numpy
from cspwrc.det import build_detector
from randomize import randomize_norm_and_wrc_

# torch.jit.load/trace are deprecated upstream but are exactly what TorchScript users call.
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
ROOT = Path(__file__).resolve().parents[2]
IMG = 64
BACKBONE = "cspwrc_n"


def load_tool(name: str) -> ModuleType:
    """The module behind tools/NAME.py, in-process (cheaper than a subprocess that re-imports torch)."""
    return importlib.import_module(f"cspwrc.cli.{name}")


@pytest.fixture(scope="module")
def detector() -> torch.nn.Module:
    """A tiny detector with random BN statistics and WRC weights (relu-normalised) so that folding is non-trivial."""
    torch.manual_seed(0)
    wrc = {"wrc_weights": "channel", "wrc_normalize": "relu"}
    model = build_detector({"name": BACKBONE, "kwargs": wrc}, num_classes=3, neck={"shortcut": True})
    return randomize_norm_and_wrc_(model).eval()


def _reference(detector: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return detector.forward_raw(images)


def _assert_raw_close(actual: torch.Tensor | np.ndarray, expected: torch.Tensor) -> None:
    actual = torch.as_tensor(actual)
    assert actual.shape == expected.shape
    # Boxes are in pixels (values up to IMG), probabilities in [0, 1]: absolute tolerances per part.
    torch.testing.assert_close(actual[..., :4], expected[..., :4], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(actual[..., 4:], expected[..., 4:], atol=1e-4, rtol=0)


def test_onnx_parity_dynamic_batch_and_postprocess(detector: torch.nn.Module, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    path = export_onnx(deploy_model(detector), tmp_path / "det.onnx", IMG)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # traced with batch 1: batch 3 proves the dynamic axis
        images = torch.rand(batch, 3, IMG, IMG)
        (raw,) = session.run(None, {"images": images.numpy()})
        _assert_raw_close(raw, _reference(detector, images))
    # What the caller does after the exported model reproduces the PyTorch eval output (incl. NMS).
    with torch.no_grad():
        expected = detector(images)
    cfg = detector.cfg.post
    actual = postprocess_numpy(raw, cfg.score_thresh, cfg.nms_iou, cfg.max_det, cfg.pre_nms_topk, (IMG, IMG))
    for act, exp in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(act["labels"], exp["labels"].numpy())
        np.testing.assert_allclose(act["boxes"], exp["boxes"].numpy(), atol=1e-3)
        np.testing.assert_allclose(act["scores"], exp["scores"].numpy(), atol=1e-4)


def test_torchscript_parity(detector: torch.nn.Module, tmp_path: Path) -> None:
    path = export_torchscript(deploy_model(detector), tmp_path / "det.ts", IMG)
    loaded = torch.jit.load(str(path))
    images = torch.rand(2, 3, IMG, IMG)
    with torch.no_grad():
        _assert_raw_close(loaded(images), _reference(detector, images))


def test_deploy_model_leaves_the_detector_unfolded(detector: torch.nn.Module) -> None:
    before = {k: v.clone() for k, v in detector.state_dict().items()}
    deploy_model(detector)
    after = detector.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_export_cli_from_model_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.ts"
    tool = load_tool("export")
    assert tool.main(["--model", BACKBONE, "--num-classes", "2", "--format", "torchscript", "--img", "64",
                      "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "torchscript parity on a random batch: boxes max " in text
    assert torch.jit.load(str(out))(torch.rand(1, 3, 64, 64)).shape == (1, 64 + 16 + 4, 4 + 2)


def test_export_cli_rejects_bad_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert load_tool("export").main(["--model", "resnet18", "--img", "70", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "multiple of 32" in capsys.readouterr().err


def test_half_onnx_has_fp16_weights_and_runs_on_onnxruntime_cpu(detector: torch.nn.Module, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime.transformers.float16")
    fp32 = export_onnx(deploy_model(detector), tmp_path / "fp32.onnx", IMG)
    half = export_onnx(deploy_model(detector), tmp_path / "fp16.onnx", IMG)
    half_onnx(half)
    proto = onnx.load(str(half))
    onnx.checker.check_model(proto)
    kinds = {onnx.TensorProto.DataType.Name(t.data_type) for t in proto.graph.initializer if len(t.dims)}
    assert kinds == {"FLOAT16"}  # every weight tensor; scalar constants may stay fp32 around blocked ops
    assert half.stat().st_size < 0.6 * fp32.stat().st_size
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # the caller feeds fp32
    session = ort.InferenceSession(str(half), providers=["CPUExecutionProvider"])
    images = torch.rand(2, 3, IMG, IMG)
    (raw,) = session.run(None, {"images": images.numpy()})
    expected = _reference(detector, images)
    assert raw.dtype == np.float32 and raw.shape == tuple(expected.shape)
    # fp16 keeps ~3 significant digits: boxes (pixels up to IMG) within 0.25 px, probabilities within 0.01.
    torch.testing.assert_close(torch.from_numpy(raw[..., :4]), expected[..., :4], atol=0.25, rtol=0.01)
    torch.testing.assert_close(torch.from_numpy(raw[..., 4:]), expected[..., 4:], atol=0.01, rtol=0)
    with pytest.raises(SystemExit):
        load_tool("export").main(["--model", BACKBONE, "--format", "torchscript", "--half", "--out",
                                  str(tmp_path / "x.ts")])
    assert "--half needs --format onnx" in capsys.readouterr().err


def test_export_cli_plain_onnx_mismatch_is_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain ONNX export whose onnxruntime output differs beyond the tolerance stops with exit 3 and one line
    (the largest differences and the tolerance; no 'inf'); within it, the same export passes with its report."""
    pytest.importorskip("onnxruntime")
    args = ["--model", BACKBONE, "--num-classes", "2", "--img", "64", "--out", str(tmp_path / "m.onnx")]
    tool = load_tool("export")
    assert tool.main(args) == 0 and "onnx parity on a random batch: boxes max " in capsys.readouterr().out
    real = export_mod.run_onnx
    monkeypatch.setattr(export_mod, "run_onnx", lambda path, images: real(path, images) + 0.5)
    assert tool.main(args) == 3
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "does not reproduce the PyTorch output" in err and "inf" not in err
    assert "boxes max 0.5 px, probabilities max 0.5 (tolerance: boxes 0.05 px, scores 0.0001" in err
