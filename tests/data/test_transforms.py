"""Transforms keep boxes and pixels consistent (letterbox, flip, affine, mosaic); property test on boxes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cspwrc.data.transforms import (
    apply_train_transform,
    build_train_transform,
    letterbox,
    letterbox_boxes,
    letterbox_params,
)

COLOURS = np.array([[250, 20, 20], [20, 250, 20], [20, 20, 250], [250, 250, 20]], dtype=np.uint8)
NO_COLOUR = {"hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0}


def painted(h: int, w: int, box: tuple[int, int, int, int], label: int) -> tuple[np.ndarray, np.ndarray]:
    """A dark ``[h, w, 3]`` image with one filled box of the label's colour; returns (image, boxes [1, 4])."""
    image = np.full((h, w, 3), 40, dtype=np.uint8)
    x0, y0, x1, y1 = box
    image[y0:y1, x0:x1] = COLOURS[label]
    return image, np.array([box], dtype=np.float32)


def assert_pixels_match_boxes(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, margin: int = 2) -> None:
    """Inside each box (less a margin) the pixels have the label's colour; a ring just outside does not."""
    assert len(boxes) > 0
    size = image.shape[0]
    for (x0, y0, x1, y1), label in zip(boxes, labels):
        colour = COLOURS[label].astype(int)
        inner = image[int(np.ceil(y0)) + margin:int(y1) - margin, int(np.ceil(x0)) + margin:int(x1) - margin]
        if inner.size:
            assert np.abs(inner.astype(int) - colour).max() <= 40, (x0, y0, x1, y1, label)
        ring = []  # pixel rows/columns `margin` px outside each side, where they are inside the image
        oy0, oy1 = int(y0) - margin - 1, int(np.ceil(y1)) + margin
        ox0, ox1 = int(x0) - margin - 1, int(np.ceil(x1)) + margin
        ys = slice(max(int(y0), 0), min(int(y1), size))
        xs = slice(max(int(x0), 0), min(int(x1), size))
        if oy0 >= 0:
            ring.append(image[oy0, xs])
        if oy1 < size:
            ring.append(image[oy1, xs])
        if ox0 >= 0:
            ring.append(image[ys, ox0])
        if ox1 < size:
            ring.append(image[ys, ox1])
        for pixels in ring:
            assert (np.abs(pixels.astype(int) - colour).max(axis=-1) > 80).all(), (x0, y0, x1, y1, label)


def test_letterbox_maths_and_pixels():
    image, boxes = painted(100, 60, (10, 20, 50, 70), 0)
    canvas, scale, pad = letterbox(image, 64)
    assert (scale, pad) == (0.64, (13.0, 0.0))  # 100x60 -> 64x38, padded 13 left
    assert letterbox_params(100, 60, 64) == (0.64, (64, 38), (13.0, 0.0))
    assert (canvas[:, :13] == 114).all() and (canvas[:, 13 + 38:] == 114).all()
    out = letterbox_boxes(boxes, scale, pad)
    np.testing.assert_allclose(out, [[10 * 0.64 + 13, 20 * 0.64, 50 * 0.64 + 13, 70 * 0.64]], rtol=1e-6)
    assert_pixels_match_boxes(canvas, out, np.array([0]), margin=1)


def _run(seed: int, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, others=None, **augment):
    transform = build_train_transform(64, use_mosaic=others is not None, **{**NO_COLOUR, **augment})
    transform.set_random_seed(seed)
    return apply_train_transform(transform, image, boxes, labels, others)


def test_flip_moves_pixels_and_boxes_together():
    image, boxes = painted(64, 64, (4, 10, 20, 40), 1)
    out, out_boxes, labels = _run(0, image, boxes, np.array([1]), fliplr=1.0, scale=0.0, translate=0.0)
    np.testing.assert_allclose(out_boxes, [[44, 10, 60, 40]], atol=0.5)
    assert_pixels_match_boxes(out, out_boxes, labels)


@pytest.mark.parametrize("seed", range(6))
def test_affine_scale_translate_keeps_boxes_on_their_pixels(seed):
    image, boxes = painted(64, 64, (12, 16, 44, 40), 2)
    out, out_boxes, labels = _run(seed, image, boxes, np.array([2]), fliplr=0.5, scale=0.5, translate=0.2)
    if len(out_boxes):  # a big shift may push the box out; then it must be gone from the pixels too
        assert_pixels_match_boxes(out, out_boxes, labels)
    else:
        assert (np.abs(out.astype(int) - COLOURS[2]).max(axis=-1) > 80).mean() > 0.97


@pytest.mark.parametrize("seed", range(6))
def test_mosaic_keeps_boxes_on_their_pixels(seed):
    rects = [(8, 8, 40, 30), (20, 30, 56, 60), (4, 34, 30, 60), (30, 4, 60, 26)]
    samples = [painted(64, 64, r, k) for k, r in enumerate(rects)]
    others = [{"image": im, "bboxes": b, "labels": np.array([k + 1])} for k, (im, b) in enumerate(samples[1:])]
    out, out_boxes, labels = _run(seed, samples[0][0], samples[0][1], np.array([0]), others, mosaic=1.0,
                                  scale=0.3, translate=0.1)
    assert out.shape == (64, 64, 3)
    assert_pixels_match_boxes(out, out_boxes, labels)
    # every colour visible over a sizeable area belongs to a kept box of that label
    for k, colour in enumerate(COLOURS):
        if (np.abs(out.astype(int) - colour).max(axis=-1) <= 40).sum() > 40:
            assert k in labels.tolist()


@st.composite
def sample(draw):
    h, w = draw(st.integers(8, 160)), draw(st.integers(8, 160))
    n = draw(st.integers(0, 6))
    boxes = []
    for _ in range(n):
        x0 = draw(st.floats(0, w - 0.01))
        y0 = draw(st.floats(0, h - 0.01))
        boxes.append([x0, y0, draw(st.floats(x0 + 0.01, w)), draw(st.floats(y0 + 0.01, h))])
    return h, w, np.array(boxes, dtype=np.float32).reshape(-1, 4)


@settings(max_examples=30, deadline=None)
@given(primary=sample(), partners=st.lists(sample(), min_size=0, max_size=3), seed=st.integers(0, 2**16),
       mosaic=st.booleans())
def test_property_train_boxes_are_inside_and_non_degenerate(primary, partners, seed, mosaic):
    img = 64
    letterboxed = []
    for h, w, boxes in [primary, *partners]:
        canvas, scale, pad = letterbox(np.zeros((h, w, 3), np.uint8), img)
        letterboxed.append((canvas, letterbox_boxes(boxes, scale, pad), np.arange(len(boxes)) % 4))
    others = [{"image": c, "bboxes": b, "labels": lab} for c, b, lab in letterboxed[1:]] if mosaic else None
    transform = build_train_transform(img, use_mosaic=mosaic, degrees=10.0, shear=5.0)
    transform.set_random_seed(seed)
    out, boxes, labels = apply_train_transform(transform, *letterboxed[0], others)
    assert out.shape == (img, img, 3) and out.dtype == np.uint8
    assert boxes.dtype == np.float32 and labels.dtype == np.int64 and len(boxes) == len(labels)
    assert np.isfinite(boxes).all()
    assert ((boxes >= 0) & (boxes <= img)).all()
    assert ((boxes[:, 2] - boxes[:, 0]) >= 2.0).all() and ((boxes[:, 3] - boxes[:, 1]) >= 2.0).all()
