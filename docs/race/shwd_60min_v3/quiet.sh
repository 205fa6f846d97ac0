#!/usr/bin/env bash
# quiet.sh -- everything that needs quiet cores after round 4: latency rounds, deploy (fp32/int8) mAP and latency of
# ours and YOLO26n, the demo main job's timing. Each step logs to runs/race24/quiet/ and is skipped when done.
set -u
R=/work/main/runs/race24; Q=$R/quiet; py=/work/venv/bin/python; upy=/work/venv-ultra/bin/python
cd /work/main
while [ ! -f $R/r4_s0/race.md ]; do sleep 20; done
echo "start $(date +%T)" >> $Q/steps.log
step() { echo "$(date +%T) $1" >> $Q/steps.log; }
# A. latency, 3 interleaved rounds: round 4's e2e arm and YOLO26n (frozen worktree: the code that trained them)
if [ ! -f $R/r4_s0/race_latency_r3.json ]; then
  step A; WT=/work/race-wt5 $R/lat_rounds.sh 3 $R/r4_s0:cspwrc_n,ultralytics:yolo26n > $Q/A.log 2>&1
fi
# B. ours A2 (seed 0): exported fp32/int8 ONNX + OpenVINO at 320, scored on SHWD val
W=$R/r2_A2_s0/cspwrc_n/train/last.safetensors
if [ ! -f $Q/deployA2_320/done ]; then
  step B; $R/deploy_eval.sh $W $Q/deployA2_320 > $Q/B.log 2>&1 && touch $Q/deployA2_320/done
fi
# C. the same files at 640 (latency only) and latency of all, 1 and 2 threads
D=$Q/deployA2_640; mkdir -p $D
if [ ! -f $D/done ]; then
  step C
  $py -m cspwrc.cli export --weights $W --img 640 --out $D/fp32.onnx > $D/e1.log 2>&1
  $py -m cspwrc.cli export --weights $W --img 640 --out $D/int8.onnx --int8 --data configs/data/shwd.yaml > $D/e2.log 2>&1
  $py -m cspwrc.cli export --weights $W --img 640 --format openvino --out $D/fp32_openvino_model > $D/e3.log 2>&1
  $py -m cspwrc.cli export --weights $W --img 640 --format openvino --int8 --data configs/data/shwd.yaml \
    --out $D/int8_openvino_model > $D/e4.log 2>&1
  touch $D/done
fi
# D. YOLO26n (round 4, seed 0): Ultralytics' own exports (ONNX fp32, OpenVINO fp32 and int8) at 320 and 640, and
# its own val (fp32 .pt vs int8 OpenVINO) at 320
Y=$Q/yolo26n; mkdir -p $Y
if [ ! -f $Y/done ]; then
  step D
  $upy $R/yolo_deploy.py $R/r4_s0/ultralytics_yolo26n/train/weights/last.pt $R/r4_s0/yolo_data/data.yaml $Y > $Y/D.log 2>&1
  touch $Y/done
fi
# E. latency of every exported file, 2 then 1 threads, 3 interleaved rounds
if [ ! -f $Q/lat_t2.log ]; then
  step E
  files="$Q/deployA2_320/fp32.onnx $Q/deployA2_320/int8.onnx $Q/deployA2_320/fp32_openvino_model $Q/deployA2_320/int8_openvino_model $D/fp32.onnx $D/int8.onnx $D/fp32_openvino_model $D/int8_openvino_model $(ls -d $Y/*/*.onnx $Y/*/*_openvino_model 2>/dev/null | tr '\n' ' ')"
  $py $R/deploy_latency.py 2 3 $files > $Q/lat_t2.log 2>&1
  $py $R/deploy_latency.py 1 3 $files > $Q/lat_t1.log 2>&1
fi
# F. the demo main job as a new user runs it (2 cores, quiet), then the candidate recipe
if [ ! -f $Q/demo_default.log ]; then
  step F; /usr/bin/time -v $py tools/train_det.py --out $Q/demo_default --no-progress > $Q/demo_default.log 2>&1
fi
step end
