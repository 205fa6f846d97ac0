"""tools/race.py (cspwrc.experiments.race and its modules): argument handling, the Ultralytics data view, commands,
the optimizer records, the latency phase, scoring and the table (no training)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cspwrc.data import ensure_shapes_dataset
from cspwrc.det import build_detector
from cspwrc.engine.checkpoint import save_state, save_weights
from cspwrc.experiments import latency, optimizers, race, race_report
from cspwrc.experiments.race_data import yolo_view

ROOT = Path(__file__).resolve().parents[2]
# Ultralytics 8.4's log lines as they land in a contestant's train.log (colour codes included).
AUTO_LINE = ("\x1b[34m\x1b[1moptimizer:\x1b[0m 'optimizer=auto' found, ignoring 'lr0=0.01' and determining best "
             "'optimizer' and 'lr0' automatically... \n")
MUSGD_LINE = ("\x1b[34m\x1b[1moptimizer:\x1b[0m MuSGD(lr=0.01, momentum=0.9) with parameter groups "
              "81 weight(decay=0.0), 88 weight(decay=0.0005), 87 bias(decay=0.0)\n")
ULTRA_ARGS = {"optimizer": "auto", "lr0": 0.01, "momentum": 0.937, "warmup_momentum": 0.8, "warmup_epochs": 3.0,
              "weight_decay": 0.0005, "nbs": 64, "batch": 16}


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
    data, index = yolo_view(str(data_yaml), tmp_path / "yolo")
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
    cls, cx, _cy, _w, h = lines[0].split()
    x, _y, bw, bh = anns[0]["bbox"]
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


def test_an_interrupted_contestant_resumes_its_saved_state(data_yaml, tmp_path, monkeypatch):
    """A killed race goes on from each contestant's last checkpoint, the log appended, the first command kept."""
    args = _args(data_yaml, tmp_path, "--ultralytics-python", "/venv/bin/python")
    started = []
    monkeypatch.setattr(race.subprocess, "Popen", lambda cmd, **kw: started.append(cmd) or kw["stdout"])
    for contestant, state in (("cspwrc_n", "train/last.state.pt"), ("ultralytics:yolo26n", "train/weights/last.pt")):
        out = args.out / race.run_name(contestant)
        yolo = (tmp_path / "d.yaml", tmp_path / "i.json")
        race.start(contestant, args, yolo)[1].close()
        assert "--resume" not in started[-1] and json.loads((out / "command.json").read_text())["command"]
        (out / "train.log").write_text("epoch 1\n")
        (out / state).parent.mkdir(parents=True, exist_ok=True)
        (out / state).write_bytes(b"")
        race.start(contestant, args, yolo)[1].close()
        assert "--resume" in started[-1] and (out / "train.log").read_text() == "epoch 1\n"
        record = json.loads((out / "command.json").read_text())
        assert record["command"] == started[-2] and record["resumed"][0]["command"] == started[-1]
    assert started[-3][started[-3].index("--resume") + 1] == str(args.out / "cspwrc_n" / "train")


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
    # An older race's Ultralytics run: no optimizer in its summary, read from its log and args.yaml instead.
    (tmp_path / "race" / "ultralytics_yolov8n" / "train").mkdir()
    (tmp_path / "race" / "ultralytics_yolov8n" / "train" / "args.yaml").write_text(yaml.safe_dump(ULTRA_ARGS))
    (tmp_path / "race" / "ultralytics_yolov8n" / "train.log").write_text(AUTO_LINE + MUSGD_LINE)
    rc = race.main(["--data", str(data_yaml), "--out", str(tmp_path / "race"), "--report-only",
                    "--contestants", "cspwrc_n", "ultralytics:yolov8n", "--latency-img", "320"])
    assert rc == 0
    rows = {r["contestant"]: r for r in json.loads((tmp_path / "race" / "race.json").read_text())}
    assert rows["cspwrc_n"]["map"] == pytest.approx(1.0) and rows["ultralytics:yolov8n"]["map"] == 0.0
    assert rows["cspwrc_n"]["optimizer"] is None and rows["ultralytics:yolov8n"]["optimizer"]["name"] == "MuSGD"
    table = (tmp_path / "race" / "race.md").read_text()
    assert "| bs1@320 ms | ORT bs1@320 ms | latency threads | optimizer |" in table
    small = rows["cspwrc_n"]["map_small"]  # COCOeval's AP small (its own area ranges; -1 where there are none)
    assert f"| cspwrc_n | 1.00 | 2.00 | 3 | – | 60 | 1.0000 | 1.0000 | {small:.4f} | 9.5 | – | 2 | – |" in table
    assert "| MuSGD lr 0.01 m 0.8→0.937 wd 0.0005 nbs 64 |" in table


