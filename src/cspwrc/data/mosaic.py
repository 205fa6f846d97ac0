"""YOLO-style geometry of the train pipeline: a 2x2 mosaic canvas, then one isotropic random affine of it.

What Ultralytics' ``Mosaic`` + ``RandomPerspective`` (YOLOv5/v8) do, on numpy and OpenCV:

* :func:`mosaic4` places four images, each resized so that its longer side is ``img`` and *not padded*, edge to
  edge around a random centre of a ``2 img x 2 img`` grey canvas: every pixel near the centre is photograph, and
  the grey is only where a tile ends before the canvas border.
* :func:`random_affine` maps the canvas (or a single resized image) to the ``img x img`` output with one random
  affine: centre at the origin, rotate and scale by one factor (so the aspect ratio is kept), shear, then move the
  centre to ``(0.5 +- translate) * img``. On a mosaic canvas a scale of 1 shows a quarter of it, each tile at its
  resized size; with no randomness a single image comes out letterboxed.

Albumentations has the pieces (``A.Mosaic``, ``A.Affine``) but not this geometry: ``A.Mosaic`` crops cells of a
fixed shape (so letterboxed inputs bring their padding into the middle) and ``A.Affine`` keeps the input size.

Boxes are ``float32 [N, 4]`` xyxy pixels, images ``uint8 [H, W, 3]``, labels ``int64 [N]`` (a :data:`Tile`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from cspwrc.data.letterbox import PAD_VALUE

__all__ = ["Tile", "box_candidates", "mosaic4", "random_affine"]

Tile = tuple[np.ndarray, np.ndarray, np.ndarray]  # (image uint8 [H, W, 3], boxes float32 [N, 4], labels int64 [N])

MAX_ASPECT = 100.0  # boxes thinner than 1:100 after the affine are slivers, not objects (YOLO's ar_thr)


def mosaic4(tiles: Sequence[Tile], img: int, rng: np.random.Generator) -> Tile:
    """Four tiles (top-left, top-right, bottom-left, bottom-right) around a centre drawn uniformly from
    ``[img / 2, 3 img / 2]`` on a ``uint8 [2 img, 2 img, 3]`` grey canvas (tiles larger than ``img`` are cut at the
    canvas border). Boxes are moved with their tile and clipped to the canvas; boxes cut to nothing are dropped."""
    if len(tiles) != 4:
        raise ValueError(f"mosaic4 needs 4 tiles, got {len(tiles)}")
    s = 2 * img
    xc, yc = (int(v) for v in rng.uniform(img / 2, 3 * img / 2, size=2))
    canvas = np.full((s, s, 3), PAD_VALUE, dtype=np.uint8)
    all_boxes, all_labels = [], []
    for i, (image, boxes, labels) in enumerate(tiles):
        h, w = image.shape[:2]
        # Canvas region (a) of the tile, and the part of the tile (b) that lands there.
        x1a, x2a = (max(xc - w, 0), xc) if i in (0, 2) else (xc, min(xc + w, s))
        y1a, y2a = (max(yc - h, 0), yc) if i in (0, 1) else (yc, min(yc + h, s))
        x1b = w - (x2a - x1a) if i in (0, 2) else 0
        y1b = h - (y2a - y1a) if i in (0, 1) else 0
        canvas[y1a:y2a, x1a:x2a] = image[y1b:y1b + (y2a - y1a), x1b:x1b + (x2a - x1a)]
        shift = np.asarray([x1a - x1b, y1a - y1b] * 2, dtype=np.float32)
        all_boxes.append(boxes.reshape(-1, 4).astype(np.float32) + shift)
        all_labels.append(labels.reshape(-1))
    boxes = np.concatenate(all_boxes).clip(0, s)
    labels = np.concatenate(all_labels).astype(np.int64)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return canvas, boxes[keep], labels[keep]


def _affine_matrix(height: int, width: int, out: int, rng: np.random.Generator, scale: float, translate: float,
                   degrees: float, shear: float) -> tuple[np.ndarray, float]:
    """``[2, 3]`` matrix (input pixels -> output pixels) and the drawn zoom factor, in YOLO's order
    ``T @ S @ R @ C`` (rightmost first). ``C`` moves to the origin the point that lands at the output's centre; it
    is the input's centre, rounded as the letterbox rounds its padding, so that without zoom, shift, rotation and
    shear an image comes out exactly letterboxed."""
    centre = np.eye(3)
    centre[:2, 2] = -(out / 2 - (out - width) // 2), -(out / 2 - (out - height) // 2)
    zoom = float(rng.uniform(1 - scale, 1 + scale))
    rotate = np.eye(3)
    rotate[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=float(rng.uniform(-degrees, degrees)), scale=zoom)
    skew = np.eye(3)
    skew[0, 1], skew[1, 0] = (math.tan(math.radians(a)) for a in rng.uniform(-shear, shear, size=2))
    move = np.eye(3)
    move[:2, 2] = rng.uniform(0.5 - translate, 0.5 + translate, size=2) * out
    return (move @ skew @ rotate @ centre)[:2], zoom


def box_candidates(before: np.ndarray, after: np.ndarray, min_size: float, min_visibility: float) -> np.ndarray:
    """``[N]`` bool: boxes that stay objects after a geometric transform (YOLO's ``box_candidates``).

    ``before``: the boxes as the transform would map them without cropping (sizes already scaled by its zoom);
    ``after``: the same boxes clipped to the output. Kept: both sides ``>= min_size`` px, at least ``min_visibility``
    of the area left, and not a sliver (aspect ratio under :data:`MAX_ASPECT`).
    """
    w0, h0 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w1, h1 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        visible = w1 * h1 / np.maximum(w0 * h0, 1e-9)
        aspect = np.maximum(w1 / np.maximum(h1, 1e-9), h1 / np.maximum(w1, 1e-9))
    return (w1 >= min_size) & (h1 >= min_size) & (visible >= min_visibility) & (aspect < MAX_ASPECT)


def random_affine(tile: Tile, out: int, rng: np.random.Generator, *, scale: float, translate: float,
                  degrees: float = 0.0, shear: float = 0.0, min_box_size: float = 2.0,
                  min_visibility: float = 0.1) -> Tile:
    """Warp ``tile`` (any ``H x W``) to ``uint8 [out, out, 3]`` with one random isotropic affine (module doc).

    Boxes: the bounding box of each transformed box's four corners, clipped to the output, then filtered by
    :func:`box_candidates` against the box scaled by the zoom (so a box is dropped when the crop, not the zoom,
    took most of it). Never returns a non-finite or empty box.
    """
    image, boxes, labels = tile
    h, w = image.shape[:2]
    matrix, zoom = _affine_matrix(h, w, out, rng, scale, translate, degrees, shear)
    warped = cv2.warpAffine(image, matrix, dsize=(out, out), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=(PAD_VALUE,) * 3)
    boxes = boxes.reshape(-1, 4).astype(np.float32)
    n = len(boxes)
    if n == 0:
        return warped, boxes, labels.reshape(-1).astype(np.int64)
    corners = np.ones((n * 4, 3), dtype=np.float64)
    corners[:, :2] = boxes[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape(n * 4, 2)  # x1y1, x2y2, x1y2, x2y1
    xy = (corners @ matrix.T).reshape(n, 8)
    xs, ys = xy[:, 0::2], xy[:, 1::2]
    mapped = np.stack((xs.min(1), ys.min(1), xs.max(1), ys.max(1)), 1)
    clipped = mapped.clip(0, out).astype(np.float32)
    keep = box_candidates(boxes * np.float32(zoom), clipped, min_box_size, min_visibility) & np.isfinite(clipped).all(1)
    return warped, clipped[keep], labels.reshape(-1)[keep].astype(np.int64)
