"""Detection metrics on a few boxes whose P/R/F1, best-F1 confidence and confusion matrix are worked out by hand."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from cspwrc.engine.metrics import RECALL_GRID, ImageDetections, coco_detection_stats, detection_stats, match_predictions

NAMES = ["a", "b", "c"]  # c has no instances
A1, A2, B1, FAR = [0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70]
# image 1: GT a, a, b. Predictions (class, box, score): a on A1 (TP), a on A1 again (duplicate: FP),
# b on A2 (wrong class: FP), b on B1 (TP), a on empty ground (FP).
PREDS = [(0, A1, 0.9), (0, A1, 0.8), (1, A2, 0.7), (1, B1, 0.6), (0, FAR, 0.3)]
# image 2: one b, nothing predicted (a miss).


def _boxes(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def _images() -> list[ImageDetections]:
    first = ImageDetections(_boxes([A1, A2, B1]), torch.tensor([0, 0, 1]), _boxes([p[1] for p in PREDS]),
                            torch.tensor([p[2] for p in PREDS]), torch.tensor([p[0] for p in PREDS]))
    second = ImageDetections(_boxes([B1]), torch.tensor([1]), _boxes([]), torch.zeros(0),
                             torch.zeros(0, dtype=torch.int64))
    return [first, second]


def test_true_positives_in_score_order() -> None:
    assert match_predictions(_images()[0]).tolist() == [True, False, False, True, False]


def test_hand_computed_p_r_f1_and_confusion() -> None:
    stats = detection_stats(_images(), NAMES)
    # mean F1 over a and b by threshold t: (0.8, 0.9] 1/3, (0.6, 0.8] 1/4, (0.3, 0.6] 1/2, <= 0.3 0.45
    # -> best: the lowest grid point above 0.3
    assert stats.conf == pytest.approx(0.301)
    assert stats.instances == [2, 2, 0]
    assert stats.precision == pytest.approx([0.5, 0.5, None])  # a: 1 TP of 2 kept; b: 1 of 2
    assert stats.recall == pytest.approx([0.5, 0.5, None])
    assert stats.f1 == pytest.approx([0.5, 0.5, None])
    # rows: predicted a, b, c, background; columns: true a, b, c, background
    assert stats.confusion == [[1, 0, 0, 1],   # a on A1; the duplicate a has no ground truth left
                               [1, 1, 0, 0],   # b on the a box (A2); b on B1
                               [0, 0, 0, 0],
                               [0, 1, 0, 0]]   # image 2's b was missed (the FAR box is below the confidence)
    # class a's PR curve: precision 1 up to recall 0.5, nothing beyond
    assert np.array_equal(stats.pr_curve[0], np.where(RECALL_GRID <= 0.5, 1.0, 0.0))
    assert stats.f1_curve.shape == (3, 1001) and np.all(stats.f1_curve[2] == 0)
    assert json.loads(json.dumps(stats.summary()))["confusion_matrix"]["labels"] == ["a", "b", "c", "background"]


def test_no_predictions_at_all() -> None:
    none = (torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    images = [ImageDetections(i.gt_boxes, i.gt_labels, *none) for i in _images()]
    stats = detection_stats(images, NAMES)
    assert stats.precision == [0.0, 0.0, None] and stats.recall == [0.0, 0.0, None]
    assert stats.confusion[-1] == [2, 2, 0, 0]  # every object missed


def test_coco_input_gives_the_same_numbers(tmp_path: Path) -> None:
    def xywh(b):
        return [b[0], b[1], b[2] - b[0], b[3] - b[1]]

    cats = [{"id": 5, "name": "a"}, {"id": 6, "name": "b"}, {"id": 9, "name": "c"}]
    cat_of = [5, 6, 9]
    gts = [(1, 0, A1), (1, 0, A2), (1, 1, B1), (2, 1, B1)]
    anns = [{"id": k + 1, "image_id": img, "category_id": cat_of[c], "bbox": xywh(b), "area": 100, "iscrowd": 0}
            for k, (img, c, b) in enumerate(gts)]
    anns.append({"id": 99, "image_id": 2, "category_id": 5, "bbox": xywh(FAR), "area": 100, "iscrowd": 1})  # ignored
    path = tmp_path / "gt.json"
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 80, "height": 80} for i in (1, 2)]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
    results = [{"image_id": 1, "category_id": cat_of[c], "bbox": xywh(b), "score": s} for c, b, s in PREDS]
    results.append({"image_id": 1, "category_id": 77, "bbox": xywh(A1), "score": 0.99})  # not a scored category
    stats = coco_detection_stats(gt, results, [1, 2])
    ref = detection_stats(_images(), NAMES)
    assert stats.names == NAMES and stats.instances == ref.instances and stats.conf == ref.conf
    assert stats.confusion == ref.confusion and stats.f1 == pytest.approx(ref.f1)
