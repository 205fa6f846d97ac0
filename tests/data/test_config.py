"""Data YAML: relative paths, strict keys with suggestions, types, safe_load only, names check."""

from __future__ import annotations

import pytest

from cspwrc.data.checks import DataError
from cspwrc.data.config import build_datasets, load_data_config


def _yaml(tmp_path, text):
    path = tmp_path / "data.yaml"
    path.write_text(text)
    return path


def test_relative_paths_resolve_against_the_yaml_folder(tmp_path):
    cfg = load_data_config(_yaml(tmp_path, "train: {ann: a/t.json, images: im, num_images: 5, seed: 3}\n"
                                           "val: {ann: /abs/v.json, images: im, image_ids: [1, 2]}\n"
                                           "categories: [person, 3]\n"))
    assert cfg.train.ann == tmp_path / "a/t.json" and cfg.train.images == tmp_path / "im"
    assert cfg.train.num_images == 5 and cfg.train.seed == 3
    assert str(cfg.val.ann) == "/abs/v.json" and cfg.val.image_ids == (1, 2)
    assert cfg.categories == ("person", 3) and cfg.names is None


@pytest.mark.parametrize("text, where, fault", [
    ("trian: {ann: a, images: b}\nval: {ann: a, images: b}\n", "top level",
     "unknown key 'trian'; did you mean 'train'"),
    ("train: {ann: a, image: b}\nval: {ann: a, images: b}\n", "train", "unknown key 'image'; did you mean 'images'"),
    ("train: {ann: a, images: b, num_images: ten}\nval: {ann: a, images: b}\n", r"train\.num_images",
     "expected int, got str"),
    ("train: {ann: a, images: b, num_images: 0}\nval: {ann: a, images: b}\n", r"train\.num_images", "must be positive"),
    ("train: {ann: a, images: b}\nval: {ann: 3, images: b}\n", r"val\.ann", "expected str, got int"),
    ("train: {ann: a, images: b}\n", "top level", "missing key 'val'"),
    ("train: {ann: a}\nval: {ann: a, images: b}\n", "train", "missing key 'images'"),
    ("train: [1]\nval: {ann: a, images: b}\n", "train", "expected dict, got list"),
    ("train: {ann: a, images: b}\nval: {ann: a, images: b}\nnames: [x, 2]\n", r"names\[1\]", "expected str"),
    ("train: {ann: a, images: b\n", "file", "malformed YAML"),
    ("!!python/object/apply:os.system [echo pwned]\n", "file", "malformed YAML"),  # safe_load refuses tags
])
def test_bad_data_yaml_is_fatal_and_named(tmp_path, text, where, fault):
    with pytest.raises(DataError, match=rf"data\.yaml: {where}: {fault}"):
        load_data_config(_yaml(tmp_path, text))


def test_build_datasets_from_shapes_yaml_and_names_check(shapes_yaml, tmp_path):
    train, val = build_datasets(shapes_yaml, img=128, progress=False)
    assert train.train and not val.train and len(train) == 24 and len(val) == 8
    assert train.class_names == val.class_names == ["circle", "square", "triangle", "star", "cross"]
    wrong = _yaml(tmp_path, shapes_yaml.read_text().replace("star", "sun").replace(
        "annotations/", f"{shapes_yaml.parent}/annotations/").replace("images/", f"{shapes_yaml.parent}/images/"))
    with pytest.raises(DataError, match=r"data\.yaml: names: .* differ from the annotation file's"):
        build_datasets(wrong, img=128, progress=False)
