"""tools/race.py: argument handling, the Ultralytics data view, commands, scoring and the table (no training)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from cspwrc.data import ensure_shapes_dataset
from cspwrc.det import build_detector

TOOL = Path(__file__).resolve().parents[2] / "tools" / "race.py"
spec = importlib.util.spec_from_file_location("cspwrc_tool_race", TOOL)
race = importlib.util.module_from_spec(spec)
spec.loader.exec_module(race)


@pytest.fixture(scope="module")
def data_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded shapes generator's COCO files behind a data YAML (what a user's --data looks like)."""
    root = tmp_path_factory.mktemp("race_data")
    shapes = ensure_shapes_dataset(root / "shapes", num_train=6, num_val=3, seed=5)
    ann = shapes.parent / "annotations"
    (root / "data.yaml").write_text(yaml.safe_dump({
        "train": {"ann": str(ann / "instances_train.json"), "images": str(shapes.parent / "images" / "train")},
        "val": {"ann": str(ann / "instances_val.json"), "images": str(shapes.parent / "images" / "val")}}))
    return root / "data.yaml"


def _args(data_yaml: Path, tmp_path: Path, *extra: str) -> object:
    return race.parse_args(["--data", str(data_yaml), "--out", str(tmp_path / "race"), *extra])


@pytest.mark.parametrize("extra, fragment", [
    (["--img", "300"], "multiple of 32"),
    (["--minutes", "0"], "--minutes 0"),
    (["--contestants", "cspwrc_s", "cspwrc_s"], "named twice"),
    (["--contestants", "ultralytics:"], "expected ultralytics:MODEL"),
    (["--contestants", "ultralytics:yolov8n"], "--ultralytics-python None"),
    (["--contestants", "ultralytics:yolov8n", "--ultralytics-python", "/no/such/python"], "not a file"),
])
def test_bad_arguments_are_exit_2_before_training(data_yaml, tmp_path, capsys, extra, fragment):
    assert race.main(["--data", str(data_yaml), "--out", str(tmp_path / "race"), *extra]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    assert not (tmp_path / "race").exists()


def test_subset_data_is_refused(data_yaml, tmp_path, capsys):
    raw = yaml.safe_load(data_yaml.read_text())
    raw["train"]["num_images"] = 3
    subset = tmp_path / "subset.yaml"
    subset.write_text(yaml.safe_dump(raw))
    assert race.main(["--data", str(subset), "--contestants", "cspwrc_n", "--out", str(tmp_path / "r")]) == 2
    assert "whole splits" in capsys.readouterr().err


def test_yolo_view_matches_the_coco_boxes(data_yaml, tmp_path):
    data, index = race.yolo_view(str(data_yaml), tmp_path / "yolo")
    spec_val = json.loads(Path(yaml.safe_load(data_yaml.read_text())["val"]["ann"]).read_text())
    view = yaml.safe_load(data.read_text())
    assert view["train"] == "images/train" and view["names"] == [c["name"] for c in spec_val["categories"]]
    idx = json.loads(index.read_text())
    assert sorted(idx["images"].values()) == sorted(i["id"] for i in spec_val["images"])
    assert idx["category_ids"] == sorted(c["id"] for c in spec_val["categories"])
    image = spec_val["images"][0]
    link = Path(next(f for f, i in idx["images"].items() if i == image["id"]))
    assert link.resolve().read_bytes()[:4] == (Path(yaml.safe_load(data_yaml.read_text())["val"]["images"])
                                               / image["file_name"]).read_bytes()[:4]
    lines = (tmp_path / "yolo" / "labels" / "val" / f"{link.stem}.txt").read_text().splitlines()
    anns = [a for a in spec_val["annotations"] if a["image_id"] == image["id"]]
    assert len(lines) == len(anns)
    cls, cx, cy, w, h = lines[0].split()
    x, y, bw, bh = anns[0]["bbox"]
    assert int(cls) == idx["category_ids"].index(anns[0]["category_id"])
    assert float(cx) * image["width"] == pytest.approx(x + bw / 2, abs=1e-3)
    assert float(h) * image["height"] == pytest.approx(bh, abs=1e-3)


def test_commands_share_the_budget(data_yaml, tmp_path):
    args = _args(data_yaml, tmp_path, "--minutes", "30", "--threads", "2", "--img", "320",
                 "--ours-args", "--set optim.lr=0.001", "--ultralytics-python", "/venv/bin/python")
    ours = race.ours_command(args, "cspwrc_n", tmp_path / "o")
    assert ours[ours.index("--time") + 1] == "0.500000" and ours[-2:] == ["--set", "optim.lr=0.001"]
    theirs = race.ultralytics_command(args, "yolov8n", tmp_path / "u", tmp_path / "d.yaml", tmp_path / "i.json")
    assert theirs[0] == "/venv/bin/python" and theirs[theirs.index("--time-h") + 1] == "0.500000"
    assert theirs[theirs.index("--img") + 1] == ours[ours.index("--img") + 1] == "320"
    assert race.thread_env(2)["OMP_NUM_THREADS"] == "2"


def test_report_scores_every_contestant_with_pycocotools(data_yaml, tmp_path, capsys):
    """Finished contestants' detections are scored against the val file: the ground truth itself scores 1.0."""
    val = json.loads(Path(yaml.safe_load(data_yaml.read_text())["val"]["ann"]).read_text())
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
               for a in val["annotations"]]
    for name, dets in (("cspwrc_n", perfect), ("ultralytics_yolov8n", [])):
        run = tmp_path / "race" / name
        run.mkdir(parents=True)
        (run / "detections.json").write_text(json.dumps(dets))
        (run / "summary.json").write_text(json.dumps({"params_m": 1.0, "gflops_at_img": 2.0, "epochs": 3,
                                                      "train_wall_s": 60.0, "latency_ms": {"320": {"with_nms": 9.5}},
                                                      "latency_threads": 2}))
    rc = race.main(["--data", str(data_yaml), "--out", str(tmp_path / "race"), "--report-only",
                    "--contestants", "cspwrc_n", "ultralytics:yolov8n", "--latency-img", "320"])
    assert rc == 0
    rows = {r["contestant"]: r for r in json.loads((tmp_path / "race" / "race.json").read_text())}
    assert rows["cspwrc_n"]["map"] == pytest.approx(1.0) and rows["ultralytics:yolov8n"]["map"] == 0.0
    table = (tmp_path / "race" / "race.md").read_text()
    assert "| cspwrc_n | 1.00 | 2.00 | 3 | 60 | 1.0000 | 1.0000 | 9.5 | 2 |" in table


