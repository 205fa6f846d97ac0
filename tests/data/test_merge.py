"""merge_coco: images and annotations of several files in one, with the checks that keep ids meaningful."""

import json

import pytest

from cspwrc.data.checks import DataError
from cspwrc.data.merge import merge_coco

CATS = [{"id": 1, "name": "a"}, {"id": 3, "name": "b"}]


def _write(path, image_ids, ann_ids, cats=CATS):
    data = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 10, "height": 10} for i in image_ids],
        "annotations": [{"id": a, "image_id": image_ids[0], "category_id": 3, "bbox": [1, 1, 2, 2],
                         "area": 4, "iscrowd": 0} for a in ann_ids],
        "categories": cats,
    }
    path.write_text(json.dumps(data))
    return path


def test_merge_keeps_every_record_and_categories(tmp_path):
    a = _write(tmp_path / "a.json", [1, 2], [10])
    b = _write(tmp_path / "b.json", [5], [11, 12])
    out = json.loads(merge_coco([a, b], tmp_path / "out" / "all.json").read_text())
    assert [im["id"] for im in out["images"]] == [1, 2, 5]
    assert [an["id"] for an in out["annotations"]] == [10, 11, 12]
    assert out["categories"] == CATS


def test_merge_refuses_duplicate_ids_naming_both_files(tmp_path):
    a = _write(tmp_path / "a.json", [1], [10])
    b = _write(tmp_path / "b.json", [1], [11])
    with pytest.raises(DataError, match=r"b\.json.*images id=1.*a\.json"):
        merge_coco([a, b], tmp_path / "all.json")
    assert not (tmp_path / "all.json").exists()


def test_merge_refuses_different_categories(tmp_path):
    a = _write(tmp_path / "a.json", [1], [10])
    b = _write(tmp_path / "b.json", [2], [11], cats=CATS[:1])
    with pytest.raises(DataError, match="categories"):
        merge_coco([a, b], tmp_path / "all.json")
