"""The one resize rule and the letterbox built on it."""

from __future__ import annotations

import numpy as np
from test_transforms import assert_pixels_match_boxes, painted

from cspwrc.data.letterbox import letterbox, letterbox_boxes, letterbox_params, resize_longest


def test_letterbox_maths_and_pixels():
    image, boxes = painted(100, 60, (10, 20, 50, 70), 0)
    canvas, scale, pad = letterbox(image, 64)
    assert (scale, pad) == (0.64, (13.0, 0.0))  # 100x60 -> 64x38, padded 13 left
    assert letterbox_params(100, 60, 64) == (0.64, (64, 38), (13.0, 0.0))
    assert (canvas[:, :13] == 114).all() and (canvas[:, 13 + 38:] == 114).all()
    out = letterbox_boxes(boxes, scale, pad)
    np.testing.assert_allclose(out, [[10 * 0.64 + 13, 20 * 0.64, 50 * 0.64 + 13, 70 * 0.64]], rtol=1e-6)
    assert_pixels_match_boxes(canvas, out, np.array([0]), margin=1)


def test_letterbox_of_a_resized_image_only_pads():
    """Items are stored resized (the RAM cache, mosaic tiles); letterboxing them must give the direct letterbox."""
    image = np.random.default_rng(0).integers(0, 255, (90, 140, 3), dtype=np.uint8)
    resized, scale = resize_longest(image, 64)
    assert resized.shape == (41, 64, 3) and scale == 64 / 140
    direct, s1, p1 = letterbox(image, 64)
    padded, s2, p2 = letterbox(resized, 64, orig_size=(90, 140))
    assert (s1, p1) == (s2, p2)
    np.testing.assert_array_equal(direct, padded)
