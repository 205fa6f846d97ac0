"""End-to-end ONNX (NonMaxSuppression in the graph) and the metadata every exported ONNX file carries."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import cspwrc
from cspwrc.cli import export as export_cli
from cspwrc.data import CocoDetection
from cspwrc.deploy import export as export_mod
from cspwrc.deploy.export import EndToEnd, deploy_model, export_onnx_nms, run_onnx_nms
from cspwrc.deploy.parity import compare_nms
from cspwrc.deploy.postprocess import onnx_metadata_numpy
from cspwrc.det import build_detector
from cspwrc.det.postprocess import postprocess, topk_detections
from cspwrc.engine.checkpoint import save_weights
from randomize import randomize_norm_and_wrc_
from shared_data import shared_dataset

ort = pytest.importorskip("onnxruntime")


class ToyRaw(nn.Module):
    """A stand-in ``forward_raw`` with many overlapping boxes and spread scores, so NMS, the pre-NMS top-k and
    the per-image cap all bite: ``images [B, 3, S, S]`` -> ``[B, (S/4)^2, 4 + C]``."""

    def __init__(self, img: int = 64, num_classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 4 + num_classes, 8, stride=4, padding=2)
        nn.init.normal_(self.conv.weight, std=0.1)
        ys, xs = torch.meshgrid(torch.arange(img // 4), torch.arange(img // 4), indexing="ij")
        self.register_buffer("grid", torch.stack((xs, ys), -1).reshape(-1, 2).float() * 4 + 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        y = self.conv(images).flatten(2).transpose(1, 2)
        xy, wh = self.grid + 6 * torch.tanh(y[..., :2]), 6 + 30 * torch.sigmoid(y[..., 2:4])
        return torch.cat((xy - wh / 2, xy + wh / 2, torch.sigmoid(y[..., 4:])), -1)


def _split(got: dict[str, np.ndarray], b: int) -> dict[str, np.ndarray]:
    mine = got["batch_index"] == b
    return {k: v[mine] for k, v in got.items()}


@pytest.mark.parametrize("score_thresh, max_det, pre_nms_topk", [(0.3, 300, 3000), (0.05, 15, 60)])
def test_nms_graph_matches_postprocess_on_a_synthetic_case(tmp_path, score_thresh, max_det, pre_nms_topk):
    e2e = EndToEnd(ToyRaw().eval(), 64, score_thresh, 0.5, max_det, pre_nms_topk)
    path = export_onnx_nms(e2e, tmp_path / "e2e.onnx", 64)
    assert "NonMaxSuppression" in {n.op_type for n in pytest.importorskip("onnx").load(str(path)).graph.node}
    images = torch.rand(3, 3, 64, 64)  # traced with batch 1
    got = run_onnx_nms(path, images)
    with torch.no_grad():
        expected = postprocess(e2e.raw_model(images), score_thresh, 0.5, max_det, pre_nms_topk, image_size=(64, 64))
    with torch.no_grad():
        raw = e2e.raw_model(images)
    for b, exp in enumerate(expected):
        assert 5 < len(exp["labels"]) <= max_det  # a case where suppression and caps matter
        mine = _split(got, b)
        result = compare_nms(raw[b].numpy(), {k: v.numpy() for k, v in exp.items()}, mine, 64, score_thresh, 0.5,
                             max_det, pre_nms_topk)
        assert result.faults == [] and result.matched == len(exp["labels"]) and result.max_box_diff < 1e-3
        np.testing.assert_allclose(mine["scores"], exp["scores"].numpy(), atol=1e-5)  # best first, per image


def test_nms_graph_matches_the_detector_on_real_images(tmp_path):
    """The plain cspwrc_n, random: many near-tied scores at the top-k and max_det cuts, which onnxruntime and PyTorch
    may cut differently (float rounding); the tolerant comparison excuses those and compares the rest."""
    root = shared_dataset("coco128")
    data = CocoDetection(root / "annotations" / "instances_val.json", root / "images", img=128, progress=False)
    images = torch.stack([data[i][0] for i in range(4)]).float() / 255
    torch.manual_seed(0)
    detector = randomize_norm_and_wrc_(build_detector("cspwrc_n", num_classes=80)).eval()
    with torch.no_grad():  # untrained heads score every point alike (the prior): spread them, ties are arbitrary
        for branch in (*detector.head.cls_branches, *detector.head.box_branches):
            nn.init.normal_(branch[-1].weight, std=0.3)
            branch[-1].bias.normal_(-2.0, 1.0)
    cfg = detector.cfg.post
    e2e = EndToEnd(deploy_model(detector), 128, cfg.score_thresh, cfg.nms_iou, cfg.max_det, cfg.pre_nms_topk)
    got = run_onnx_nms(export_onnx_nms(e2e, tmp_path / "e2e.onnx", 128), images)
    with torch.no_grad():
        expected, raw = detector(images), detector.forward_raw(images)  # what eval_det scores, and its source
    for b, exp in enumerate(expected):
        assert len(exp["labels"]) > 20 and len(np.unique(exp["labels"])) > 5
        result = compare_nms(raw[b].numpy(), {k: v.numpy() for k, v in exp.items()}, _split(got, b), 128,
                             cfg.score_thresh, cfg.nms_iou, cfg.max_det, cfg.pre_nms_topk, image=b)
        assert result.faults == [] and result.max_box_diff < 1e-2
        assert result.matched > 20, result  # the excused near-cut and near-tie detections are not most of them


def test_export_cli_fails_with_exit_3_when_onnx_disagrees(tmp_path, capsys, monkeypatch):
    """A real disagreement (here: onnxruntime's boxes of image 0 moved by 1 px) is exit 3 with one line saying
    which image, what differed and the tolerance; the same export without it passes."""
    args = ["--model", "cspwrc_n", "--num-classes", "2", "--img", "64", "--out", str(tmp_path / "m.onnx"), "--nms"]
    assert export_cli.main(args) == 0
    assert "NMS parity on 2 images: " in capsys.readouterr().out
    real = export_mod.run_onnx_nms

    def moved(path, images):
        got = real(path, images)
        return {**got, "boxes": got["boxes"] + (got["batch_index"] == 0)[:, None].astype(np.float32)}

    monkeypatch.setattr(export_mod, "run_onnx_nms", moved)
    assert export_cli.main(args) == 3
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("stopped: the exported NMS graph does not reproduce"), err
    assert "tolerance: boxes 0.05 px" in err and "image 0: PyTorch kept " in err and " px off" in err
    assert "image 1" not in err


def test_export_cli_writes_metadata_and_nms_graph(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    args = ["--model", "cspwrc_n", "--num-classes", "2", "--img", "64", "--out", str(out)]
    assert export_cli.main(args) == 0
    meta = onnx_metadata_numpy(ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]))
    assert meta["names"] == ["0", "1"] and meta["imgsz"] == [64, 64] and meta["stride"] == 32
    assert meta["cspwrc_version"] == cspwrc.__version__ and meta["nms"] is None and "RGB in [0, 1]" in meta["input"]
    assert export_cli.main([*args, "--nms", "--conf", "0.2", "--max-det", "7"]) == 0
    assert "NMS parity on 2 images: " in capsys.readouterr().out
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["boxes", "scores", "labels", "batch_index"]
    assert onnx_metadata_numpy(session)["nms"] == {"score_thresh": 0.2, "iou": 0.6, "max_det": 7, "pre_nms_topk": 3000}
    assert json.loads(session.get_modelmeta().custom_metadata_map["names"]) == ["0", "1"]


@pytest.mark.parametrize("extra", [["--nms", "--format", "torchscript"], ["--conf", "0.3"]])
def test_export_cli_rejects_nms_flag_misuse(tmp_path, extra, capsys):
    with pytest.raises(SystemExit) as exc:
        export_cli.main(["--model", "cspwrc_n", "--out", str(tmp_path / "x.onnx"), *extra])
    assert exc.value.code == 2 and "--nms" in capsys.readouterr().err


def test_topk_graph_of_an_end_to_end_head_matches_topk_detections(tmp_path):
    """nms=False: the graph ends in a TopK, no NonMaxSuppression, and keeps what topk_detections keeps."""
    e2e = EndToEnd(ToyRaw().eval(), 64, 0.3, 0.5, 20, 3000, nms=False)
    path = export_onnx_nms(e2e, tmp_path / "topk.onnx", 64)
    ops = {n.op_type for n in pytest.importorskip("onnx").load(str(path)).graph.node}
    assert "TopK" in ops and "NonMaxSuppression" not in ops
    images = torch.rand(3, 3, 64, 64)
    got = run_onnx_nms(path, images)
    with torch.no_grad():
        expected = topk_detections(e2e.raw_model(images), 0.3, 20, image_size=(64, 64))
    for b, exp in enumerate(expected):
        mine = _split(got, b)
        assert 5 < len(exp["scores"]) <= 20 and len(mine["scores"]) == len(exp["scores"])
        np.testing.assert_allclose(mine["scores"], exp["scores"].numpy(), atol=1e-5)
        np.testing.assert_allclose(mine["boxes"], exp["boxes"].numpy(), atol=1e-3)
        np.testing.assert_array_equal(mine["labels"], exp["labels"].numpy())


def test_export_cli_end_to_end_checkpoint_exports_without_nms(tmp_path, capsys):
    """A checkpoint with head.end2end: --nms writes the top-k graph (checked like the NMS graph), its metadata says
    so; --iou has no meaning for it (exit 2)."""
    torch.manual_seed(0)
    model = build_detector("cspwrc_n", 2, neck={"channels": [16, 32, 64]},
                           head={"reg_max": 1, "cls_branch": "dw", "end2end": True}).eval()
    with torch.no_grad():  # untrained heads score every point alike (the prior): spread them, ties are arbitrary
        for branch in (*model.head.o2o_cls_branches, *model.head.o2o_box_branches):
            nn.init.normal_(branch[-1].weight, std=0.3)
            branch[-1].bias.normal_(-2.0, 1.0)
    weights = tmp_path / "e2e.safetensors"
    save_weights(weights, model.state_dict(), {"model": model.config, "num_classes": 2})
    out = tmp_path / "e2e.onnx"
    args = ["--weights", str(weights), "--img", "64", "--out", str(out), "--nms", "--conf", "0.001", "--max-det", "9"]
    assert export_cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "top-k of the end-to-end head, no NMS" in printed and "NMS parity on 2 images: " in printed
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = onnx_metadata_numpy(session)
    assert meta["end2end"] is True and meta["nms"] == {"score_thresh": 0.001, "max_det": 9, "topk": True}
    got = run_onnx_nms(out, torch.rand(2, 3, 64, 64))
    assert np.bincount(got["batch_index"]).tolist() == [9, 9]
    assert export_cli.main([*args, "--iou", "0.5"]) == 2
    assert "end-to-end head" in capsys.readouterr().err
