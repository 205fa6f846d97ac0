"""cspwrc predict: images, folders, globs and videos; --classes/--max-det/--conf; YOLO txt and COCO results."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from test_det_tools import _checkpoint

from cspwrc.cli import predict
from cspwrc.draw import PALETTE, draw_boxes

NAMES = ["cat", "dog"]


def _sources(folder: Path) -> Path:
    """Two images (one with a numeric name, as COCO's) and a 3-frame video."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (90, 140, 3), dtype=np.uint8)).save(folder / "42.jpg")
    Image.fromarray(rng.integers(0, 255, (60, 70, 3), dtype=np.uint8)).save(folder / "b.png")
    video = cv2.VideoWriter(str(folder / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (64, 48))
    for _ in range(3):
        video.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    video.release()
    return folder


def test_glob_with_images_and_a_video(tmp_path: Path) -> None:
    weights = _checkpoint(tmp_path, [3, 9], NAMES)
    src, out = _sources(tmp_path / "src"), tmp_path / "pred"
    rc = predict.main(["--weights", str(weights), "--source", str(src / "*"), "--out", str(out), "--conf", "0",
                       "--classes", "dog", "--max-det", "5", "--save-txt", "--save-conf", "--save-json",
                       "--device", "cpu"])
    assert rc == 0
    records = json.loads((out / "detections.json").read_text())["images"]
    assert [(Path(r["file"]).name, r.get("frame")) for r in records] == [
        ("42.jpg", None), ("b.png", None), ("clip.mp4", 0), ("clip.mp4", 1), ("clip.mp4", 2)]
    dets = [d for r in records for d in r["detections"]]
    assert dets and all(len(r["detections"]) <= 5 for r in records)
    assert {(d["label"], d["class_name"], d["category_id"]) for d in dets} == {(1, "dog", 9)}

    video = cv2.VideoCapture(str(out / "clip.mp4"))
    frames = [f for ok, f in iter(video.read, (False, None)) if ok]
    assert len(frames) == 3 and frames[0].shape == (48, 64, 3)
    assert Image.open(out / "42.png").size == (140, 90)

    lines = (out / "labels" / "42.txt").read_text().splitlines()
    assert len(lines) == len(records[0]["detections"])
    for line, det in zip(lines, records[0]["detections"], strict=True):
        label, xc, _, _, h, score = line.split()
        x1, y1, x2, y2 = det["box"]
        assert label == "1" and float(score) == pytest.approx(det["score"], abs=1e-4)
        assert float(xc) == pytest.approx((x1 + x2) / 2 / 140, abs=1e-5)
        assert float(h) == pytest.approx((y2 - y1) / 90, abs=1e-5)
    assert (out / "labels" / "clip_2.txt").is_file()

    results = json.loads((out / "predictions.json").read_text())
    first = [r for r in results if r["image_id"] == 42]  # a numeric file name is the COCO image id
    assert len(first) == len(records[0]["detections"]) and {r["category_id"] for r in results} == {9}
    x1, y1, x2, y2 = records[0]["detections"][0]["box"]
    assert first[0]["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=0.02)


def test_warns_when_nothing_passes_conf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = _checkpoint(tmp_path, [3, 9], NAMES)
    src = _sources(tmp_path / "src")
    rc = predict.main(["--weights", str(weights), "--source", str(src / "b.png"), "--out", str(tmp_path / "p"),
                       "--conf", "0.99", "--device", "cpu"])
    assert rc == 0 and "warning: no detection scored >= --conf 0.99 on 1 image" in capsys.readouterr().err


@pytest.mark.parametrize("flags, fragment", [
    (["--device", "cuda"], "CUDA is not available"),
    (["--source", "nowhere/x.jpg"], "no such file or folder"),
    (["--classes", "bird"], "--classes bird: not a class index (0..1) or name"),
    (["--source", "BROKEN"], "none of its 1 file(s) could be read"),
])
def test_bad_flags_are_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str],
                              fragment: str) -> None:
    if flags[0] == "--device" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    weights = _checkpoint(tmp_path, [3, 9], NAMES)
    src = _sources(tmp_path / "src")
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    args = {"--weights": str(weights), "--source": str(src), "--out": str(tmp_path / "p"), "--device": "cpu"}
    args.update(dict(zip(flags[::2], flags[1::2], strict=True)))
    if args["--source"] == "BROKEN":
        args["--source"] = str(src / "broken.jpg")
    rc = predict.main([x for kv in args.items() for x in kv])
    err = capsys.readouterr().err
    assert rc == 2 and fragment in err and "Traceback" not in err


def test_labels_scale_with_the_image() -> None:
    """The label is as legible on a 4000 px photo as on a thumbnail: its text grows with the image."""
    color = np.array(PALETTE[1], dtype=np.uint8)

    def label_pixels(side: int) -> int:
        drawn = draw_boxes(np.zeros((side, side, 3), np.uint8), [[10.0, 40.0, 12.0, 42.0]], [1], ["cat", "dog"], [0.9])
        return int((drawn == color).all(-1).sum())

    small, large = label_pixels(120), label_pixels(2400)
    assert small > 0 and large > 10 * small
