"""The numbers of cspwrc.data.stats.augment_stats for Ultralytics' own train pipeline; runs in ITS OWN venv.

Never imported by cspwrc (Ultralytics is a measuring stick): run it with the python of a venv where
``pip install ultralytics`` was done, on the YOLO view of a data set that tools/race.py writes (OUT/yolo_data):

    /path/to/ultra-venv/bin/python tools/augment_stats_ultralytics.py --data runs/race/yolo_data/data.yaml --img 320

Same protocol as ours: ``--samples`` items drawn without replacement with numpy seed ``--seed``, colour jitter off
(so the pad grey is exactly 114), a box is small when its shorter side is under 8 px.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("YOLO_OFFLINE", "1")

import numpy as np  # after YOLO_OFFLINE, which Ultralytics reads on import
from ultralytics.cfg import get_cfg
from ultralytics.data.build import build_yolo_dataset
from ultralytics.data.utils import check_det_dataset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--img", type=int, default=320)
    p.add_argument("--mosaic", type=float, default=1.0)
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    cfg = get_cfg(overrides={"imgsz": args.img, "mosaic": args.mosaic, "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0,
                             "cache": False, "workers": 0, "seed": args.seed})
    data = check_det_dataset(args.data)
    dataset = build_yolo_dataset(cfg, data["train"], 16, data, mode="train")
    picks = np.random.default_rng(args.seed).choice(len(dataset), size=min(args.samples, len(dataset)),
                                                    replace=False)
    boxes_total = small = 0
    fill = 0.0
    for index in picks:
        item = dataset[int(index)]
        image = item["img"].numpy()  # [3, S, S] uint8
        wh = item["bboxes"][:, 2:].numpy() * np.array([image.shape[2], image.shape[1]])  # normalised xywh
        boxes_total += len(wh)
        small += int((wh.min(1) < 8).sum()) if len(wh) else 0
        fill += float((image == 114).all(0).mean())
    n = len(picks)
    print(json.dumps({"samples": n, "boxes_per_sample": boxes_total / n, "fill": fill / n,
                      "small_boxes": small / max(boxes_total, 1)}))


if __name__ == "__main__":
    main()
