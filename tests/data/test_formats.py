"""YOLO (Ultralytics) and Pascal VOC data read through the COCO checks; the ``convert`` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cspwrc.cli.convert import main as convert_main
from cspwrc.cli.main import main as cspwrc_main
from cspwrc.data.checks import DataError, verify_coco
from cspwrc.data.config import build_datasets, load_data_config
from cspwrc.data.formats import yolo_label_path
from shared_data import shared_dataset


def _image(path: Path, w: int = 64, h: int = 48) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(path)


def _yolo_set(root: Path, labels: dict[str, str]) -> Path:
    """Images ``root/images/<stem>.jpg`` (64x48) with ``labels/<stem>.txt``; returns the data YAML."""
    for stem, text in labels.items():
        _image(root / "images" / f"{stem}.jpg")
        if text is not None:
            (root / "labels").mkdir(exist_ok=True)
            (root / "labels" / f"{stem}.txt").write_text(text)
    (root / "data.yaml").write_text("train: images\nval: images\nnames: {0: a, 1: b}\n")
    return root / "data.yaml"


def test_yolo_label_path_maps_the_last_images_folder():
    assert yolo_label_path(Path("/d/images/x/images/a.jpg")) == Path("/d/images/x/labels/a.txt")
    with pytest.raises(DataError, match="no 'images' folder"):
        yolo_label_path(Path("/d/pics/a.jpg"))


def test_yolo_boxes_background_and_skip_policy(tmp_path):
    data = _yolo_set(tmp_path, {"1": "0 0.5 0.5 0.5 0.5\n\n1 0.25 0.25 0.25 0.5\n",
                                "2": "7 0.5 0.5 0.2 0.2\n0 0.5 0.5 0 0.1\n1 0.5 0.5 0.4 0.4 \n",
                                "3": None})
    train, _ = build_datasets(data, img=64, progress=False)
    report = train.report
    np.testing.assert_allclose(report.boxes[1], [[16, 12, 48, 36], [8, 0, 24, 24]], atol=1e-4)
    assert report.box_categories[1].tolist() == [0, 1] and train.class_names == ["a", "b"]
    assert len(report.boxes[3]) == 0 and sorted(report.images) == [1, 2, 3]  # no label file: background
    assert report.counts["annotation unknown category"] == 1 and report.counts["bbox degenerate"] == 1
    label = tmp_path / "labels" / "2.txt"
    assert {p.file for p in report.skipped} == {f"{label}:1", f"{label}:2"}


def test_yolo_unreadable_image_is_skipped_and_counted(tmp_path):
    data = _yolo_set(tmp_path, {"1": "0 0.5 0.5 0.5 0.5\n", "2": "0 0.5 0.5 0.5 0.5\n"})
    (tmp_path / "images" / "2.jpg").write_bytes(b"not a jpeg")
    report = build_datasets(data, img=64, progress=False)[0].report
    assert sorted(report.images) == [1] and report.counts["image not an image"] == 1
    assert report.counts["annotations of skipped images"] == 1


def test_yolo_split_from_a_list_file(tmp_path):
    _yolo_set(tmp_path, {"a": "0 0.5 0.5 0.5 0.5\n", "b": "1 0.5 0.5 0.5 0.5\n", "c": None})
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "val.txt").write_text("../images/b.jpg\n\n../images/c.jpg\n")
    (tmp_path / "data.yaml").write_text("train: images\nval: lists/val.txt\nnames: [a, b]\n")
    train, val = build_datasets(tmp_path / "data.yaml", img=64, progress=False)
    assert len(train) == 3 and [e.file_name for e in val.report.images.values()] == ["b.jpg", "c.jpg"]
    assert sorted(val.report.images) == [1, 2]  # stems are not numbers: ids 1..N in list order
    assert val.report.box_categories[1].tolist() == [1]


def test_yolo_polygon_line_becomes_its_bounding_box(tmp_path):
    data = _yolo_set(tmp_path, {"1": "1 0.25 0.25 0.75 0.25 0.5 0.75\n"})
    report = build_datasets(data, img=64, progress=False)[0].report
    np.testing.assert_allclose(report.boxes[1], [[16, 12, 48, 36]], atol=1e-4)


@pytest.mark.parametrize("line, fault", [
    ("0 0.5 0.5 0.5\n", "got 4 numbers"),
    ("0 0.5 x 0.5 0.5\n", "expected numbers"),
    ("0.5 0.5 0.5 0.5 0.5\n", "class '0.5' is not an integer"),
])
def test_malformed_yolo_line_is_fatal_with_file_and_line(tmp_path, line, fault):
    data = _yolo_set(tmp_path, {"1": "0 0.5 0.5 0.5 0.5\n" + line})
    with pytest.raises(DataError, match=rf"labels/1\.txt: line 2: .*{fault}"):
        build_datasets(data, img=64, progress=False)


@pytest.mark.parametrize("text, where, fault", [
    ("path: .\ntrain: images\nval: images\nnames: {0: a, 2: b}\n", "names", "dict keys must be"),
    ("train: images\nval: images\nnames: [a]\nnc: 2\n", "nc", "differs from the 1 names"),
    ("train: images\nval: images\n", "top level", "missing key 'names'"),
    ("format: coco\ntrain: images\nval: images\nnames: [a]\n", "format", "not one of yolo, voc"),
    ("train: images\nval: images\nnames: [a]\ndownlaod: x\n", "top level", "did you mean 'download'"),
])
def test_bad_ultralytics_yaml_is_fatal_and_named(tmp_path, text, where, fault):
    (tmp_path / "data.yaml").write_text(text)
    with pytest.raises(DataError, match=rf"data\.yaml: {where}: .*{fault}"):
        load_data_config(tmp_path / "data.yaml")


def test_yolo_route_gives_the_coco_route_boxes_on_coco128():
    root = shared_dataset("coco128")
    coco = [verify_coco(root / "annotations" / f"instances_{s}.json", root / "images", progress=False)
            for s in ("train", "val")]
    cats = sorted(coco[0].categories, key=lambda c: c["id"])
    label = {c["id"]: i for i, c in enumerate(cats)}  # YOLO class k = k-th COCO id (PROVENANCE.md)
    cfg = Path(__file__).resolve().parents[2] / "configs" / "data" / "coco128_yolo.yaml"
    yolo, _ = build_datasets(cfg, img=64, progress=False)
    assert yolo.class_names == [c["name"] for c in cats]
    assert sorted(yolo.report.images) == sorted([*coco[0].images, *coco[1].images])
    assert not yolo.report.skipped
    for ref in coco:
        for image_id, boxes in ref.boxes.items():
            np.testing.assert_allclose(yolo.report.boxes[image_id], boxes, atol=0.05)
            assert yolo.report.box_categories[image_id].tolist() == [label[c] for c in ref.box_categories[image_id]]


VOC_XML = """<annotation><filename>{id}.jpg</filename>
<size><width>64</width><height>48</height><depth>3</depth></size>{objects}</annotation>"""
VOC_OBJ = "<object><name>{name}</name><difficult>{difficult}</difficult>" \
          "<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"


def _voc_set(root: Path, objects: dict[str, list[tuple[str, int, tuple[int, ...]]]]) -> Path:
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for voc_id, objs in objects.items():
        _image(root / "JPEGImages" / f"{voc_id}.jpg")
        body = "".join(VOC_OBJ.format(name=n, difficult=d, b=b) for n, d, b in objs)
        (root / "Annotations" / f"{voc_id}.xml").write_text(VOC_XML.format(id=voc_id, objects=body))
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(objects) + "\n")
    (root / "data.yaml").write_text("format: voc\ntrain: train\nval: train\nnames: [cat, dog]\n")
    return root / "data.yaml"


def test_voc_boxes_difficult_and_unknown_names(tmp_path):
    data = _voc_set(tmp_path, {"2008_000001": [("dog", 0, (11, 21, 30, 40)), ("cat", 1, (1, 1, 64, 48))],
                               "2008_000002": [("horse", 0, (5, 5, 20, 20))]})
    train, val = build_datasets(data, img=64, progress=False)
    report = train.report
    np.testing.assert_allclose(report.boxes[1], [[10, 20, 30, 40]])  # 1-based inclusive -> continuous
    assert report.box_categories[1].tolist() == [1] and train.class_names == ["cat", "dog"]
    assert [a["iscrowd"] for a in report.gt_annotations] == [0, 1]  # difficult: eval-ignored, not trained
    assert report.counts["annotation unknown category"] == 1 and "'horse'" in report.skipped[0].file
    assert len(val) == 2


@pytest.mark.parametrize("xml, where, fault", [
    ("<annotation><size><width>64</width>", "line 1 column", "malformed XML"),
    ("<annotation></annotation>", "annotation", "missing <size>"),
    ("<annotation><size><width>0</width><height>48</height></size></annotation>", "size", "must be positive"),
    ("<annotation><size><width>64</width><height>48</height></size><object><name>cat</name></object></annotation>",
     "object 1", "missing <bndbox>"),
])
def test_malformed_voc_xml_is_fatal_and_named(tmp_path, xml, where, fault):
    data = _voc_set(tmp_path, {"a": []})
    (tmp_path / "Annotations" / "a.xml").write_text(xml)
    with pytest.raises(DataError, match=rf"a\.xml: {where}.*{fault}"):
        build_datasets(data, img=64, progress=False)


def test_convert_writes_coco_that_reads_back_the_same(tmp_path, capsys):
    data = _voc_set(tmp_path / "voc", {"x1": [("dog", 0, (11, 21, 30, 40))], "x2": [("cat", 0, (2, 2, 9, 9))]})
    assert convert_main([str(data), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    written = json.loads((tmp_path / "out" / "instances_train.json").read_text())
    assert "source" not in written["annotations"][0] and written["categories"][1] == {"id": 1, "name": "dog"}
    again, _ = build_datasets(tmp_path / "out" / "data.yaml", img=64, progress=False)
    np.testing.assert_allclose(again.report.boxes[1], [[10, 20, 30, 40]])
    assert cspwrc_main(["convert", str(tmp_path / "out" / "data.yaml"), "--out", str(tmp_path / "o2")]) == 2
    assert "already COCO format" in capsys.readouterr().err
