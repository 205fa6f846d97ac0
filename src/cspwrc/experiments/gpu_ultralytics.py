"""The Ultralytics step of the GPU measurement (:mod:`cspwrc.experiments.gpu_check`), run in its own process:

    python -m cspwrc.experiments.gpu_ultralytics DATA EPOCHS IMG BATCH WORKERS DEVICE PROJECT

Trains YOLOv8s from ``yolov8s.yaml`` (no download) with augmentation off and the RAM cache, timing every epoch from
``on_train_epoch_start`` to ``on_train_epoch_end`` (the span of cspwrc's epoch ``train=`` time), and prints one
line ``EPOCH_SECONDS [s, s, ...]``. Ultralytics is a measuring stick, never a cspwrc dependency: only this worker
imports it, in a process of its own (its imports and global settings stay there), and gpu_check runs it only where
``import ultralytics`` works.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("YOLO_OFFLINE", "1")  # nothing to download: model from its YAML, no fonts, no hub

import torch  # after YOLO_OFFLINE, which Ultralytics reads on import
import ultralytics.engine.trainer as ultra_trainer
from ultralytics import YOLO


def main(argv: list[str]) -> int:
    data, epochs, img, batch, workers, device, project = argv
    # Its AMP check downloads weights; AMP is what both sides use on a GPU.
    ultra_trainer.check_amp = lambda model: True
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    times: list[float] = []
    model = YOLO("yolov8s.yaml")
    model.add_callback("on_train_epoch_start", lambda tr: (sync(), setattr(tr, "_t0", time.perf_counter())))
    model.add_callback("on_train_epoch_end", lambda tr: (sync(), times.append(time.perf_counter() - tr._t0)))
    model.train(data=data, epochs=int(epochs), imgsz=int(img), batch=int(batch), workers=int(workers), device=device,
                cache="ram", plots=False, val=False, project=project, name="u", exist_ok=True, verbose=False,
                mosaic=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, translate=0.0, scale=0.0, fliplr=0.0, close_mosaic=0)
    print("EPOCH_SECONDS " + json.dumps(times), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
