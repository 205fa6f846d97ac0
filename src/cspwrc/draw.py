"""Boxes drawn on images: predictions (``cspwrc predict``) and training batches (``train_batch0.jpg``, ...).

Images are ``uint8 [H, W, 3]`` RGB; boxes ``[N, 4]`` xyxy pixels of that image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = ["PALETTE", "batch_grid", "draw_boxes"]

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def draw_boxes(image: np.ndarray, boxes: Sequence[Sequence[float]], labels: Sequence[int], names: Sequence[str],
               scores: Sequence[float] | None = None) -> np.ndarray:
    """``image`` with each box outlined in its class colour and labelled ``name`` (``name score`` with scores);
    line width and text size grow with the image, so labels stay legible on large photos and thumbnails alike."""
    canvas = Image.fromarray(image)
    pen = ImageDraw.Draw(canvas)
    side = max(image.shape[:2])
    width = max(1, round(side / 320))
    font = ImageFont.load_default(size=max(10, round(side / 45)))
    for k, ((x1, y1, x2, y2), label) in enumerate(zip(boxes, labels, strict=True)):
        color = PALETTE[int(label) % len(PALETTE)]
        pen.rectangle((x1, y1, x2, y2), outline=color, width=width)
        text = names[int(label)] if scores is None else f"{names[int(label)]} {scores[k]:.2f}"
        left, top, right, bottom = pen.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top + 2 * width
        ty = y1 - th if y1 - th >= 0 else y1  # above the box, or inside it at the top edge
        pen.rectangle((x1, ty, x1 + tw + 2 * width, ty + th), fill=color)
        pen.text((x1 + width, ty + width - top), text, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def batch_grid(images: torch.Tensor, targets: Sequence[dict[str, Any]], names: Sequence[str],
               max_images: int = 16) -> np.ndarray:
    """A training batch as one picture (Ultralytics' ``train_batch*.jpg``): up to ``max_images`` of ``images``
    (``uint8 [B, 3, S, S]``, what the model is fed) in a square grid, each with its target boxes and class names.
    Returns ``uint8 [rows * S, cols * S, 3]``."""
    n = min(len(images), max_images)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    size = images.shape[-1]
    grid = np.full((rows * size, cols * size, 3), 255, dtype=np.uint8)
    for k in range(n):
        image = np.ascontiguousarray(images[k].permute(1, 2, 0).cpu().numpy())
        boxes, labels = targets[k]["boxes"].tolist(), targets[k]["labels"].tolist()
        r, c = divmod(k, cols)
        grid[r * size:(r + 1) * size, c * size:(c + 1) * size] = draw_boxes(image, boxes, labels, names)
    return grid
