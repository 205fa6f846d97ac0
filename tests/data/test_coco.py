"""COCO dataset: subsets, label <-> category id round trip, item format, crowd and background images."""

from __future__ import annotations

import pytest
import torch
from cocofiles import ann_rec, image_rec

from cspwrc.data import coco
from cspwrc.data.checks import DataError
from cspwrc.data.coco import CocoDetection
from cspwrc.data.config import build_datasets
from shared_data import shared_dataset

# COCO ids are not contiguous: the labels must be 0..3 in id order.
CATS = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 7, "name": "train"},
        {"id": 3, "name": "car"}]


@pytest.fixture
def gapped(coco_builder):
    images = [image_rec(i) for i in range(1, 13)]
    anns = [ann_rec(i, image_id=i, cat=[1, 3, 7, 90][i % 4], bbox=[4, 4, 20, 16]) for i in range(1, 11)]
    anns.append(ann_rec(11, image_id=1, cat=1, bbox=[30, 20, 10, 10], crowd=1))  # crowd: eval only
    return coco_builder(images, anns, CATS)  # images 11, 12: no annotations -> background


def test_labels_are_contiguous_in_category_id_order_and_round_trip(gapped):
    ds = CocoDetection(*gapped, img=64, progress=False)
    assert ds.label_to_category_id == [1, 3, 7, 90]
    assert ds.class_names == ["person", "car", "train", "toothbrush"]
    assert ds.to_labels([90, 1, 7]) == [3, 0, 2]
    assert ds.to_category_ids(ds.to_labels([3, 90, 7, 1])) == [3, 90, 7, 1]
    assert ds.to_category_ids(torch.tensor([0, 1, 2, 3])) == [1, 3, 7, 90]


def test_subset_by_category_names_and_ids(gapped):
    by_name = CocoDetection(*gapped, img=64, categories=["train", "person"], progress=False)
    by_id = CocoDetection(*gapped, img=64, categories=[7, 1], progress=False)
    assert by_name.label_to_category_id == by_id.label_to_category_id == [1, 7]
    assert by_name.ids == by_id.ids
    # images whose only annotations are of other categories go; background images stay
    # (image 1 stays for its crowd person box)
    assert by_name.ids == [1, 2, 4, 6, 8, 10, 11, 12]
    for i in range(len(by_name)):
        assert set(by_name[i][1]["labels"].tolist()) <= {0, 1}
    with pytest.raises(DataError, match="unknown category 'dog'"):
        CocoDetection(*gapped, img=64, categories=["dog"], progress=False)


def test_subset_by_number_is_seeded_and_by_image_ids(gapped):
    a = CocoDetection(*gapped, img=64, num_images=5, subset_seed=1, progress=False)
    b = CocoDetection(*gapped, img=64, num_images=5, subset_seed=1, progress=False)
    c = CocoDetection(*gapped, img=64, num_images=5, subset_seed=2, progress=False)
    assert a.ids == b.ids and len(a) == 5 and a.ids != c.ids
    ids = CocoDetection(*gapped, img=64, image_ids=[2, 5, 11, 999], progress=False)
    assert ids.ids == [2, 5, 11]


def test_val_item_follows_the_design_contract(gapped):
    ds = CocoDetection(*gapped, img=64, progress=False)  # images are 64x48: scale 1, pad top 8
    image, target = ds[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
    assert target["image_id"] == 1 and target["orig_size"] == (48, 64)
    assert target["scale"] == 1.0 and target["pad"] == (0.0, 8.0)
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    # the crowd box of image 1 is not a training target
    torch.testing.assert_close(target["boxes"], torch.tensor([[4.0, 12.0, 24.0, 28.0]]))
    assert target["labels"].tolist() == [1] and target["skipped"] == []  # car (id 3)
    assert (image[:, :8] == 114).all() and (image[:, 56:] == 114).all()
    background = ds[ds.ids.index(12)][1]
    assert background["boxes"].shape == (0, 4) and background["labels"].shape == (0,)


def test_coco_gt_keeps_crowd_for_cocoeval(gapped):
    ds = CocoDetection(*gapped, img=64, categories=["person"], progress=False)
    gt = ds.coco_gt()
    assert sorted(gt.getImgIds()) == ds.ids
    anns = gt.loadAnns(gt.getAnnIds())
    assert {a["category_id"] for a in anns} == {1}
    assert sorted(a["iscrowd"] for a in anns) == [0, 0, 1]  # annotations 4, 8 and the crowd one
    assert [c["id"] for c in gt.loadCats(gt.getCatIds())] == [1]


def test_image_size_must_be_multiple_of_32(gapped):
    with pytest.raises(DataError, match="multiple of 32"):
        CocoDetection(*gapped, img=100, progress=False)


def _boxes_match_objects(ds: CocoDetection, n: int) -> None:
    for i in range(n):
        image, target = ds[i]
        assert image.shape[1:] == (ds.img, ds.img)
        b = target["boxes"]
        assert ((b >= 0) & (b <= ds.img)).all() and (b[:, 2:] > b[:, :2]).all()
        assert ((target["labels"] >= 0) & (target["labels"] < ds.num_classes)).all()


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["coco128", "coco_train2017_native"])
def test_real_coco_subsets(name):
    root = shared_dataset(name, "annotations/instances_train.json", "images")
    ann, images = root / "annotations" / "instances_train.json", root / "images"
    ds = CocoDetection(ann, images, img=320, num_images=6, subset_seed=0, progress=False)
    assert len(ds) == 6 and ds.num_classes == 80 and ds.label_to_category_id[-1] == 90
    _boxes_match_objects(ds, 6)
    person = CocoDetection(ann, images, img=320, categories=["person"], progress=False, report=ds.report)
    has_person = {a["image_id"] for a in ds.report.gt_annotations if a["category_id"] == 1}
    annotated = {a["image_id"] for a in ds.report.gt_annotations}
    assert person.num_classes == 1 and person.ids
    assert all(i in has_person or i not in annotated for i in person.ids)
    train = CocoDetection(ann, images, img=320, train=True, num_images=6, progress=False, report=ds.report)
    _boxes_match_objects(train, 6)
    gt = ds.coco_gt()
    assert sorted(gt.getImgIds()) == ds.ids
    if name == "coco_train2017_native":
        crowd = [a for a in ds.report.gt_annotations if a["iscrowd"]]
        assert crowd  # crowd boxes reach the eval GT but never the training targets
        for image_id in {a["image_id"] for a in crowd}:
            plain = [a for a in ds.report.gt_annotations if a["image_id"] == image_id and not a["iscrowd"]]
            assert len(ds.report.boxes[image_id]) == len(plain)


def test_ram_cache_gives_the_same_items_and_falls_back_when_memory_is_short(shapes_yaml, monkeypatch, caplog):
    plain, _ = build_datasets(shapes_yaml, img=64, seed=1, progress=False)
    cached, _ = build_datasets(shapes_yaml, img=64, seed=1, progress=False, cache="ram")
    assert cached._ram is not None and all(item is not None for item in cached._ram)
    for index in (0, 5):
        a, b = plain[index], cached[index]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    before = cached._ram[0][0].copy()
    cached[0]  # augmentation works on copies: the cache never changes
    assert (cached._ram[0][0] == before).all()

    monkeypatch.setattr(coco, "available_memory", lambda: 1000)  # 1 kB free: 24 images at 64 px do not fit
    short, _ = build_datasets(shapes_yaml, img=64, seed=1, progress=False, cache="ram")
    assert short._ram is None and "reading images from disk instead" in caplog.text
    assert torch.equal(short[0][0], plain[0][0])
