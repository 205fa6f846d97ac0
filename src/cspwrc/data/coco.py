"""COCO-format detection dataset: subsets, contiguous labels <-> COCO category ids, letterboxed items.

Items follow ``docs/design.md``: ``(image uint8 [3, img, img], target)`` with ``boxes float32 [N, 4]`` xyxy
letterboxed pixels, ``labels int64 [N]``, ``image_id``, ``orig_size (h, w)``, ``scale``, ``pad (left, top)``
and one extra key, ``skipped``: the list of read failures substituted while producing this item (normally
empty; see :meth:`CocoDetection.__getitem__` and ``docs/data.md``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import random
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from tqdm import tqdm

from cspwrc.data.checks import CheckReport, verify_coco
from cspwrc.data.image_io import ImageEntry, load_image
from cspwrc.data.letterbox import letterbox, letterbox_params, resize_longest
from cspwrc.data.mosaic import Tile
from cspwrc.data.transforms import AugmentConfig, ItemDraw, TrainAugment
from cspwrc.errors import DataError, SampleReadError, shorten

log = logging.getLogger("cspwrc.data")

MAX_SUBSTITUTES = 10  # consecutive unreadable files tolerated for one item before giving up loudly
RAM_CACHE_SHARE = 0.5  # data.cache: ram may take at most this share of the available memory
CACHE_MODES = ("none", "ram")
Target = dict[str, Any]
Resized = tuple[np.ndarray, np.ndarray, np.ndarray, float]  # (image [h, w, 3], boxes [N, 4], labels [N], scale)
Letterboxed = tuple[np.ndarray, np.ndarray, np.ndarray, float, tuple[float, float]]


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (``MemAvailable``), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def select_categories(categories: list[dict[str, Any]], wanted: Sequence[str | int] | None, file: str
                      ) -> list[dict[str, Any]]:
    """Categories (sorted by COCO id) chosen by name or id; ``None`` keeps all. Unknown ones are fatal."""
    if wanted is None:
        return list(categories)
    by_name = {c["name"]: c for c in categories}
    by_id = {c["id"]: c for c in categories}
    chosen = {}
    for w in wanted:
        cat = by_id.get(w) if isinstance(w, int) else by_name.get(w)
        if cat is None:
            raise DataError(file, "categories", f"unknown category {w!r}; known: {sorted(by_name)[:20]}")
        chosen[cat["id"]] = cat
    return [chosen[i] for i in sorted(chosen)]


def select_images(report: CheckReport, category_ids: set[int], num_images: int | None, image_ids: Sequence[int] | None,
                  seed: int) -> list[int]:
    """Image ids of the subset, sorted.

    Order: ``image_ids`` filter, then drop images whose every annotation is of an unselected category
    (images that never had annotations stay as background), then a seeded random sample of ``num_images``.
    """
    ids = sorted(report.images)
    if image_ids is not None:
        unknown = sorted(set(image_ids) - set(report.images))
        if unknown:
            log.warning("%d requested image ids are not usable in %s: %s", len(unknown), report.ann_file, unknown[:10])
        wanted = set(image_ids)
        ids = [i for i in ids if i in wanted]
    annotated = {a["image_id"] for a in report.gt_annotations}
    relevant = {a["image_id"] for a in report.gt_annotations if a["category_id"] in category_ids}
    ids = [i for i in ids if i not in annotated or i in relevant]
    if num_images is not None and num_images < len(ids):
        ids = sorted(random.Random(seed).sample(ids, num_images))
    return ids


class CocoDetection(Dataset):
    """A COCO instances file + image directory as a detection dataset (see module doc for items).

    Args:
        ann_file, image_dir: the COCO JSON and the folder its ``file_name``s are relative to.
        img: square output size (multiple of 32).
        train: apply the train augmentation (mosaic/affine/colour/flip); otherwise letterbox only.
        augment: the train augmentation, a :class:`~cspwrc.data.transforms.AugmentConfig` or a mapping of its keys.
        categories: names or COCO ids to keep (labels become ``0..len-1`` in COCO-id order); ``None`` = all.
        num_images, image_ids, subset_seed: subset selection (see :func:`select_images`).
        seed: augmentation seed; item ``i`` of epoch ``e`` is augmented with seed ``(seed, e, i)``, so runs
            are reproducible whatever the number of workers.
        report: a precomputed :func:`verify_coco` report (else it is computed here, cached).
        cache: ``"ram"`` decodes and resizes every image once, here, and keeps the resized ``uint8`` images
            (longer side ``img``) with their boxes (at most ``N * img * img * 3`` bytes; see
            :meth:`_fill_ram_cache`); ``"none"`` reads the files for every item.

    Epoch and mosaic switch live in a shared-memory tensor, so ``set_epoch``/``set_mosaic`` reach loader
    workers that were started earlier (persistent workers; see :mod:`cspwrc.data.loader`).
    """

    def __init__(self, ann_file: str | os.PathLike[str], image_dir: str | os.PathLike[str], *, img: int = 640,
                 train: bool = False, augment: AugmentConfig | Mapping[str, Any] | None = None,
                 categories: Sequence[str | int] | None = None, num_images: int | None = None,
                 image_ids: Sequence[int] | None = None, subset_seed: int = 0, seed: int = 0,
                 report: CheckReport | None = None, progress: bool = True, cache: str = "none") -> None:
        if img <= 0 or img % 32:
            raise DataError(str(ann_file), "img", f"image size {img} must be a positive multiple of 32")
        self.report = report or verify_coco(ann_file, image_dir, progress=progress)
        cats = select_categories(self.report.categories, categories, str(ann_file))
        self.class_names: list[str] = [c["name"] for c in cats]
        self.label_to_category_id: list[int] = [c["id"] for c in cats]
        self.category_id_to_label: dict[int, int] = {c: i for i, c in enumerate(self.label_to_category_id)}
        self.ids: list[int] = select_images(self.report, set(self.label_to_category_id), num_images, image_ids,
                                            subset_seed)
        if not self.ids:
            raise DataError(str(ann_file), "subset", "the subset selects no images")
        self.img, self.train, self.seed = img, train, seed
        self._augment = TrainAugment(img, augment)
        self.augment = self._augment.cfg
        self._shared = torch.zeros(2, dtype=torch.int64).share_memory_()  # [epoch, mosaic on]
        self.mosaic = self.augment.mosaic > 0
        self._ram: list[Resized | None] | None = None
        if cache not in CACHE_MODES:
            raise DataError(str(ann_file), "data.cache", f"{cache!r} is not one of {CACHE_MODES}")
        if cache == "ram":
            self._fill_ram_cache(progress)

    # ------------------------------------------------------------------------------------------ id mapping
    @property
    def num_classes(self) -> int:
        return len(self.label_to_category_id)

    def to_category_ids(self, labels: torch.Tensor | np.ndarray | Sequence[int]) -> list[int]:
        """Contiguous labels -> original COCO category ids."""
        return [self.label_to_category_id[int(label)] for label in labels]

    def to_labels(self, category_ids: Sequence[int]) -> list[int]:
        """Original COCO category ids -> contiguous labels (``KeyError`` for unselected categories)."""
        return [self.category_id_to_label[int(c)] for c in category_ids]

    def coco_gt(self) -> COCO:
        """pycocotools ``COCO`` of this subset's ground truth (crowd kept, clipped boxes, unreadable images
        and rejected boxes removed) -- what the evaluator's ``COCOeval`` should compare against."""
        ids, cats = set(self.ids), set(self.label_to_category_id)
        images = [{"id": e.id, "file_name": e.file_name, "width": e.width, "height": e.height}
                  for e in (self.report.images[i] for i in self.ids)]
        anns = [copy.deepcopy(a) for a in self.report.gt_annotations
                if a["image_id"] in ids and a["category_id"] in cats]
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns,
                      "categories": [c for c in self.report.categories if c["id"] in cats]}
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            gt.createIndex()
        return gt

    # ------------------------------------------------------------------------------------------ RAM cache
    def _fill_ram_cache(self, progress: bool) -> None:
        """Decode + resize every image once (threads: PIL and cv2 release the GIL) if it fits in memory.

        The size check: ``N * img * img * 3`` bytes (the most the resized images can take) must be at most
        :data:`RAM_CACHE_SHARE` of the available memory; otherwise a warning says so and items are read from disk
        as without a cache (same data). The cache is filled in the main process before the loader forks its
        workers, which then share its pages copy-on-write (never written, so never copied; a ``spawn`` start method
        would copy it per worker).
        Unreadable files stay uncached and fail at read time as usual (substituted, counted).
        """
        need, free = len(self) * self.img * self.img * 3, available_memory()
        if free is not None and need > RAM_CACHE_SHARE * free:
            log.warning("data.cache: ram needs %.1f GB for %d images at %d px but only %.1f GB of memory is "
                        "available (limit: %d %%); reading images from disk instead", need / 1e9, len(self),
                        self.img, free / 1e9, RAM_CACHE_SHARE * 100)
            return

        def read(index: int) -> Resized | None:
            try:
                return self._read_resized(index)
            except SampleReadError:
                return None

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            self._ram = list(tqdm(pool.map(read, range(len(self))), total=len(self), disable=not progress,
                                  leave=False, desc=f"caching {len(self)} images ({need / 1e9:.2f} GB)"))

    # ------------------------------------------------------------------------------------------ epoch state
    @property
    def epoch(self) -> int:
        return int(self._shared[0])

    @property
    def mosaic(self) -> bool:
        return bool(self._shared[1])

    @mosaic.setter
    def mosaic(self, enabled: bool) -> None:
        self._shared[1] = int(bool(enabled))

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (call before ``iter(loader)`` of that epoch)."""
        self._shared[0] = int(epoch)

    def set_mosaic(self, enabled: bool) -> None:
        """Switch mosaic on/off (close-mosaic epochs); call before ``iter(loader)`` like :meth:`set_epoch`."""
        self.mosaic = bool(enabled) and self.augment.mosaic > 0

    def __len__(self) -> int:
        return len(self.ids)

    # ------------------------------------------------------------------------------------------ items
    def _entry(self, index: int) -> ImageEntry:
        return self.report.images[self.ids[index]]

    def load_resized(self, index: int) -> Resized:
        """Item ``index`` resized so its longer side is ``img``, unpadded: ``(image uint8 [h, w, 3], boxes float32
        [N, 4], labels int64 [N], scale)``, from the RAM cache when there is one. Raises :class:`SampleReadError` if
        the file is unreadable."""
        cached = self._ram[index] if self._ram is not None else None
        if cached is None:
            return self._read_resized(index)
        image, boxes, labels, scale = cached
        # Copies: an in-place transform must never change the cache (nor un-share a forked worker's pages).
        return image.copy(), boxes.copy(), labels.copy(), scale

    def load_letterboxed(self, index: int) -> Letterboxed:
        """Item ``index`` letterboxed to ``img`` (the val/predict input): ``(image uint8 [img, img, 3], boxes, labels,
        scale, pad)``."""
        image, boxes, labels, _ = self.load_resized(index)
        entry = self._entry(index)
        canvas, scale, pad = letterbox(image, self.img, (entry.height, entry.width))
        return canvas, boxes + np.asarray(pad * 2, dtype=np.float32), labels, scale, pad

    def _read_resized(self, index: int) -> Resized:
        entry = self._entry(index)
        image, scale = resize_longest(load_image(entry, draft_size=self.img), self.img, (entry.height, entry.width))
        cats = self.report.box_categories[entry.id]
        keep = np.asarray([c in self.category_id_to_label for c in cats], dtype=bool)
        boxes = (self.report.boxes[entry.id][keep].astype(np.float32) * np.float32(scale)).reshape(-1, 4)
        labels = np.asarray([self.category_id_to_label[int(c)] for c in cats[keep]], dtype=np.int64)
        return image, boxes, labels, scale

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def _read_with_substitutes(self, index: int, rng: np.random.Generator, skipped: list[str]) -> tuple[int, Resized]:
        """Read ``index``; on a read failure record it and try random other indices instead."""
        for _ in range(MAX_SUBSTITUTES):
            try:
                return index, self.load_resized(index)
            except SampleReadError as e:
                skipped.append(f"image id={self.ids[index]}: {shorten(e, 300)}")
                log.warning("read failure, substituting another sample: %s", skipped[-1])
                index = int(rng.integers(len(self)))
        raise SampleReadError(f"{MAX_SUBSTITUTES} consecutive unreadable images; last: {skipped[-1]}")

    def _mosaic_partners(self, primary: Tile, rng: np.random.Generator, skipped: list[str]) -> list[Tile]:
        """Three other resized samples for the mosaic; an unreadable one is replaced by the primary tile."""
        partners = []
        for index in rng.integers(len(self), size=3):
            try:
                image, boxes, labels, _ = self.load_resized(int(index))
            except SampleReadError as e:
                skipped.append(f"image id={self.ids[int(index)]}: {shorten(e, 300)}")
                log.warning("read failure, mosaic uses another tile: %s", skipped[-1])  # logged as it is counted
                image, boxes, labels = primary
            partners.append((image, boxes, labels))
        return partners

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        """``(image uint8 [3, img, img], target)``; see the module doc. In train mode ``scale``/``pad`` are
        those of the primary image's letterbox (not meaningful after augmentation)."""
        rng, skipped = self._rng(index), []
        index, (image, boxes, labels, scale) = self._read_with_substitutes(index, rng, skipped)
        entry = self._entry(index)
        if self.train:
            partners = (lambda primary: self._mosaic_partners(primary, rng, skipped)) if self.mosaic else None
            image, boxes, labels = self._augment((image, boxes, labels), ItemDraw(rng, partners))
            pad = letterbox_params(entry.height, entry.width, self.img)[2]
        else:
            canvas, scale, pad = letterbox(image, self.img, (entry.height, entry.width))
            image, boxes = canvas, boxes + np.asarray(pad * 2, dtype=np.float32)
        target: Target = {
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)).reshape(-1, 4),
            "labels": torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)).reshape(-1),
            "image_id": entry.id,
            "orig_size": (entry.height, entry.width),
            "scale": float(scale),
            "pad": (float(pad[0]), float(pad[1])),
            "skipped": skipped,
        }
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), target
