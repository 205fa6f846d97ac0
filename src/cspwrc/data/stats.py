"""What the train pipeline feeds the model, in numbers: boxes per sample, grey fill, small boxes.

``augment_stats(train_set)`` draws a seeded sample of train items (augmented exactly as in training, epoch 0) and
counts. Switch the colour jitter off (``hsv_h/s/v: 0``) when measuring the fill: it is the share of pixels that
are exactly the pad grey (114 in every channel), which colour jitter would shift. docs/data.md gives the figures
for SHWD at 320 px against Ultralytics' pipeline.
"""

from __future__ import annotations

import numpy as np

from cspwrc.data.coco import CocoDetection
from cspwrc.data.letterbox import PAD_VALUE

__all__ = ["augment_stats"]


def augment_stats(dataset: CocoDetection, samples: int = 300, seed: int = 0, small: float = 8.0) -> dict[str, float]:
    """Over ``samples`` items drawn without replacement (``numpy`` seed ``seed``): ``boxes_per_sample``, ``fill``
    (mean share of pad-grey pixels), ``small_boxes`` (share of boxes whose shorter side is under ``small`` px),
    and ``empty_samples`` (share of items left without a box)."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(dataset), size=min(samples, len(dataset)), replace=False)
    boxes_total, small_total, fill, empty = 0, 0, 0.0, 0
    for index in picks:
        image, target = dataset[int(index)]
        boxes = target["boxes"].numpy()
        sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        boxes_total += len(boxes)
        small_total += int((sides < small).sum())
        empty += int(len(boxes) == 0)
        fill += float((image.numpy() == PAD_VALUE).all(0).mean())
    n = len(picks)
    return {"samples": n, "boxes_per_sample": boxes_total / n, "fill": fill / n,
            "small_boxes": small_total / max(boxes_total, 1), "empty_samples": empty / n}
