"""export --int8: onnxruntime static QDQ calibrated on the user's images, the float box decoding, the mAP check."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from test_exported import _checkpoint

from cspwrc.cli import export as export_cli
from cspwrc.data import ensure_shapes_dataset
from cspwrc.deploy.exported import load_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")


@pytest.fixture(scope="module")
def data_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_shapes_dataset(tmp_path_factory.mktemp("q") / "s", num_train=12, num_val=4, seed=4)


def test_int8_export_quantizes_the_network_keeps_the_decoding_float_and_the_metadata(data_yaml, tmp_path, capsys):
    weights = _checkpoint(tmp_path)
    out = tmp_path / "m8.onnx"
    assert export_cli.main(["--weights", str(weights), "--out", str(out), "--int8", "--data", str(data_yaml),
                            "--calib", "10"]) == 0
    printed = capsys.readouterr().out
    assert "onnx int8 QDQ, network quantized, decoding float, calibrated on 10 train images" in printed, printed
    assert "int8 check on 4 val images" in printed
    graph = onnx.load(str(out)).graph
    produced_by = {o: n for n in graph.node for o in n.output}
    consumers = {i: n for n in graph.node for i in n.input}

    def dequantized(node: onnx.NodeProto) -> bool:
        return any(i in produced_by and produced_by[i].op_type == "DequantizeLinear" for i in node.input)

    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs and all(dequantized(c) for c in convs)  # every conv reads int8 data and int8 weights
    # The backbone's SiLU runs on int8 data in and out (onnxruntime fuses it into QLinearSigmoid / QLinearMul) ...
    silu = [n for n in graph.node if n.name.startswith("/backbone/") and n.op_type == "Sigmoid"]
    assert silu and all(dequantized(n) and consumers[n.output[0]].op_type == "QuantizeLinear" for n in silu)
    # ... while the decoding after the head (DFL softmax, class sigmoid, anchor points) reads float only.
    decode = [n for n in graph.node if n.name.count("/") == 1 and n.op_type not in ("Constant", "DequantizeLinear")]
    assert {"Softmax", "Sigmoid"} <= {n.op_type for n in decode} and not any(dequantized(n) for n in decode)
    model, meta = load_model(out)
    assert meta["class_names"][0] == "circle" and model.img == 96
    assert "int8 QDQ" in model.meta["quantization"]


@pytest.mark.parametrize("extra, message", [
    (["--int8"], "--int8 needs --format onnx or openvino, no --half, and --data"),
    (["--int8", "--data", "DATA", "--half"], "--int8 needs --format onnx or openvino, no --half"),
    (["--int8", "--data", "DATA", "--format", "torchscript"], "--int8 needs --format onnx or openvino"),
])
def test_int8_flag_misuse_is_exit_2(data_yaml, tmp_path, capsys, extra, message):
    args = ["--model", "cspwrc_n", "--out", str(tmp_path / "x.onnx"),
            *[str(data_yaml) if a == "DATA" else a for a in extra]]
    with pytest.raises(SystemExit) as exc:
        export_cli.main(args)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_too_few_or_missing_calibration_images_are_exit_2(data_yaml, tmp_path, capsys):
    weights = _checkpoint(tmp_path)
    base = ["--weights", str(weights), "--out", str(tmp_path / "x.onnx"), "--int8"]
    assert export_cli.main([*base, "--data", str(data_yaml), "--calib", "4"]) == 2
    assert "at least 8 calibration images" in capsys.readouterr().err
    assert export_cli.main([*base, "--data", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
    small = ensure_shapes_dataset(tmp_path / "small", num_train=5, num_val=2, seed=1)
    assert export_cli.main([*base, "--data", str(small)]) == 2
    assert "train split has 5 usable images" in capsys.readouterr().err


def test_an_int8_model_that_loses_its_accuracy_is_reported_loudly(data_yaml, tmp_path, capsys, monkeypatch):
    """Scores of float 0.50 and int8 0.40 (a 0.10 drop): the file is written and the export exits 3 saying so."""
    maps = iter([0.50, 0.40])
    monkeypatch.setattr(export_cli, "coco_evaluate", lambda *a, **k: SimpleNamespace(map=next(maps)))
    weights = _checkpoint(tmp_path)
    out = tmp_path / "bad.onnx"
    assert export_cli.main(["--weights", str(weights), "--out", str(out), "--int8", "--data", str(data_yaml),
                            "--calib", "8"]) == 3
    err = capsys.readouterr().err
    assert "float 0.5000, int8 0.4000 (-0.1000)" in err and "do not deploy it" in err and out.is_file()
