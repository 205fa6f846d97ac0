"""export --format openvino (fp32, fp16 weights, int8 by NNCF; raw or --nms) and val of the IR folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_exported import _checkpoint, _val

from cspwrc.cli import export as export_cli
from cspwrc.cli import val as val_cli
from cspwrc.data import ensure_shapes_dataset
from cspwrc.deploy.exported import load_model

ov = pytest.importorskip("openvino", reason="the optional [openvino] extra is not installed")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_shapes_dataset(tmp_path_factory.mktemp("ov") / "s", num_train=10, num_val=6, seed=2)


@pytest.mark.parametrize("extra, printed", [([], "openvino parity on a random batch"),
                                            (["--half"], "openvino parity on a random batch"),
                                            (["--nms", "--conf", "0.001"], "NMS parity on 2 images")],
                         ids=["fp32", "fp16", "nms"])
def test_openvino_folder_reproduces_pytorch_and_scores_like_the_checkpoint(shapes, tmp_path, capsys, extra,
                                                                           printed):
    weights = _checkpoint(tmp_path)
    folder = tmp_path / "m_openvino_model"
    assert export_cli.main(["--weights", str(weights), "--format", "openvino", "--out", str(folder), *extra]) == 0
    assert printed in capsys.readouterr().out
    assert (folder / "model.xml").is_file() and (folder / "model.bin").is_file()
    model, meta = load_model(folder)
    assert meta["exported"]["format"] == "openvino" and meta["class_names"][1] == "square" and model.img == 96
    (tmp_path / "ck").mkdir()
    (tmp_path / "ov").mkdir()
    ref, got = _val(weights, shapes.parent, tmp_path / "ck"), _val(folder, shapes.parent, tmp_path / "ov")
    assert got["stats"] == pytest.approx(ref["stats"], abs=2e-3 if not extra else 5e-3)
    assert abs(got["num_detections"] - ref["num_detections"]) <= 0.02 * ref["num_detections"]


def test_one_ir_for_every_batch_size_run_at_a_static_shape(tmp_path):
    """The IR keeps a dynamic batch axis; the runner compiles one static shape per batch size (OpenVINO's CPU plugin
    runs those faster), and a batch gives what its images give one at a time."""
    weights = _checkpoint(tmp_path)
    folder = tmp_path / "m_openvino_model"
    assert export_cli.main(["--weights", str(weights), "--format", "openvino", "--out", str(folder)]) == 0
    assert ov.Core().read_model(str(folder / "model.xml")).inputs[0].get_partial_shape()[0].is_dynamic
    model, _ = load_model(folder)
    images = torch.rand(3, 3, 96, 96).numpy()
    (batch,) = model.run(images)
    one_by_one = np.concatenate([model.run(images[i : i + 1])[0] for i in range(3)])
    np.testing.assert_allclose(batch, one_by_one, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("head", [{}, {"reg_max": 1, "cls_branch": "dw"}], ids=["dfl", "direct-regression"])
def test_openvino_int8_by_nncf(shapes, tmp_path, capsys, head):
    """The DFL head's expectation (a MatMul) stays float; a head without DFL has none to leave out."""
    pytest.importorskip("nncf", reason="the optional [openvino] extra (nncf) is not installed")
    weights = _checkpoint(tmp_path, **head)
    folder = tmp_path / "m8_openvino_model"
    assert export_cli.main(["--weights", str(weights), "--format", "openvino", "--int8", "--data", str(shapes),
                            "--calib", "8", "--out", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "openvino int8 (NNCF), calibrated on 8 train images" in out and "int8 check on 6 val images" in out
    model, _ = load_model(folder)
    assert model.num_classes == 5


def test_a_folder_without_an_openvino_model_is_exit_2(shapes, tmp_path, capsys):
    broken = tmp_path / "b_openvino_model"
    broken.mkdir()
    (broken / "model.xml").write_text("<net>not really</net>")
    assert val_cli.main(["--weights", str(broken), "--ann", str(shapes.parent / "annotations" / "instances_val.json"),
                         "--images", str(shapes.parent / "images" / "val")]) == 2
    assert "not a readable OpenVINO model" in capsys.readouterr().err
