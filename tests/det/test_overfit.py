"""A tiny detector overfits a handful of synthetic images, and then really finds the boxes in eval mode."""

import pytest
import torch
from torchvision.ops import box_iou

from cspwrc.det import build_detector

COLOURS = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.9]])  # class 0 red, 1 green, 2 blue


def synthetic_batch(n: int = 4, size: int = 64, seed: int = 0):
    """``n`` grey images with two non-overlapping coloured rectangles each (16-32 px), class = colour."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for i in range(n):
        image = torch.full((3, size, size), 0.45)
        boxes: list[torch.Tensor] = []
        labels = []
        for k in range(2):
            while True:
                w, h = torch.randint(16, 33, (2,), generator=g).tolist()
                x = int(torch.randint(0, size - w + 1, (1,), generator=g))
                y = int(torch.randint(0, size - h + 1, (1,), generator=g))
                box = torch.tensor([[x, y, x + w, y + h]], dtype=torch.float32)
                if not boxes or box_iou(box, torch.cat(boxes)).max() == 0:
                    break
            label = (i + k) % 3
            image[:, y : y + h, x : x + w] = COLOURS[label][:, None, None]
            boxes.append(box)
            labels.append(label)
        images.append(image)
        targets.append({"boxes": torch.cat(boxes), "labels": torch.tensor(labels)})
    return torch.stack(images), targets


@pytest.mark.slow
def test_tiny_detector_overfits_and_finds_the_boxes():
    torch.manual_seed(0)
    images, targets = synthetic_batch()
    model = build_detector(
        "test_byobnet", num_classes=3, neck={"channels": [32, 64, 64]}, loss={"assigner": {"static_epochs": 1}},
        post={"score_thresh": 0.25},
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    model.train()
    steps = 60
    history = []
    for step in range(steps):
        model.set_epoch(0 if step < steps // 3 else 1)  # ATSS for a third of the run, then TAL
        losses = model(images, targets)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        history.append({k: v.item() for k, v in losses.items()})
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)
    start = sum(h["loss"] for h in history[:3]) / 3
    end = sum(h["loss"] for h in history[-3:]) / 3
    assert end < 0.3 * start, (start, end)

    model.eval()
    with torch.no_grad():
        detections = model(images)
    for det, target in zip(detections, targets, strict=True):
        for box, label in zip(target["boxes"], target["labels"], strict=True):
            same_class = det["labels"] == label
            assert same_class.any(), f"no detection of class {int(label)}"
            iou = box_iou(box[None], det["boxes"][same_class])[0]
            assert iou.max() > 0.5, (box, det)
        # No confident detection of a class that is not in the image.
        assert set(det["labels"].tolist()) <= set(target["labels"].tolist())
