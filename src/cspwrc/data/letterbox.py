"""The one resize rule: the longer side to ``img``, aspect ratio kept; letterboxing pads that to ``img x img``.

Train items are built from the resized, *unpadded* image (:mod:`cspwrc.data.mosaic` places it on its own canvas);
val and predict items are letterboxed: the same resize, centred on a grey ``img x img`` canvas.
Images are ``uint8 [H, W, 3]`` RGB numpy arrays, boxes ``float32 [N, 4]`` xyxy pixels.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["PAD_VALUE", "letterbox", "letterbox_boxes", "letterbox_params", "resize_longest"]

PAD_VALUE = 114  # YOLO grey for letterbox, mosaic and augmentation borders


def letterbox_params(height: int, width: int, img: int) -> tuple[float, tuple[int, int], tuple[float, float]]:
    """The one letterbox formula: ``scale = min(img / h, img / w)``, resized ``(round(h s), round(w s))``,
    centred padding. Returns ``(scale, (new_h, new_w), (left, top))``."""
    scale = min(img / height, img / width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    return scale, (new_h, new_w), (float((img - new_w) // 2), float((img - new_h) // 2))


def resize_longest(image: np.ndarray, img: int, orig_size: tuple[int, int] | None = None) -> tuple[np.ndarray, float]:
    """``image`` resized so its longer side is ``img``: ``(uint8 [new_h, new_w, 3], scale)``.

    ``orig_size`` (``(H, W)``) is the size the boxes refer to when ``image`` is a reduced decode of it (JPEG draft);
    the scale is always relative to ``orig_size``. Shrinking uses area interpolation (no aliasing), growing linear.
    """
    height, width = orig_size if orig_size is not None else image.shape[:2]
    scale, (new_h, new_w), _ = letterbox_params(height, width, img)
    if image.shape[:2] != (new_h, new_w):
        interp = cv2.INTER_AREA if new_h < image.shape[0] else cv2.INTER_LINEAR
        image = cv2.resize(image, (new_w, new_h), interpolation=interp)
    return image, scale


def letterbox(image: np.ndarray, img: int, orig_size: tuple[int, int] | None = None
              ) -> tuple[np.ndarray, float, tuple[float, float]]:
    """:func:`resize_longest`, centred on an ``[img, img, 3]`` grey canvas. Returns ``(canvas, scale, (left, top))``;
    an image already resized by :func:`resize_longest` (with the same ``orig_size``) is only padded."""
    image, scale = resize_longest(image, img, orig_size)
    new_h, new_w = image.shape[:2]
    left, top = (img - new_w) // 2, (img - new_h) // 2
    canvas = np.full((img, img, 3), PAD_VALUE, dtype=np.uint8)
    canvas[top:top + new_h, left:left + new_w] = image
    return canvas, scale, (float(left), float(top))


def letterbox_boxes(boxes: np.ndarray, scale: float, pad: tuple[float, float]) -> np.ndarray:
    """Map ``[N, 4]`` xyxy boxes of the original image into the letterboxed image."""
    offset = np.asarray([pad[0], pad[1], pad[0], pad[1]], dtype=np.float32)
    return (boxes.astype(np.float32) * np.float32(scale) + offset).reshape(-1, 4)
