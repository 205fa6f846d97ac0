#!/usr/bin/env bash
# e2.sh -- after lat2.sh: step E of quiet.sh again on a quiet machine (its first run overlapped an export)
set -u
Q=/work/main/runs/race24/quiet; D=$Q/deployA2_640; Y=$Q/yolo26n; py=/work/venv/bin/python
while ! grep -q "lat2 end" $Q/steps.log 2>/dev/null; do sleep 15; done
echo "$(date +%T) E2" >> $Q/steps.log
files="$Q/deployA2_320/fp32.onnx $Q/deployA2_320/int8.onnx $Q/deployA2_320/fp32_openvino_model $Q/deployA2_320/int8_openvino_model $D/fp32.onnx $D/int8.onnx $D/fp32_openvino_model $D/int8_openvino_model $(ls -d $Y/*/*.onnx $Y/*/*_openvino_model | tr '\n' ' ')"
$py /work/main/runs/race24/deploy_latency.py 2 3 $files > $Q/lat_t2b.log 2>&1
$py /work/main/runs/race24/deploy_latency.py 1 3 $files > $Q/lat_t1b.log 2>&1
echo "$(date +%T) E2 end" >> $Q/steps.log
