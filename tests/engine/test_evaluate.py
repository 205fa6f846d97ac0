"""COCO evaluation: ground truth written as predictions scores AP 1.0; misses and wrong classes score lower."""

import contextlib
import io
import json

import pytest
from pycocotools.coco import COCO

from cspwrc.atomic import write_json
from cspwrc.engine.evaluate import STAT_NAMES, coco_evaluate


def _coco(tmp_path):
    # Non-contiguous category ids (like COCO's 1..90 with gaps) and boxes of all three COCO area buckets.
    images = [{"id": i, "file_name": f"{i}.jpg", "height": 480, "width": 640} for i in (3, 8, 21)]
    cats = [{"id": 2, "name": "circle"}, {"id": 7, "name": "square"}, {"id": 40, "name": "triangle"}]
    anns, aid = [], 1
    for img in images:
        for cat, box in zip((2, 7, 40), ([10, 20, 20, 20], [100, 100, 60, 80], [300, 50, 200, 300]), strict=True):
            anns.append({"id": aid, "image_id": img["id"], "category_id": cat, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0})
            aid += 1
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _as_predictions(gt):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in gt.dataset["annotations"]]


def test_ground_truth_as_predictions_is_perfect(tmp_path):
    gt = _coco(tmp_path)
    res = coco_evaluate(gt, _as_predictions(gt))
    assert len(res.stats) == len(STAT_NAMES) == 12
    assert res.map == pytest.approx(1.0) and res.map50 == pytest.approx(1.0)
    assert all(s == pytest.approx(1.0) for s in res.stats[3:6])  # small, medium, large all present
    assert [(r.category_id, r.name) for r in res.per_class] == [(2, "circle"), (7, "square"), (40, "triangle")]
    assert all(r.ap == pytest.approx(1.0) for r in res.per_class)
    assert "triangle" in res.format()


def test_wrong_class_and_missing_lower_the_score(tmp_path):
    gt = _coco(tmp_path)
    preds = _as_predictions(gt)
    for p in preds:
        if p["category_id"] == 40:
            p["category_id"] = 7  # every triangle predicted as a square
    res = coco_evaluate(gt, preds)
    by_id = {r.category_id: r for r in res.per_class}
    assert by_id[40].ap == 0.0 and by_id[2].ap == pytest.approx(1.0)
    assert by_id[7].ap < 1.0  # the false positives rank alongside the true squares
    assert res.map < 0.7


def test_shifted_boxes_fail_strict_iou(tmp_path):
    gt = _coco(tmp_path)
    preds = _as_predictions(gt)
    for p in preds:
        x, y, w, h = p["bbox"]
        p["bbox"] = [x + 0.15 * w, y, w, h]  # IoU ~0.74: counts at .50 but not at .75
    res = coco_evaluate(gt, preds)
    assert res.map50 == pytest.approx(1.0) and res.stats[2] == pytest.approx(0.0)


def test_empty_predictions_and_image_subset(tmp_path):
    gt = _coco(tmp_path)
    assert coco_evaluate(gt, []).map == 0.0
    preds = [p for p in _as_predictions(gt) if p["image_id"] == 8]
    assert coco_evaluate(gt, preds, image_ids=[8]).map == pytest.approx(1.0)
    assert coco_evaluate(gt, preds).map < 0.5  # the other images' objects count as misses


def test_per_class_p_r_f1_and_classes_without_instances(tmp_path):
    gt = _coco(tmp_path)
    perfect = coco_evaluate(gt, _as_predictions(gt))
    assert all((r.instances, r.precision, r.recall, r.f1) == (3, 1.0, 1.0, 1.0) for r in perfect.per_class)
    assert perfect.detection.confusion == [[3, 0, 0, 0], [0, 3, 0, 0], [0, 0, 3, 0], [0, 0, 0, 0]]
    # drop every triangle from the ground truth: the class is kept, marked, and never NaN in JSON
    gt.dataset["annotations"] = [a for a in gt.dataset["annotations"] if a["category_id"] != 40]
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    res = coco_evaluate(gt, _as_predictions(gt))
    row = {r.category_id: r for r in res.per_class}[40]
    assert (row.instances, row.precision, row.recall, row.f1) == (0, None, None, None)
    assert "without instances in these images: triangle" in res.format()
    assert "no instances" in res.format().splitlines()[-1]
    write_json(tmp_path / "m.json", res.summary())
    rows = json.loads((tmp_path / "m.json").read_text(), parse_constant=pytest.fail)["per_class"]
    assert rows[-1]["ap"] is None and rows[-1]["instances"] == 0
