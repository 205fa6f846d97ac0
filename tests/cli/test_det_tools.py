"""tools/train_det.py, eval_det.py and predict.py: exit codes, outputs, refusal of bad inputs."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

from cspwrc.data import ensure_shapes_dataset
from cspwrc.det import build_detector
from cspwrc.engine.checkpoint import save_checkpoint
from cspwrc.engine.config import load_config
from cspwrc.engine.trainer import load_resume
from shared_data import shared_dataset

ROOT = Path(__file__).resolve().parents[2]


TOOLS = {"train_det": "train", "eval_det": "val", "predict": "predict"}


def _tool(name: str) -> ModuleType:
    """The module behind tools/NAME.py (the scripts are shims over cspwrc.cli)."""
    return importlib.import_module(f"cspwrc.cli.{TOOLS[name]}")




def _checkpoint(folder: Path, category_ids: list[int], names: list[str], img: int = 64) -> Path:
    """An untrained tiny detector saved exactly as the trainer saves it (the tools only need the file)."""
    model = build_detector("test_resnet", num_classes=len(category_ids), neck={"channels": [16, 32, 64]})
    meta = {"model": model.config, "num_classes": len(category_ids), "class_names": names,
            "category_ids": category_ids, "img": img}
    return save_checkpoint(folder, "tiny", model.state_dict(), meta, state=None)


def test_predict_draws_and_writes_json(tmp_path, capsys):
    weights = _checkpoint(tmp_path, [3, 9], ["cat", "dog"])
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (90, 140, 3), dtype=np.uint8)).save(src / "a.jpg")
    Image.fromarray(rng.integers(0, 255, (120, 60), dtype=np.uint8)).save(src / "b.png")  # grayscale
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "pred"
    rc = _tool("predict").main(["--weights", str(weights), "--source", str(src), "--out", str(out),
                                "--conf", "0.0", "--device", "cpu"])
    assert rc == 0
    report = json.loads((out / "detections.json").read_text())
    assert report["skipped"] == 1 and [Path(r["file"]).name for r in report["images"]] == ["a.jpg", "b.png"]
    for rec in report["images"]:
        drawn = Image.open(out / f"{Path(rec['file']).stem}.png")
        assert drawn.size == (rec["width"], rec["height"]) and drawn.mode == "RGB"
        for det in rec["detections"]:
            x1, y1, x2, y2 = det["box"]  # original-image pixels
            assert 0 <= x1 <= x2 <= rec["width"] and 0 <= y1 <= y2 <= rec["height"]
            assert det["category_id"] in (3, 9) and det["class_name"] in ("cat", "dog")
    assert "broken.jpg" in capsys.readouterr().err


def test_eval_refuses_pickled_checkpoint(tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (print, ("payload ran",))

    bad = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "x": Payload()}, bad)
    rc = _tool("eval_det").main(["--weights", str(bad), "--ann", "x.json", "--images", ".", "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 2 and "refused" in captured.err and str(bad) in captured.err
    assert "payload ran" not in captured.out


@pytest.mark.shared_data
def test_eval_on_real_coco_subset(tmp_path, capsys):
    root = shared_dataset("coco128", "annotations/instances_val.json", "images")
    ann = root / "annotations" / "instances_val.json"
    cats = json.loads(ann.read_text())["categories"]
    weights = _checkpoint(tmp_path, [c["id"] for c in cats], [c["name"] for c in cats])
    images = root / "images"
    images = next((p for p in (images / ann.stem.removeprefix("instances_"), images) if p.is_dir()), root)
    rc = _tool("eval_det").main(["--weights", str(weights), "--ann", str(ann), "--images", str(images),
                                 "--out", str(tmp_path / "res.json"), "--device", "cpu", "--no-progress",
                                 "--batch", "16"])
    out = capsys.readouterr().out
    assert rc == 0
    assert all(name in out for name in ("AP@[.50:.95]", "AP@.50", "AR@100", "AR large"))
    assert "person" in out  # per-class table uses the real category names
    results = json.loads((tmp_path / "res.json").read_text())
    valid_ids = {c["id"] for c in cats}
    assert all(r["category_id"] in valid_ids and len(r["bbox"]) == 4 for r in results)


@pytest.mark.parametrize("args, fragment", [
    (["--set", "train.epohcs=3"], "did you mean 'epochs'"),
    (["--model", "cspwrc_ss"], "unknown model 'cspwrc_ss'"),
    (["--img", "100"], "multiple of 32"),
    (["--resume", "/nonexistent/run"], "no such checkpoint file"),
])
def test_train_rejects_bad_input_before_training(args, fragment, capsys):
    rc = _tool("train_det").main([*args, "--no-progress"])
    assert rc == 2 and fragment in capsys.readouterr().err


def test_data_flag_selects_the_real_data_recipe(tmp_path):
    """--data without --config trains configs/det/real.yaml (mosaic on, AdamW, EMA); one tiny step of it runs."""
    train = _tool("train_det")
    args = train.parse_args(["--data", "x.yaml"])
    assert train.default_recipe(args) == train.REAL_CONFIG
    assert train.default_recipe(train.parse_args([])) == train.DEFAULT_CONFIG
    cfg = load_config(train.REAL_CONFIG)
    assert cfg.augment.mosaic == 1.0 and cfg.train.close_mosaic > 0 and cfg.ema.enabled

    data = ensure_shapes_dataset(tmp_path / "shapes", num_train=8, num_val=4, seed=3)
    rc = train.main(["--data", str(data), "--model", "cspwrc_n", "--img", "64", "--batch", "4", "--epochs", "1",
                     "--workers", "0", "--set", "train.max_steps_per_epoch=1", "--set", "train.close_mosaic=0",
                     "--out", str(tmp_path / "run"), "--no-progress"])
    assert rc == 0
    saved = load_resume(tmp_path / "run")[0]
    assert saved.augment.mosaic == 1.0
    assert saved.optim.opt == "adamw" and saved.schedule.warmup_epochs == 3.0
