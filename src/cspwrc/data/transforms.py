"""The train augmentation: its config (:class:`AugmentConfig`) and its pipeline (:class:`TrainAugment`).

Train order (YOLOv5/v8): the images arrive resized so their longer side is ``img``, unpadded
(:func:`cspwrc.data.letterbox.resize_longest`); :class:`Mosaic` puts, with probability ``mosaic``, the item and
three partner images on a mosaic canvas (:func:`cspwrc.data.mosaic.mosaic4`); :class:`RandomAffine` warps the
canvas (or the single image) to ``img x img`` (one zoom factor for both axes: objects keep their shape) and clips
and filters the boxes; :class:`ColourFlip` is albumentations' ``ColorJitter`` (HSV-like gains) -> ``HorizontalFlip``.
Boxes are ``float32 [N, 4]`` xyxy pixels (albumentations ``pascal_voc``), images ``uint8 [H, W, 3]`` RGB.

A new augmentation is a field of :class:`AugmentConfig` and a step of :attr:`TrainAugment.steps`, both here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import albumentations as A
import cv2
import numpy as np

from cspwrc.data.mosaic import Tile, mosaic4, random_affine
from cspwrc.errors import ConfigError
from cspwrc.validate import Fault, build_dataclass, require

__all__ = ["AugmentConfig", "ColourFlip", "ItemDraw", "Mosaic", "RandomAffine", "TrainAugment", "augment_config"]

# OpenCV's own thread pool does not survive fork(): a DataLoader worker forked after the parent used it can
# hang in its first cv2 call (and parallelism comes from the workers anyway). Same choice as Ultralytics.
cv2.setNumThreads(0)


@dataclass(frozen=True)
class AugmentConfig:
    """The run config's ``augment:`` section: YOLOv8's train augmentation and its defaults."""

    mosaic: float = 1.0  # probability of a 2x2 mosaic (train.close_mosaic turns it off for the last epochs)
    scale: float = 0.5  # zoom factor in [1 - scale, 1 + scale], the same for both axes
    translate: float = 0.1  # the output's centre moves by up to this fraction of the image size
    degrees: float = 0.0  # rotation range (+/-); boxes grow with rotation, so it is off by default
    shear: float = 0.0  # shear range (+/- degrees)
    hsv_h: float = 0.015  # hue shift (fraction of the hue circle)
    hsv_s: float = 0.7  # saturation gain in [1 - s, 1 + s]
    hsv_v: float = 0.4  # value/brightness gain in [1 - v, 1 + v]
    fliplr: float = 0.5  # horizontal flip probability
    min_box_size: float = 2.0  # drop boxes with a side below this many pixels after augmentation
    min_visibility: float = 0.1  # drop boxes with less than this fraction of their area left after cropping

    def __post_init__(self) -> None:
        for key in ("mosaic", "fliplr", "min_visibility"):
            require(0.0 <= getattr(self, key) <= 1.0, key, "a probability in [0, 1]", getattr(self, key))
        for key in ("scale", "translate"):  # a zoom of 1 - scale must stay positive; the centre inside the image
            require(0.0 <= getattr(self, key) < 1.0, key, "in [0, 1)", getattr(self, key))
        require(0.0 <= self.hsv_h <= 0.5, "hsv_h", "in [0, 0.5] (half the hue circle)", self.hsv_h)
        for key in ("hsv_s", "hsv_v"):
            require(0.0 <= getattr(self, key) <= 1.0, key, "in [0, 1]", getattr(self, key))
        for key in ("degrees", "shear", "min_box_size"):
            require(getattr(self, key) >= 0.0, key, ">= 0", getattr(self, key))


def augment_config(augment: AugmentConfig | Mapping[str, Any] | None) -> AugmentConfig:
    """``augment`` as an :class:`AugmentConfig`: a mapping is built strictly (an unknown key names the nearest valid
    one, a wrong type or range names ``augment.KEY``: :class:`~cspwrc.errors.ConfigError`)."""
    try:
        return build_dataclass(AugmentConfig, augment, "augment")
    except Fault as fault:
        raise ConfigError(str(fault)) from None


@dataclass
class ItemDraw:
    """What a step may draw on for one item: its random stream (every random choice comes from ``rng``) and where
    its mosaic partners come from: ``partners(primary)`` gives three more resized tiles (None: mosaic closed)."""

    rng: np.random.Generator
    partners: Callable[[Tile], list[Tile]] | None = None


class Step(Protocol):
    def __call__(self, tile: Tile, draw: ItemDraw) -> Tile: ...


class Mosaic:
    """With probability ``p``, the item and three partners on a 2x2 canvas (:func:`~cspwrc.data.mosaic.mosaic4`,
    ``uint8 [2 img, 2 img, 3]``); the item alone when the caller has no partners to give."""

    def __init__(self, img: int, p: float) -> None:
        self.img, self.p = img, p

    def __call__(self, tile: Tile, draw: ItemDraw) -> Tile:
        if draw.partners is None or not draw.rng.random() < self.p:
            return tile
        return mosaic4([tile, *draw.partners(tile)], self.img, draw.rng)


class RandomAffine:
    """Any ``H x W`` tile to ``img x img`` by one random isotropic affine (:func:`~cspwrc.data.mosaic.random_affine`),
    boxes clipped and filtered."""

    def __init__(self, img: int, cfg: AugmentConfig) -> None:
        self.img, self.cfg = img, cfg

    def __call__(self, tile: Tile, draw: ItemDraw) -> Tile:
        c = self.cfg
        return random_affine(tile, self.img, draw.rng, scale=c.scale, translate=c.translate, degrees=c.degrees,
                             shear=c.shear, min_box_size=c.min_box_size, min_visibility=c.min_visibility)


class ColourFlip:
    """Albumentations' ``ColorJitter`` (HSV-like gains) -> ``HorizontalFlip``, seeded from the item's stream."""

    def __init__(self, cfg: AugmentConfig) -> None:
        colour = max(cfg.hsv_h, cfg.hsv_s, cfg.hsv_v) > 0
        self.transform = A.Compose(
            [A.ColorJitter(brightness=cfg.hsv_v, contrast=0.0, saturation=cfg.hsv_s, hue=cfg.hsv_h,
                           p=1.0 if colour else 0.0),
             A.HorizontalFlip(p=cfg.fliplr)],
            bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], min_width=cfg.min_box_size,
                                     min_height=cfg.min_box_size, clip=True, filter_invalid_bboxes=True),
            seed=0)

    def __call__(self, tile: Tile, draw: ItemDraw) -> Tile:
        image, boxes, labels = tile
        self.transform.set_random_seed(int(draw.rng.integers(2**31)))
        out = self.transform(image=image, bboxes=boxes, labels=labels)
        return (np.ascontiguousarray(out["image"]), np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4),
                np.asarray(out["labels"], dtype=np.int64).reshape(-1))


class TrainAugment:
    """The train pipeline (module doc) for output size ``img``: :attr:`steps` applied in order.

    ``augment(tile, draw)``: ``tile`` is one resized :data:`~cspwrc.data.mosaic.Tile`, ``draw`` its
    :class:`ItemDraw`. Returns ``(image uint8 [img, img, 3], boxes float32 [M, 4], labels int64 [M])``, boxes inside
    the image with both sides ``>= min_box_size``.
    """

    def __init__(self, img: int, cfg: AugmentConfig | Mapping[str, Any] | None = None) -> None:
        self.img, self.cfg = img, augment_config(cfg)
        self.steps: list[Step] = [Mosaic(img, self.cfg.mosaic), RandomAffine(img, self.cfg), ColourFlip(self.cfg)]

    def __call__(self, tile: Tile, draw: ItemDraw) -> Tile:
        for step in self.steps:
            tile = step(tile, draw)
        return tile