def test_latency_phase_uses_its_own_threads_and_times_once(data_yaml, tmp_path, monkeypatch):
    """Latency timed with other threads (e.g. the training's 1) is timed again with --latency-threads; a latency
    already timed with them is kept; a bare --latency-img leaves the phase for later."""
    run = tmp_path / "race" / "cspwrc_n"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"epochs": 3, "latency_ms": {"64": {"with_nms": 9.5}},
                                                  "latency_threads": 1}))
    threads, timed = [], []

    def fake_time_ours(weights, sizes, n):
        timed.append((weights, list(sizes), n))
        return {"latency_ms": {"64": {"forward": 1.0, "with_nms": 1.0}},
                "latency_ort_ms": {"64": {"forward": 0.5, "with_nms": 0.6}}, "latency_threads": n}

    monkeypatch.setattr(race.torch, "set_num_threads", threads.append)
    monkeypatch.setattr(race, "time_ours", fake_time_ours)  # time_ours itself: test_time_ours_in_both_runtimes
    args = _args(data_yaml, tmp_path, "--contestants", "cspwrc_n", "--latency-img", "64", "--latency-threads", "2")
    race.measure_latency(args)
    summary = json.loads((run / "summary.json").read_text())
    assert threads == [2] and timed == [(run / "train" / "last.safetensors", [64], 2)] and summary["epochs"] == 3
    assert summary["latency_threads"] == 2 and summary["latency_ms"] == {"64": {"forward": 1.0, "with_nms": 1.0}}
    race.measure_latency(args)
    race.measure_latency(_args(data_yaml, tmp_path, "--contestants", "cspwrc_n", "--latency-img"))
    assert len(timed) == 1


def test_latency_done_needs_both_runtimes_or_the_reason():
    timed = {"latency_threads": 2, "latency_ms": {"320": {}}, "latency_ort_ms": {"320": {}}}
    assert latency.latency_done(timed, [320], 2)
    assert not latency.latency_done(timed, [320], 1) and not latency.latency_done(timed, [320, 640], 2)
    older = {"latency_threads": 2, "latency_ms": {"320": {}}}  # a race before ONNX Runtime was timed
    assert not latency.latency_done(older, [320], 2)
    assert latency.latency_done({**older, "latency_timed": {"onnxruntime": "skipped: no onnxruntime"}}, [320], 2)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = build_detector("cspwrc_n", num_classes=2, neck={"channels": [16, 32, 64]})
    path = tmp_path_factory.mktemp("race_weights") / "last.safetensors"
    save_weights(path, model.state_dict(), {"model": model.config, "num_classes": 2})
    return path


def test_time_ours_in_both_runtimes(tiny_weights, monkeypatch):
    """PyTorch and ONNX Runtime (the export path, raw and with NMS in the graph) each run through the one timing
    loop, with the phase's thresholds; every timed call really runs (the loop is replaced by one call here)."""
    pytest.importorskip("onnxruntime")
    ran = []
    monkeypatch.setattr(latency, "latency_ms", lambda call: ran.append(call()) or 1.0)
    entries = latency.time_ours(tiny_weights, [64], threads=1)
    assert entries["latency_ms"] == entries["latency_ort_ms"] == {"64": {"forward": 1.0, "with_nms": 1.0}}
    assert entries["latency_threads"] == 1 and set(entries["latency_timed"]) == {"pytorch", "onnxruntime"}
    assert "score 0.25, IoU 0.7" in entries["latency_timed"]["onnxruntime"]
    raw, detections, ort_raw, ort_nms = ran
    assert raw.shape[:2] == (1, 64 // 8 * 64 // 8 + 64 // 16 * 64 // 16 + 64 // 32 * 64 // 32) and len(detections) == 1
    assert ort_raw[0].shape == tuple(raw.shape) and len(ort_nms) == 4  # boxes, scores, labels, batch_index


def test_time_ours_without_onnxruntime_says_why(tiny_weights, monkeypatch):
    monkeypatch.setattr(latency, "latency_ms", lambda call: 1.0)
    monkeypatch.setattr(latency.importlib.util, "find_spec", lambda name: None)
    entries = latency.time_ours(tiny_weights, [64], threads=1)
    assert "latency_ort_ms" not in entries and entries["latency_timed"]["onnxruntime"].startswith("skipped: onnx")
    assert latency.latency_done(entries, [64], 1)


# ------------------------------------------------------------------------------------------ optimizer records


def test_ultralytics_optimizer_is_what_auto_picked(tmp_path):
    """optimizer=auto with time=: MuSGD at lr 0.01, built with momentum 0.9, warmed from 0.8 to 0.937."""
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "args.yaml").write_text(yaml.safe_dump(ULTRA_ARGS))
    (tmp_path / "train.log").write_text("epoch lines ...\n" + AUTO_LINE + MUSGD_LINE + "more lines\n")
    record = optimizers.ultralytics_optimizer(tmp_path)
    assert record == {"name": "MuSGD", "lr": 0.01, "momentum": 0.937, "weight_decay": 0.0005, "nominal_batch": 64,
                      "batch": 16, "momentum_built": 0.9, "warmup_momentum": 0.8,
                      "source": "train.log optimizer line + train/args.yaml"}
    assert optimizers.format_optimizer(record) == "MuSGD lr 0.01 m 0.8→0.937 wd 0.0005 nbs 64"


