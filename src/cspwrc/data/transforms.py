"""Letterbox maths and the albumentations train pipeline.

Boxes are ``float32 [N, 4]`` xyxy pixels throughout (albumentations ``pascal_voc`` format). Images are
``uint8 [H, W, 3]`` RGB numpy arrays here; the dataset turns them into ``[3, H, W]`` tensors.

Train order (YOLOv5/8-style): every image is letterboxed to ``img`` first, then
``Mosaic`` (2x2 grid of ``img`` cells, ``img`` crop around a random centre, other images via the
``mosaic_metadata`` key) -> ``Affine`` (scale/translate/rotate/shear, grey fill) -> ``ColorJitter``
(HSV-like gains) -> ``HorizontalFlip``. ``BboxParams`` clips boxes to the image and drops degenerate ones
(``filter_invalid_bboxes``, ``min_width``/``min_height`` = ``min_box_size``, ``min_visibility``) after the whole
pipeline, so no second filter follows it (the boxes entering it are finite: :mod:`cspwrc.data.checks`).
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np

from cspwrc.data.checks import check_keys, check_type

# OpenCV's own thread pool does not survive fork(): a DataLoader worker forked after the parent used it can
# hang in its first cv2 call (and parallelism comes from the workers anyway). Same choice as Ultralytics.
cv2.setNumThreads(0)

PAD_VALUE = 114  # YOLO grey for letterbox and augmentation borders

#: Augmentation knobs and their defaults; a recipe's ``augment:`` section passes these as keyword args.
AUGMENT_DEFAULTS: dict[str, float] = {
    "mosaic": 1.0,  # probability of a 2x2 mosaic
    "scale": 0.5,  # Affine zoom in [1 - scale, 1 + scale]
    "translate": 0.1,  # Affine shift as a fraction of the image size
    "degrees": 0.0,  # Affine rotation range (+/-), boxes grow with rotation so it is off by default
    "shear": 0.0,  # Affine shear range (+/- degrees)
    "hsv_h": 0.015,  # hue shift (fraction of the hue circle)
    "hsv_s": 0.7,  # saturation gain in [1 - s, 1 + s]
    "hsv_v": 0.4,  # value/brightness gain in [1 - v, 1 + v]
    "fliplr": 0.5,  # horizontal flip probability
    "min_box_size": 2.0,  # drop boxes with a side below this many pixels after augmentation
    "min_visibility": 0.1,  # drop boxes with less than this fraction of their area left after cropping
}


def letterbox_params(height: int, width: int, img: int) -> tuple[float, tuple[int, int], tuple[float, float]]:
    """The one letterbox formula: ``scale = min(img / h, img / w)``, resized ``(round(h s), round(w s))``,
    centred padding. Returns ``(scale, (new_h, new_w), (left, top))``."""
    scale = min(img / height, img / width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    return scale, (new_h, new_w), (float((img - new_w) // 2), float((img - new_h) // 2))


def letterbox(image: np.ndarray, img: int, orig_size: tuple[int, int] | None = None
              ) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Resize ``uint8 [h, w, 3]`` into an ``[img, img, 3]`` grey canvas, centred.

    ``orig_size`` (``(H, W)``) is the size the boxes refer to when ``image`` is a reduced decode of it
    (JPEG draft); the scale is always relative to ``orig_size``. Returns ``(canvas, scale, (left, top))``.
    """
    height, width = orig_size if orig_size is not None else image.shape[:2]
    scale, (new_h, new_w), (left, top) = letterbox_params(height, width, img)
    if image.shape[:2] != (new_h, new_w):
        interp = cv2.INTER_AREA if new_h < image.shape[0] else cv2.INTER_LINEAR
        image = cv2.resize(image, (new_w, new_h), interpolation=interp)
    canvas = np.full((img, img, 3), PAD_VALUE, dtype=np.uint8)
    canvas[int(top):int(top) + new_h, int(left):int(left) + new_w] = image
    return canvas, scale, (left, top)


def letterbox_boxes(boxes: np.ndarray, scale: float, pad: tuple[float, float]) -> np.ndarray:
    """Map ``[N, 4]`` xyxy boxes of the original image into the letterboxed image."""
    offset = np.asarray([pad[0], pad[1], pad[0], pad[1]], dtype=np.float32)
    return (boxes.astype(np.float32) * np.float32(scale) + offset).reshape(-1, 4)


def check_augment(augment: dict[str, Any] | None) -> dict[str, float]:
    """Merge an ``augment`` mapping over :data:`AUGMENT_DEFAULTS`; unknown keys raise ``ValueError``
    with the nearest valid key (the data config wraps this with the YAML file name)."""
    augment = dict(augment or {})
    check_keys(augment, AUGMENT_DEFAULTS, "augment", "augment")
    for key, value in augment.items():
        check_type(value, (int, float), "augment", f"augment.{key}")
    return {**AUGMENT_DEFAULTS, **{k: float(v) for k, v in augment.items()}}


def build_train_transform(img: int, use_mosaic: bool, **augment: float) -> A.Compose:
    """Albumentations train pipeline on letterboxed ``[img, img, 3]`` inputs (see module doc).

    ``use_mosaic=False`` builds the pipeline without the mosaic step (close-mosaic epochs). Call it with
    ``bboxes`` (pascal_voc ``[N, 4]``), ``labels`` and, with mosaic, ``mosaic_metadata`` (a list of dicts
    with ``image``, ``bboxes``, ``labels`` of other letterboxed samples).
    """
    aug = check_augment(augment)
    steps: list[A.BasicTransform] = []
    if use_mosaic and aug["mosaic"] > 0:
        steps.append(A.Mosaic(grid_yx=(2, 2), target_size=(img, img), cell_shape=(img, img),
                              center_range=(0.25, 0.75), fit_mode="contain", fill=PAD_VALUE, p=aug["mosaic"]))
    steps += [
        A.Affine(scale=(1 - aug["scale"], 1 + aug["scale"]), translate_percent=(-aug["translate"], aug["translate"]),
                 rotate=(-aug["degrees"], aug["degrees"]), shear=(-aug["shear"], aug["shear"]),
                 border_mode=cv2.BORDER_CONSTANT, fill=PAD_VALUE, p=1.0),
        A.ColorJitter(brightness=aug["hsv_v"], contrast=0.0, saturation=aug["hsv_s"],
                      hue=min(aug["hsv_h"], 0.5), p=1.0 if max(aug["hsv_h"], aug["hsv_s"], aug["hsv_v"]) else 0.0),
        A.HorizontalFlip(p=aug["fliplr"]),
    ]
    bbox_params = A.BboxParams(format="pascal_voc", label_fields=["labels"], min_width=aug["min_box_size"],
                               min_height=aug["min_box_size"], min_visibility=aug["min_visibility"], clip=True,
                               filter_invalid_bboxes=True)
    return A.Compose(steps, bbox_params=bbox_params, seed=0)


def apply_train_transform(transform: A.Compose, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                          others: list[dict[str, Any]] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run ``transform`` on one letterboxed sample (plus mosaic partners ``others``).

    Returns ``(image uint8 [img, img, 3], boxes float32 [M, 4] xyxy, labels int64 [M])``, the boxes clipped and
    filtered by the transform's ``BboxParams``.
    """
    kwargs: dict[str, Any] = {"image": image, "bboxes": boxes.reshape(-1, 4), "labels": labels}
    if others is not None:
        kwargs["mosaic_metadata"] = others
    out = transform(**kwargs)
    out_boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
    out_labels = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
    return np.ascontiguousarray(out["image"]), out_boxes, out_labels