def test_latency_phase_uses_its_own_threads_and_times_once(data_yaml, tmp_path, monkeypatch):
    """Latency timed with other threads (e.g. the training's 1) is timed again with --latency-threads; a latency
    already timed with them is kept; a bare --latency-img leaves the phase for later."""
    run = tmp_path / "race" / "cspwrc_n"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"epochs": 3, "latency_ms": {"64": {"with_nms": 9.5}},
                                                  "latency_threads": 1}))
    threads, loads = [], []
    monkeypatch.setattr(race.torch, "set_num_threads", threads.append)
    monkeypatch.setattr(race, "latency_ms", lambda fn, x: 1.0)  # the timing loop itself is not under test
    monkeypatch.setattr(race, "load_detector", lambda path: loads.append(path) or (build_detector(
        "cspwrc_n", num_classes=2, pretrained=False), {}))
    args = _args(data_yaml, tmp_path, "--contestants", "cspwrc_n", "--latency-img", "64", "--latency-threads", "2")
    race.measure_latency(args)
    summary = json.loads((run / "summary.json").read_text())
    assert threads == [2] and len(loads) == 1 and summary["epochs"] == 3
    assert summary["latency_threads"] == 2 and summary["latency_ms"] == {"64": {"forward": 1.0, "with_nms": 1.0}}
    race.measure_latency(args)
    race.measure_latency(_args(data_yaml, tmp_path, "--contestants", "cspwrc_n", "--latency-img"))
    assert len(loads) == 1
