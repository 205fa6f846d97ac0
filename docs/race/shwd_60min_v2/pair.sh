#!/usr/bin/env bash
# pair.sh SEED -- the final pair: cspwrc_n (real recipe at the frozen commit) beside YOLOv8n, 60 min of one core each
set -eu
seed=$1
cd /work/race2-wt
export PYTHONPATH=/work/race2-wt/src
exec python tools/race.py --data configs/data/shwd.yaml --img 320 --minutes 60 --threads 1 --workers 0 --batch 16 \
  --seed "$seed" --contestants cspwrc_n ultralytics:yolov8n --parallel --ultralytics-python /work/venv-ultra/bin/python \
  --latency-img 320 --out "/work/main/runs/race19/pair_s$seed"
