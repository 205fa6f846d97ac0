"""yolo_deploy.py WEIGHTS DATA OUT [NAME] -- (Ultralytics venv) a trained Ultralytics model (NAME: yolo26n, the
default, or yolov8n, ...) as an Ultralytics user ships it: its own ONNX fp32,
OpenVINO fp32 and OpenVINO int8 (NNCF, calibrated on the train split: split=train) exports at 320 and 640, each in
OUT/imgS/; and its own val (mAP@[.5:.95]) of the .pt, the OpenVINO fp32 and the int8 IR at 320, to OUT/val.json."""
import json
import shutil
import sys
from pathlib import Path

from ultralytics import YOLO

weights, data, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
name = sys.argv[4] if len(sys.argv) > 4 else "yolo26n"
res = {}
for img in (320, 640):
    d = out / f"img{img}"
    d.mkdir(parents=True, exist_ok=True)
    w = d / f"{name}.pt"
    shutil.copy(weights, w)
    YOLO(str(w)).export(format="onnx", imgsz=img, device="cpu")
    YOLO(str(w)).export(format="openvino", imgsz=img, device="cpu")
    fp32 = d / f"{name}_openvino_model"
    shutil.move(str(fp32), str(d / "fp32_openvino_model"))
    YOLO(str(w)).export(format="openvino", imgsz=img, int8=True, data=data, split="train", device="cpu")
    shutil.move(str(d / f"{name}_int8_openvino_model"), str(d / "int8_openvino_model"))
for kind, m in (("pt", out / "img320" / f"{name}.pt"), ("openvino_fp32", out / "img320" / "fp32_openvino_model"),
                ("openvino_int8", out / "img320" / "int8_openvino_model")):
    r = YOLO(str(m), task="detect").val(data=data, imgsz=320, batch=1, device="cpu", plots=False, verbose=False)
    res[kind] = {"map": float(r.box.map), "map50": float(r.box.map50)}
    print(kind, res[kind], flush=True)
(out / "val.json").write_text(json.dumps(res, indent=1))
