"""The det-level inference API: detect on one image in its own pixels, select, describe, the input size."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cspwrc.backbone import model_cfgs
from cspwrc.det import build_detector
from cspwrc.det.load import DEFAULT_IMG
from cspwrc.det.predict import class_names, describe, detect, input_size, load_detector, select
from cspwrc.engine import checkpoint
from cspwrc.errors import ConfigError


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_detector("cspwrc_n", num_classes=3).eval()
    net.cfg.post.score_thresh = 0.0  # an untrained model: keep every box so there is something to compare
    return net


def test_detect_maps_boxes_to_the_original_pixels(model: torch.nn.Module) -> None:
    image = np.random.default_rng(0).integers(0, 255, (40, 96, 3), dtype=np.uint8)  # wide: padded top and bottom
    det = detect(model, image, 64)
    assert set(det) == {"boxes", "scores", "labels"} and det["boxes"].shape[1:] == (4,)
    assert det["boxes"].dtype == torch.float32 and det["labels"].dtype == torch.int64
    assert len(det["boxes"]) > 0 and det["boxes"].device.type == "cpu"
    x0, y0, x1, y1 = det["boxes"].unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= 96).all() and (y1 <= 40).all()
    assert (det["scores"][:-1] >= det["scores"][1:]).all()  # sorted


def test_detect_on_an_image_of_the_input_size_is_the_eval_forward(model: torch.nn.Module) -> None:
    image = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)  # no resize, no padding
    with torch.inference_mode():
        expected = model(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)[0]
    det = detect(model, image, 64)
    torch.testing.assert_close(det["boxes"], expected["boxes"])
    torch.testing.assert_close(det["scores"], expected["scores"])


def test_select_and_describe() -> None:
    det = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 5.0, 5.0], [2.0, 2.0, 3.123, 4.0]]),
           "scores": torch.tensor([0.9, 0.5, 0.2]), "labels": torch.tensor([1, 0, 1])}
    assert select(det, 0.3, None, 10)["labels"].tolist() == [1, 0]
    assert select(det, 0.0, {1}, 10)["scores"].tolist() == pytest.approx([0.9, 0.2])
    assert select(det, 0.0, None, 1)["boxes"].shape == (1, 4)
    meta = {"num_classes": 2, "class_names": ["cat", "dog"], "category_ids": [17, 18]}
    records = describe(select(det, 0.0, {1}, 10), meta)
    assert records[1] == {"box": [2.0, 2.0, 3.12, 4.0], "score": 0.2, "label": 1, "class_name": "dog",
                          "category_id": 18}
    assert class_names({"num_classes": 2}) == ["0", "1"]


def test_input_size() -> None:
    assert input_size({"img": 320}) == 320
    assert input_size({"img": 320}, 256) == 256
    assert input_size({}) == DEFAULT_IMG
    with pytest.raises(ConfigError, match=r"input size 100 .*multiple of 32"):
        input_size({"img": 320}, 100)


def test_one_loader_under_both_names() -> None:
    assert checkpoint.load_detector is load_detector  # the engine's old name is a re-export, not a copy


def test_weights_of_another_layout_fail_with_one_line(tmp_path) -> None:
    """A cspwrc_n trained before its defaults changed (bottle_ratio 1): one line naming the first difference, the
    recorded backbone and why, not torch's hundreds of shape lines."""
    old = build_detector({"name": "cspwrc_n", "kwargs": {"bottle_ratio": 1.0}}, 2)
    path = tmp_path / "old.safetensors"
    checkpoint.save_weights(path, old.state_dict(), {"model": {"backbone": {"name": "cspwrc_n"}}, "num_classes": 2})
    with pytest.raises(checkpoint.CheckpointError) as info:
        load_detector(path)
    message = str(info.value)
    assert "\n" not in message and "differences, first: size mismatch for backbone.stages_0" in message
    assert "backbone 'cspwrc_n' with kwargs {}" in message and "bottle_ratio 2" in message


def test_a_saved_model_records_its_layout_and_survives_a_change_of_the_registered_defaults(tmp_path, monkeypatch
                                                                                          ) -> None:
    """model.config records the resolved backbone layout (backbone.model_args): after cspwrc_n's registered defaults
    change -- here a shape-keeping one (wrc_normalize) that would otherwise load silently and compute something else,
    and a shape-changing one -- a checkpoint saved before still rebuilds the same outputs."""
    torch.manual_seed(0)
    saved = build_detector("cspwrc_n", 2).eval()
    with torch.no_grad():
        for p in saved.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # weights away from the init, so every layer matters
    path = tmp_path / "n.safetensors"
    checkpoint.save_weights(path, saved.state_dict(), {"model": saved.config, "num_classes": 2})
    assert saved.config["backbone"]["model_args"]["bottle_ratio"] == 2.0
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = saved.forward_raw(x)
    changed = dataclasses.replace(model_cfgs["cspwrc_n"], wrc_normalize="softmax", bottle_ratio=1.0)
    monkeypatch.setitem(model_cfgs, "cspwrc_n", changed)
    assert build_detector("cspwrc_n", 2).config["backbone"]["model_args"]["wrc_normalize"] == "softmax"
    loaded, meta = load_detector(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_raw(x), expected)
    assert meta["model"]["backbone"]["model_args"]["wrc_normalize"] == "none"
