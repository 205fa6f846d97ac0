#!/usr/bin/env bash
# deploy_eval.sh WEIGHTS OUT -- the shipped files of a trained model and their SHWD val mAP (issue 26 item 4):
# ONNX fp32 (raw), ONNX int8 (onnxruntime QDQ), OpenVINO fp32 and int8 (NNCF), all calibrated on 128 SHWD train
# images; each scored with `cspwrc val` on the 373 val images (the same scorer as the checkpoint).
set -eu
w=$1; out=$2
mkdir -p "$out"
cd /work/main
py=/work/venv/bin/python
data=configs/data/shwd.yaml
ann=../shared/data/shwd/annotations/instances_val.json; img=../shared/data/shwd/images
$py -m cspwrc.cli export --weights "$w" --out "$out/fp32.onnx" > "$out/export_fp32.log" 2>&1
$py -m cspwrc.cli export --weights "$w" --out "$out/int8.onnx" --int8 --data $data > "$out/export_int8.log" 2>&1 || true
$py -m cspwrc.cli export --weights "$w" --format openvino --out "$out/fp32_openvino_model" > "$out/export_ov.log" 2>&1
$py -m cspwrc.cli export --weights "$w" --format openvino --int8 --data $data --out "$out/int8_openvino_model" \
  > "$out/export_ov_int8.log" 2>&1 || true
for m in "$w" "$out/fp32.onnx" "$out/int8.onnx" "$out/fp32_openvino_model" "$out/int8_openvino_model"; do
  name=$(basename "$m")
  $py -m cspwrc.cli val --weights "$m" --ann $ann --images $img --json "$out/val_$name.json" --no-progress \
    > "$out/val_$name.log" 2>&1 || echo "val failed: $m"
done
$py - "$out" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
for f in sorted(out.glob("val_*.json")):
    d = json.loads(f.read_text()); print(f"{f.stem[4:]:<28} mAP {d['stats'][0]:.4f} AP50 {d['stats'][1]:.4f}")
PY
