#!/usr/bin/env bash
# solo.sh NAME SEED CONTESTANT -- one contestant alone (e.g. ultralytics:yolov8n), 60 min of one core, from the
# frozen worktree ${WT:-/work/race-wt}; the other core stays free for light work (latency timed later, quietly)
set -eu
name=$1; seed=$2; contestant=$3
cd ${WT:-/work/race-wt}
export PYTHONPATH=${WT:-/work/race-wt}/src
exec /work/venv/bin/python tools/race.py --data configs/data/shwd.yaml --img 320 --minutes 60 --threads 1 --workers 0 \
  --batch 16 --seed "$seed" --contestants "$contestant" --ultralytics-python /work/venv-ultra/bin/python --latency-img \
  --out "/work/main/runs/race24/$name"
