"""Training-side speed checks (``cspwrc benchmark --train-step``): WRC weights on vs off in a full detector train
step, and data pipeline vs step.

* WRC A/B: two detectors that differ only in ``wrc_weights`` (backbone and neck), each stepped with timm's AdamW
  (``create_optimizer_v2``, as the default recipe) on the same synthetic batch. Their steps are *interleaved*
  (A, B, A, B, ...) so that load drift on a shared machine hits both equally; medians are compared.
* Data vs step: images/s of the training loader (``cspwrc.data.loader.measure_throughput``: train augmentation,
  mosaic, collate, ``workers`` processes) against images/s of the train step at the same ``img`` and ``batch``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from timm.optim import create_optimizer_v2
from torch import nn

from cspwrc.data import build_datasets, build_loader, ensure_shapes_dataset
from cspwrc.data.loader import measure_throughput
from cspwrc.deploy.timing import p90, round_robin_times, warmed_up
from cspwrc.det import build_detector

WRC_SETTINGS = ("scalar", "none")  # default WRC (one learnable pair per block) vs plain residual adds


@dataclass
class TrainBenchSettings:
    backbone: str = "cspwrc_s"
    # bs16@256: the step configs/det/default.yaml's neck.channels choice was timed at (1.5 s vs 2.0 s), so the two
    # numbers compare; the recipe itself trains bs8@192 (--train-img 192 --train-batch 8 times that step)
    img: int = 256
    batch: int = 16
    num_classes: int = 80
    warmup: int = 2
    iters: int = 10
    max_seconds: float = 120.0
    wrc_weights: tuple[str, ...] = WRC_SETTINGS
    data: str | None = None  # data YAML; None = the embedded shapes data set
    workers: int = 2
    data_batches: int = 10


def synthetic_batch(batch: int, img: int, num_classes: int, boxes: int = 4,
                    seed: int = 0) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Images in [0, 1] and ``boxes`` random valid xyxy boxes per image (the detector's train input)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, img, img, generator=g)
    targets = []
    for _ in range(batch):
        xy = torch.rand(boxes, 2, generator=g) * img * 0.6
        wh = torch.rand(boxes, 2, generator=g) * img * 0.3 + 8
        targets.append({"boxes": torch.cat((xy, (xy + wh).clamp(max=img)), 1),
                        "labels": torch.randint(0, num_classes, (boxes,), generator=g)})
    return images, targets


def detector_kwargs(backbone: str, wrc_weights: str) -> dict[str, Any]:
    """The detector's sections with the WRC switch for the neck (its WRC is used only with ``neck.shortcut``) and
    for a cspwrc backbone: ``build_detector(**detector_kwargs(...), num_classes=n)``."""
    section: dict[str, Any] = {"name": backbone}
    if backbone.startswith("cspwrc"):  # timm peers have no WRC option; their A/B is the neck only
        section["kwargs"] = {"wrc_weights": wrc_weights}
    return {"backbone": section, "neck": {"shortcut": True, "wrc_weights": wrc_weights}}


def make_train_step(settings: TrainBenchSettings, wrc_weights: str) -> Callable[[torch.Tensor, list], None]:
    """``step(images, targets)`` = forward (loss) + backward + AdamW step of a fresh detector."""
    torch.manual_seed(0)
    sections = detector_kwargs(settings.backbone, wrc_weights)
    model: nn.Module = build_detector(num_classes=settings.num_classes, **sections)
    model.train()
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-4, weight_decay=0.05)

    def step(images: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> None:
        optimizer.zero_grad(set_to_none=True)
        model(images, targets)["loss"].backward()
        optimizer.step()

    return step


def make_step(settings: TrainBenchSettings, wrc_weights: str) -> Callable[[], None]:
    """A train step on a fixed synthetic batch (no data loading inside the timed region)."""
    step = make_train_step(settings, wrc_weights)
    images, targets = synthetic_batch(settings.batch, settings.img, settings.num_classes)
    return lambda: step(images, targets)


def train_dataset(settings: TrainBenchSettings) -> Any:
    yaml_path = Path(settings.data) if settings.data else ensure_shapes_dataset()
    train, _ = build_datasets(yaml_path, img=settings.img, progress=False)
    return train


def data_throughput(settings: TrainBenchSettings) -> float:
    """Images/s of the training loader alone (augmentation incl. mosaic) at the step's ``img`` and ``batch``."""
    return measure_throughput(train_dataset(settings), batch_size=settings.batch, workers=settings.workers,
                              batches=settings.data_batches)


def loader_wait_fraction(settings: TrainBenchSettings, wrc_weights: str = "scalar", warmup: int = 2) -> float:
    """Fraction of a real training loop (loader workers + step sharing the machine) spent waiting for batches."""
    dataset = train_dataset(settings)
    loader = build_loader(dataset, settings.batch, train=True, workers=settings.workers, seed=0)
    step = make_train_step(replace(settings, num_classes=dataset.num_classes), wrc_weights)
    waited = total = 0.0
    it = iter(loader)
    for i in range(warmup + settings.data_batches):
        t0 = time.perf_counter()
        try:
            images, targets = next(it)
        except StopIteration:
            break
        t1 = time.perf_counter()
        step(images.float() / 255, targets)  # the engine's uint8 -> [0, 1] conversion
        if i >= warmup:  # the first batches include worker start-up
            waited, total = waited + t1 - t0, total + time.perf_counter() - t0
    return waited / total if total else float("nan")


def run_train_benchmark(settings: TrainBenchSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """WRC on/off step times and data-vs-step throughput; the dict is stored under ``train_step`` in the JSON."""
    steps = {w: warmed_up(make_step(settings, w), settings.warmup) for w in settings.wrc_weights}
    # Round-robin (A, B, A, B, ...): load drift on a shared machine hits both settings equally.
    rounds = round_robin_times(list(steps.values()), settings.iters, settings.max_seconds, min_iters=1)
    times = dict(zip(steps, rounds, strict=True))
    report: dict[str, Any] = {"settings": asdict(settings), "steps": {}}
    for key, ts in times.items():
        median = statistics.median(ts)
        report["steps"][key] = {"median_s": median, "p90_s": p90(ts), "iters": len(ts),
                                "img_s": settings.batch / median}
        log(f"train step wrc_weights={key:7s} bs{settings.batch}@{settings.img}: {median * 1e3:8.1f} ms median")
    on, off = (report["steps"][w]["median_s"] for w in settings.wrc_weights[:2])
    report["wrc_slowdown_pct"] = 100.0 * (on / off - 1.0)
    data_img_s = data_throughput(settings)
    step_img_s = report["steps"][settings.wrc_weights[0]]["img_s"]
    report["data_img_s"] = data_img_s
    report["data_vs_step"] = data_img_s / step_img_s
    log(f"data pipeline: {data_img_s:.1f} img/s vs train step {step_img_s:.1f} img/s "
        f"({report['data_vs_step']:.2f}x)")
    report["loader_wait_pct"] = 100.0 * loader_wait_fraction(settings, settings.wrc_weights[0])
    log(f"training loop with {settings.workers} loader workers waits {report['loader_wait_pct']:.1f} % of the time")
    return report
