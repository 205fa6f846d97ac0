"""Every bad-input case of issue 6 (data side): build the bad input, check the exact behaviour."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from cocofiles import ann_rec, image_rec
from PIL import Image

from cspwrc.data import cache, image_io
from cspwrc.data.checks import DataError, verify_coco
from cspwrc.data.coco import CocoDetection
from cspwrc.data.image_io import load_image
from cspwrc.errors import SampleReadError

CATS = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]


def verify(ann, images):
    return verify_coco(ann, images, progress=False)


# ----------------------------------------------------------------------------------------------- fatal
def test_malformed_json_names_file_and_position(tmp_path):
    ann = tmp_path / "bad.json"
    ann.write_text('{"images": [1, 2,, ]}')
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=r"bad\.json: line 1 column 18: malformed JSON"):
        verify(ann, tmp_path / "images")


@pytest.mark.parametrize("mutate, record, fault", [
    (lambda d: d.pop("annotations"), "top level", "missing key 'annotations'"),
    (lambda d: d["images"][0].pop("file_name"), r"images\[0\] \(id=1\)", "missing key 'file_name'"),
    (lambda d: d["images"][1].update(width="64"), r"images\[1\] \(id=2\)\.width", "expected int, got str"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), r"annotations\[0\] \(id=1\)\.bbox", "expected 4 numbers"),
    (lambda d: d["annotations"][0].update(bbox=[1, "2", 3, 4]), r"annotations\[0\] \(id=1\)\.bbox",
     "expected int or float"),
    (lambda d: d["annotations"][0].update(category_id=True), r"annotations\[0\] \(id=1\)\.category_id",
     "expected int, got bool"),
    (lambda d: d["categories"].append({"id": 1, "name": "c"}), r"categories\[2\] \(id=1\)",
     r"duplicate id 1 \(first at categories\[0\]\)"),
    (lambda d: d["images"].append(image_rec(1)), r"images\[2\] \(id=1\)", "duplicate id 1"),
    (lambda d: d["annotations"].append(ann_rec(1, 1, 1, [0, 0, 5, 5])), r"annotations\[1\] \(id=1\)", "duplicate id 1"),
    (lambda d: d.update(images={}), "images", "expected list, got dict"),
])
def test_schema_faults_are_fatal_and_named(coco_builder, mutate, record, fault):
    ann, images = coco_builder([image_rec(1), image_rec(2)], [ann_rec(1, 1, 1, [0, 0, 5, 5])], CATS)
    data = json.loads(ann.read_text())
    mutate(data)
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match=rf"instances\.json: {record}: {fault}"):
        verify(ann, images)


@pytest.mark.parametrize("file_name, fault", [
    ("/etc/passwd", "is absolute"),
    ("../secret.jpg", "escapes the image directory"),
    ("sub/../../secret.jpg", "escapes the image directory"),
    ("..\\secret.jpg", "escapes the image directory"),
    ("C:\\Windows\\x.jpg", "is absolute"),
    ("", "is absolute or empty"),
])
def test_file_name_escaping_the_image_dir_is_refused(coco_builder, tmp_path, file_name, fault):
    (tmp_path / "coco").mkdir()
    (tmp_path / "coco" / "secret.jpg").write_bytes(b"")  # exists, so only the check can refuse it
    ann, images = coco_builder([image_rec(1)], [], CATS)
    data = json.loads(ann.read_text())
    data["images"][0]["file_name"] = file_name
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match=rf"images\[0\] \(id=1\): file_name .* {fault}"):
        verify(ann, images)


def test_no_usable_image_is_fatal(coco_builder):
    ann, images = coco_builder([image_rec(1)], [], CATS, write_files=False)
    with pytest.raises(DataError, match=r"no usable images.*image file missing"):
        verify(ann, images)


# ----------------------------------------------------------------------------------------------- broken images
def _break(path, how):
    if how == "missing":
        path.unlink()
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    elif how == "not an image":
        path.write_text("this is not a picture")
    elif how == "permission":
        path.chmod(0)


@pytest.mark.parametrize("how, kind", [("missing", "image missing"), ("empty", "image empty"),
                                       ("truncated", "image corrupt"), ("not an image", "image not an image"),
                                       ("permission", "image permission")])
def test_broken_image_is_skipped_and_counted(coco_builder, monkeypatch, how, kind):
    if how == "permission" and os.geteuid() == 0:  # root reads any file: make the open fail as for a user
        real_open = image_io.Image.open

        def denied(path, *args, **kw):
            if Path(path).name == "001.jpg":
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kw)

        monkeypatch.setattr(image_io.Image, "open", denied)
    ann, images = coco_builder([image_rec(1, 96, 96), image_rec(2)], [ann_rec(1, 1, 1, [0, 0, 5, 5]),
                                                                      ann_rec(2, 2, 2, [1, 1, 5, 5])], CATS)
    _break(images / "001.jpg", how)
    report = verify(ann, images)
    assert sorted(report.images) == [2]
    assert report.counts[kind] == 1 and report.counts["annotations of skipped images"] == 1
    assert len(report.skipped) == 1 and report.skipped[0].file == "001.jpg"
    assert report.skipped[0].record == "image id=1"
    assert "2 records skipped" not in report.summary() and kind in report.summary()


# ----------------------------------------------------------------------------------------------- image modes



def _palette() -> Image.Image:
    im = Image.new("P", (8, 6), 1)
    im.putpalette([0, 0, 0, 200, 50, 25] + [0] * 762)
    return im


def _sixteen_bit() -> Image.Image:
    return Image.fromarray(np.full((6, 8), 25700, dtype=np.uint16))  # 25700 / 257 = 100


@pytest.mark.parametrize("name, make, fmt, expected", [
    ("gray.png", lambda: Image.new("L", (8, 6), 100), "PNG", (100, 100, 100)),
    ("rgba.png", lambda: Image.new("RGBA", (8, 6), (10, 20, 30, 0)), "PNG", (10, 20, 30)),
    ("palette.png", _palette, "PNG", (200, 50, 25)),
    ("16bit.png", _sixteen_bit, "PNG", (100, 100, 100)),
    ("cmyk.jpg", lambda: Image.new("CMYK", (8, 6), (0, 0, 0, 0)), "JPEG", (255, 255, 255)),
])
def test_image_modes_convert_to_rgb(coco_builder, name, make, fmt, expected):
    ann, images = coco_builder([{"id": 1, "file_name": name, "width": 8, "height": 6}], [], CATS, write_files=False)
    make().save(images / name, format=fmt, **({"quality": 100} if fmt == "JPEG" else {}))
    report = verify(ann, images)
    array = load_image(report.images[1])
    assert array.shape == (6, 8, 3) and array.dtype == np.uint8
    assert np.abs(array.astype(int) - expected).max() <= 2


def _exif_image(path) -> None:
    """A raw 40 wide x 20 high JPEG tagged orientation 6 (display rotated 90 degrees clockwise: 20 x 40).

    Raw red block at x 0..10, y 0..10 (top-left); displayed it is at the top-right: x 10..20, y 0..10.
    """
    raw = np.full((20, 40, 3), 30, np.uint8)
    raw[0:10, 0:10] = (240, 10, 10)
    exif = Image.Exif()
    exif[image_io.EXIF_ORIENTATION] = 6
    Image.fromarray(raw).save(path, format="JPEG", quality=100, exif=exif.tobytes())


@pytest.mark.parametrize("json_wh, box, exif_used", [((20, 40), [10, 0, 10, 10], True),
                                                      ((40, 20), [0, 0, 10, 10], False)])
def test_exif_orientation_follows_the_frame_of_the_json_size(coco_builder, json_wh, box, exif_used):
    rec = {"id": 1, "file_name": "rot.jpg", "width": json_wh[0], "height": json_wh[1]}
    ann, images = coco_builder([rec], [ann_rec(1, 1, 1, box)], CATS, write_files=False)
    _exif_image(images / "rot.jpg")
    report = verify(ann, images)
    assert report.images[1].exif_transpose is exif_used
    image, target = CocoDetection(ann, images, img=64, report=report)[0]
    assert target["orig_size"] == (json_wh[1], json_wh[0])
    x0, y0, x1, y1 = target["boxes"][0].round().int().tolist()
    inside = image[:, y0 + 2:y1 - 2, x0 + 2:x1 - 2].permute(1, 2, 0).int()
    assert (inside - torch.tensor([240, 10, 10])).abs().max() <= 40


def test_json_size_differing_from_the_file_is_skipped(coco_builder):
    ann, images = coco_builder([image_rec(1, 64, 48), image_rec(2)], [], CATS)
    data = json.loads(ann.read_text())
    data["images"][0]["width"] = 60
    ann.write_text(json.dumps(data))
    report = verify(ann, images)
    assert sorted(report.images) == [2] and report.counts["image size differs from JSON"] == 1
    assert "JSON size 60x48 differs from the file's 64x48" in report.skipped[0].fault


# ----------------------------------------------------------------------------------------------- boxes, ids
def test_bad_boxes_and_ids(coco_builder):
    anns = [ann_rec(1, 1, 1, [0, 0, 0, 10]), ann_rec(2, 1, 1, [5, 5, 10, -3]), ann_rec(3, 1, 1, [math.nan, 0, 5, 5]),
            ann_rec(4, 1, 1, [0, 0, math.inf, 5]), ann_rec(5, 1, 1, [50, 40, 30, 30]),  # partly outside: clipped
            ann_rec(6, 1, 2, [100, 100, 5, 5]), ann_rec(7, 99, 1, [0, 0, 5, 5]),  # wholly outside, unknown image
            ann_rec(8, 1, 42, [0, 0, 5, 5]), ann_rec(9, 1, 2, [-4, -4, 10, 12]), ann_rec(10, 1, 2, [1, 2, 3, 4])]
    ann, images = coco_builder([image_rec(1, 64, 48)], anns, CATS)
    report = verify(ann, images)
    assert dict(report.counts) == {"bbox degenerate": 2, "bbox non-finite": 2, "bbox outside image": 1,
                                   "annotation unknown image": 1, "annotation unknown category": 1,
                                   "bbox clipped": 2}
    np.testing.assert_allclose(report.boxes[1], [[50, 40, 64, 48], [0, 0, 6, 8], [1, 2, 4, 6]])
    assert report.box_categories[1].tolist() == [1, 2, 2]
    faults = {p.record: p.fault for p in report.skipped}
    assert "unknown image id 99" in faults["annotation id=7"]
    assert "unknown category id 42" in faults["annotation id=8"]
    assert "wholly outside" in faults["annotation id=6 (image id=1)"]
    assert "non-finite" in faults["annotation id=3 (image id=1)"]


# ----------------------------------------------------------------------------------------------- cache, read time
def test_probe_cache_reuses_unchanged_files_and_reprobes_changed_ones(coco_builder, monkeypatch):
    ann, images = coco_builder([image_rec(1), image_rec(2)], [], CATS)
    verify(ann, images)
    calls = []
    real = image_io.probe_image
    monkeypatch.setattr(cache, "probe_image", lambda p: calls.append(p.name) or real(p))  # the name probe_images calls
    verify(ann, images)
    assert calls == []  # nothing changed: all from cache
    Image.new("RGB", (64, 48)).save(images / "002.jpg")
    os.utime(images / "002.jpg", ns=(1, 1))  # a different mtime even on coarse-clock file systems
    verify(ann, images)
    assert calls == ["002.jpg"]


def test_file_breaking_after_the_check_is_substituted_and_marked(coco_builder):
    ann, images = coco_builder([image_rec(i) for i in range(1, 5)], [ann_rec(1, 2, 1, [0, 0, 8, 8])], CATS)
    ds = CocoDetection(ann, images, img=64, progress=False)
    (images / "001.jpg").write_bytes(b"garbage")
    image, target = ds[0]
    assert image.shape == (3, 64, 64) and target["image_id"] != 1
    assert len(target["skipped"]) == 1 and "image id=1" in target["skipped"][0]
    assert "corrupt or truncated" in target["skipped"][0] or "not an image" in target["skipped"][0]
    for i in range(1, 5):
        (images / f"{i:03d}.jpg").unlink()
    with pytest.raises(SampleReadError, match="consecutive unreadable images"):
        ds[1]