def test_ultralytics_adamw_keeps_its_beta1_and_a_missing_line_says_so(tmp_path):
    """auto on a short run picks AdamW; its groups have no "momentum", so the warm-up leaves beta1 at 0.9."""
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "args.yaml").write_text(yaml.safe_dump(ULTRA_ARGS))
    (tmp_path / "train.log").write_text("optimizer: AdamW(lr=0.001111, momentum=0.9) with parameter groups "
                                        "57 weight(decay=0.0), 64 weight(decay=0.0005), 63 bias(decay=0.0)\n")
    record = optimizers.ultralytics_optimizer(tmp_path)
    assert (record["name"], record["lr"], record["momentum"], record["warmup_momentum"]) == ("AdamW", 0.001111, 0.9,
                                                                                            None)
    (tmp_path / "train.log").write_text("no optimizer line\n")
    record = optimizers.ultralytics_optimizer(tmp_path)
    assert record["name"] == "auto" and record["source"].startswith("train/args.yaml (asked-for")
    assert optimizers.ultralytics_optimizer(tmp_path / "missing") is None


def test_ours_optimizer_from_the_saved_run_config(tmp_path):
    config = {"optim": {"opt": "adamw", "lr": 0.002, "weight_decay": 0.05, "momentum": 0.9, "betas2": 0.999},
              "train": {"batch": 16}}
    save_state(tmp_path / "last.state.pt", {"config": config, "model": {}})
    record = optimizers.ours_optimizer(tmp_path)
    assert (record["name"], record["lr"], record["momentum"], record["weight_decay"], record["batch"]) == (
        "adamw", 0.002, 0.9, 0.05, 16)
    assert record["nominal_batch"] is None and optimizers.format_optimizer(record) == "adamw lr 0.002 m 0.9 wd 0.05"
    assert optimizers.ours_optimizer(tmp_path / "missing") is None and optimizers.format_optimizer(None) == "–"


def test_finished_ultralytics_summary_gets_its_optimizer(data_yaml, tmp_path):
    out = tmp_path / "race" / "ultralytics_yolo26n"
    (out / "train").mkdir(parents=True)
    (out / "summary.json").write_text(json.dumps({"epochs": 2}))
    (out / "train" / "args.yaml").write_text(yaml.safe_dump(ULTRA_ARGS))
    (out / "train.log").write_text(MUSGD_LINE)
    race.finish_ultralytics("ultralytics:yolo26n", _args(data_yaml, tmp_path))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["optimizer"]["name"] == "MuSGD"


def test_table_cells_for_both_runtimes_and_an_nms_free_head():
    base = {"params_m": 1.0, "gflops_at_img": 2.0, "epochs": 3, "train_wall_s": 60.0, "map": 0.5, "map50": 0.7,
            "map_small": 0.25, "s_per_epoch": 20.0, "latency_threads": 2}
    rows = [{"contestant": "cspwrc_n", **base, "latency_ms": {"320": {"forward": 8.0, "with_nms": 9.0}},
             "latency_ort_ms": {"320": {"forward": 6.0, "with_nms": 6.5}}},
            {"contestant": "ultralytics:yolo26n", **base, "end2end": True, "latency_ms": {"320": {"with_nms": 7.0}},
             "latency_ort_ms": None, "optimizer": {"name": "MuSGD", "lr": 0.01, "momentum": 0.937},
             "newton_schulz": {"dtype": "float32"}}]
    table = race_report.race_table(rows, [320])
    assert "| 3 | 20 | 60 | 0.5000 | 0.7000 | 0.2500 |" in table
    assert "(NS fp32) |" in table.splitlines()[-1]
    assert "| 9.0 (8.0 w/o NMS) | 6.5 (6.0 w/o NMS) | 2 | – |" in table
    assert "| 7.0 (NMS-free head) | – | 2 | MuSGD" in table
    assert "bs1@" not in race_report.race_table(rows, [])


def test_epoch_seconds_from_either_results_csv(tmp_path):
    """Ours write cumulative ``time_s``, Ultralytics ``time``: both give per-epoch seconds; no file gives none."""
    for column, out in (("time_s", tmp_path / "ours"), ("time", tmp_path / "ultra")):
        (out / "train").mkdir(parents=True)
        (out / "train" / "results.csv").write_text(f"epoch,loss,{column}\n1,2.0,150.0\n2,1.5,290.0\n3,1.2,300.0\n")
        assert race_report.epoch_seconds(out) == pytest.approx([150.0, 140.0, 10.0])
        speed = race_report._speed(out, 1000)
        assert (speed["s_per_epoch"], speed["ms_per_image"]) == pytest.approx((140.0, 140.0))
    assert race_report.epoch_seconds(tmp_path / "none") == [] and race_report._speed(tmp_path / "none", 10) == {}


def test_tool_is_a_thin_entry_point():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "race.py"), "--help"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0 and "--latency-threads" in proc.stdout and "ONNX Runtime" in proc.stdout
