"""The train augmentation of one item: YOLO mosaic -> one isotropic random affine -> colour -> flip.

Train order (YOLOv5/v8): the images arrive resized so their longer side is ``img``, unpadded
(:func:`cspwrc.data.letterbox.resize_longest`); with probability ``mosaic`` four of them go on a mosaic canvas
(:func:`cspwrc.data.mosaic.mosaic4`), and the canvas (or the single image) is warped to ``img x img`` by
:func:`cspwrc.data.mosaic.random_affine` (one zoom factor for both axes: objects keep their shape), which also
clips and filters the boxes. Then albumentations: ``ColorJitter`` (HSV-like gains) -> ``HorizontalFlip``.
Boxes are ``float32 [N, 4]`` xyxy pixels (albumentations ``pascal_voc``), images ``uint8 [H, W, 3]`` RGB.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np

from cspwrc.data.checks import check_keys, check_type
from cspwrc.data.mosaic import Tile, mosaic4, random_affine

# OpenCV's own thread pool does not survive fork(): a DataLoader worker forked after the parent used it can
# hang in its first cv2 call (and parallelism comes from the workers anyway). Same choice as Ultralytics.
cv2.setNumThreads(0)

#: Augmentation knobs and their defaults (YOLOv8's); a recipe's ``augment:`` section passes these as keyword args.
AUGMENT_DEFAULTS: dict[str, float] = {
    "mosaic": 1.0,  # probability of a 2x2 mosaic
    "scale": 0.5,  # zoom factor in [1 - scale, 1 + scale], the same for both axes
    "translate": 0.1,  # the output's centre moves by up to this fraction of the image size
    "degrees": 0.0,  # rotation range (+/-); boxes grow with rotation, so it is off by default
    "shear": 0.0,  # shear range (+/- degrees)
    "hsv_h": 0.015,  # hue shift (fraction of the hue circle)
    "hsv_s": 0.7,  # saturation gain in [1 - s, 1 + s]
    "hsv_v": 0.4,  # value/brightness gain in [1 - v, 1 + v]
    "fliplr": 0.5,  # horizontal flip probability
    "min_box_size": 2.0,  # drop boxes with a side below this many pixels after augmentation
    "min_visibility": 0.1,  # drop boxes with less than this fraction of their area left after cropping
}


def check_augment(augment: dict[str, Any] | None) -> dict[str, float]:
    """Merge an ``augment`` mapping over :data:`AUGMENT_DEFAULTS`; unknown keys raise ``ValueError``
    with the nearest valid key (the data config wraps this with the YAML file name)."""
    augment = dict(augment or {})
    check_keys(augment, AUGMENT_DEFAULTS, "augment", "augment")
    for key, value in augment.items():
        check_type(value, (int, float), "augment", f"augment.{key}")
    return {**AUGMENT_DEFAULTS, **{k: float(v) for k, v in augment.items()}}


class TrainAugment:
    """The train pipeline (module doc) for output size ``img`` and the knobs of :data:`AUGMENT_DEFAULTS`.

    ``augment(tiles, rng)``: ``tiles`` is one resized :data:`~cspwrc.data.mosaic.Tile`, or four for a mosaic (the
    caller draws whether to make one, with probability :attr:`mosaic`); every random choice comes from ``rng``.
    Returns ``(image uint8 [img, img, 3], boxes float32 [M, 4], labels int64 [M])``, boxes inside the image with
    both sides ``>= min_box_size``.
    """

    def __init__(self, img: int, **augment: float) -> None:
        self.img = img
        self.aug = aug = check_augment(augment)
        self.mosaic = aug["mosaic"]
        colour = max(aug["hsv_h"], aug["hsv_s"], aug["hsv_v"]) > 0
        self.colour_flip = A.Compose(
            [A.ColorJitter(brightness=aug["hsv_v"], contrast=0.0, saturation=aug["hsv_s"],
                           hue=min(aug["hsv_h"], 0.5), p=1.0 if colour else 0.0),
             A.HorizontalFlip(p=aug["fliplr"])],
            bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], min_width=aug["min_box_size"],
                                     min_height=aug["min_box_size"], clip=True, filter_invalid_bboxes=True),
            seed=0)

    def __call__(self, tiles: Sequence[Tile], rng: np.random.Generator) -> Tile:
        a = self.aug
        tile = mosaic4(tiles, self.img, rng) if len(tiles) == 4 else tiles[0]
        image, boxes, labels = random_affine(tile, self.img, rng, scale=a["scale"], translate=a["translate"],
                                             degrees=a["degrees"], shear=a["shear"], min_box_size=a["min_box_size"],
                                             min_visibility=a["min_visibility"])
        self.colour_flip.set_random_seed(int(rng.integers(2**31)))
        out = self.colour_flip(image=image, bboxes=boxes, labels=labels)
        return (np.ascontiguousarray(out["image"]), np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4),
                np.asarray(out["labels"], dtype=np.int64).reshape(-1))
