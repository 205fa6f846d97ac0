"""cspwrc.deploy.exported: `cspwrc val` / `predict` on an exported ONNX file score what the checkpoint scores."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

from cspwrc.cli import benchmark as benchmark_cli
from cspwrc.cli import export as export_cli
from cspwrc.cli import predict as predict_cli
from cspwrc.cli import val as val_cli
from cspwrc.data import ensure_shapes_dataset
from cspwrc.det import build_detector
from cspwrc.engine.checkpoint import save_checkpoint

pytest.importorskip("onnxruntime")
IMG = 96


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_shapes_dataset(tmp_path_factory.mktemp("shapes") / "s", num_train=4, num_val=6, seed=2).parent


def _checkpoint(folder: Path, **head: object) -> Path:
    """A small detector whose final layers are spread (an untrained head scores every point alike: ties), saved as
    the trainer saves it."""
    torch.manual_seed(0)
    model = build_detector("cspwrc_n", 5, neck={"channels": [16, 32, 64]}, head=head).eval()
    branches = (model.head.o2o_cls_branches, model.head.o2o_box_branches) if model.end2end else (
        model.head.cls_branches, model.head.box_branches)
    with torch.no_grad():
        for branch in (*branches[0], *branches[1]):
            nn.init.normal_(branch[-1].weight, std=0.3)
            branch[-1].bias.normal_(-2.0, 1.0)
    meta = {"model": model.config, "num_classes": 5, "class_names": ["circle", "square", "triangle", "star", "cross"],
            "category_ids": [1, 2, 3, 4, 5], "img": IMG}
    return save_checkpoint(folder, "m", model.state_dict(), meta, state=None)


def _val(weights: Path, shapes: Path, out: Path) -> dict:
    args = ["--weights", str(weights), "--ann", str(shapes / "annotations" / "instances_val.json"),
            "--images", str(shapes / "images" / "val"), "--json", str(out / "val.json"), "--out",
            str(out / "dets.json"), "--no-progress", "--device", "cpu"]
    assert val_cli.main(args) == 0
    return json.loads((out / "val.json").read_text()) | {"dets": json.loads((out / "dets.json").read_text())}


@pytest.mark.parametrize("head, extra, name", [({}, [], "m.onnx"), ({}, ["--nms", "--conf", "0.001"], "m.onnx"),
                                               ({"reg_max": 1, "cls_branch": "dw", "end2end": True}, [], "m.onnx"),
                                               ({}, ["--format", "torchscript"], "m.ts")],
                         ids=["raw", "nms-graph", "end2end-raw", "torchscript"])
def test_val_of_the_exported_file_matches_the_checkpoint(shapes, tmp_path, head, extra, name):
    weights = _checkpoint(tmp_path, **head)
    onnx_file = tmp_path / name
    assert export_cli.main(["--weights", str(weights), "--out", str(onnx_file), *extra]) == 0
    (tmp_path / "ck").mkdir()
    (tmp_path / "ox").mkdir()
    ref, got = _val(weights, shapes, tmp_path / "ck"), _val(onnx_file, shapes, tmp_path / "ox")
    assert ref["num_detections"] > 50 and ref["img"] == got["img"] == IMG
    assert got["stats"] == pytest.approx(ref["stats"], abs=2e-3)
    # The same detections. This synthetic image has flat regions where many points score exactly alike; among such
    # ties NMS and top-k may keep another box when onnxruntime rounds differently from PyTorch (CPUs differ in
    # which), so the count may move a little and only untied detections are matched by box (0.05 px) and score.
    assert abs(got["num_detections"] - ref["num_detections"]) <= 0.03 * ref["num_detections"]
    for a, b in ((ref["dets"], got["dets"]), (got["dets"], ref["dets"])):
        assert _matched(_untied(a), b) >= 0.95
    best = sorted(ref["dets"], key=lambda d: -d["score"])[0]
    assert sorted(got["dets"], key=lambda d: -d["score"])[0]["score"] == pytest.approx(best["score"], abs=1e-4)


def _untied(dets: list[dict]) -> list[dict]:
    """The detections (COCO results) whose score no other detection of the same image and class shares."""
    def key(d: dict) -> tuple[int, int, float]:
        return d["image_id"], d["category_id"], round(d["score"], 4)

    counts = Counter(key(d) for d in dets)
    return [d for d in dets if counts[key(d)] == 1]


def _matched(dets: list[dict], others: list[dict]) -> float:
    """The fraction of `dets` with a twin in `others`: same image and class, box within 0.05 px, score 1e-4."""
    pool: dict[tuple[int, int], list[dict]] = {}
    for d in others:
        pool.setdefault((d["image_id"], d["category_id"]), []).append(d)
    hits = sum(any(abs(d["score"] - o["score"]) <= 1e-4 and
                   max(abs(a - b) for a, b in zip(d["bbox"], o["bbox"], strict=True)) <= 0.05
                   for o in pool.get((d["image_id"], d["category_id"]), [])) for d in dets)
    return hits / len(dets) if dets else 1.0


def test_predict_takes_an_onnx_file(shapes, tmp_path):
    weights = _checkpoint(tmp_path)
    onnx_file = tmp_path / "m.onnx"
    assert export_cli.main(["--weights", str(weights), "--out", str(onnx_file)]) == 0
    out = {}
    for name, w in (("ck", weights), ("ox", onnx_file)):
        assert predict_cli.main(["--weights", str(w), "--source", str(shapes / "images" / "val"), "--out",
                                 str(tmp_path / name), "--conf", "0.3", "--device", "cpu"]) == 0
        out[name] = json.loads((tmp_path / name / "detections.json").read_text())["images"]
    # The same detections up to NMS tie-breaks: this synthetic head gives many points exactly equal scores, and the
    # float rounding of onnxruntime vs PyTorch may pick another of two tied boxes (one more or one fewer kept).
    counts = [(len(a["detections"]), len(b["detections"])) for a, b in zip(out["ck"], out["ox"], strict=True)]
    assert all(abs(a - b) <= 1 for a, b in counts) and sum(a for a, _ in counts) > 20
    assert out["ox"][0]["detections"][0]["class_name"] == out["ck"][0]["detections"][0]["class_name"]


def test_foreign_truncated_or_unlabelled_onnx_is_exit_2(shapes, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    args = ["--ann", str(shapes / "annotations" / "instances_val.json"), "--images", str(shapes / "images" / "val")]
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07 this is not a protobuf of a model")
    assert val_cli.main(["--weights", str(junk), *args]) == 2
    assert f"{junk}: not a readable ONNX model" in capsys.readouterr().err
    weights = _checkpoint(tmp_path)
    good = tmp_path / "m.onnx"
    assert export_cli.main(["--weights", str(weights), "--out", str(good)]) == 0
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert val_cli.main(["--weights", str(truncated), *args]) == 2
    assert f"{truncated}: not a readable ONNX model" in capsys.readouterr().err
    bare = onnx.load(str(good))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    assert val_cli.main(["--weights", str(tmp_path / "bare.onnx"), *args]) == 2
    assert "no cspwrc metadata" in capsys.readouterr().err
    assert val_cli.main(["--weights", str(good), "--img", "128", *args]) == 2
    assert "exported for 96x96 inputs" in capsys.readouterr().err
    torchscript = tmp_path / "m.ts"
    assert export_cli.main(["--weights", str(weights), "--out", str(torchscript), "--format", "torchscript"]) == 0
    capsys.readouterr()
    junk_ts = tmp_path / "junk.ts"
    junk_ts.write_bytes(torchscript.read_bytes()[:1000])
    assert val_cli.main(["--weights", str(junk_ts), *args]) == 2
    assert f"{junk_ts}: not a readable TorchScript model" in capsys.readouterr().err


def test_benchmark_times_a_checkpoint_and_its_exports(tmp_path, capsys):
    """`cspwrc benchmark --exported` times trained models in their own runtime at their own size."""
    weights = _checkpoint(tmp_path)
    onnx_file = tmp_path / "m.onnx"
    assert export_cli.main(["--weights", str(weights), "--out", str(onnx_file)]) == 0
    out = tmp_path / "bench.json"
    assert benchmark_cli.main(["--exported", str(weights), str(onnx_file), "--threads", "1", "--peak-size", "64",
                               "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["exported"]
    assert [r["format"] for r in rows] == ["pytorch (folded, channels_last)", "onnx"]
    assert all(r["img"] == IMG and r["runtime_ms"] > 0 and r["with_post_ms"] >= 0 for r in rows)
    assert "| graph ms | with post-processing ms |" in capsys.readouterr().out
