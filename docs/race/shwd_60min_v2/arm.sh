#!/usr/bin/env bash
# arm.sh NAME SEED "OURS ARGS"  -- one 60-minute, 1-thread race arm of cspwrc_n from the frozen worktree /work/race-wt
set -eu
name=$1; seed=$2; args=$3
cd /work/race-wt
export PYTHONPATH=/work/race-wt/src
exec python tools/race.py --data configs/data/shwd.yaml --img 320 --minutes 60 --threads 1 --workers 0 --batch 16 \
  --seed "$seed" --contestants cspwrc_n --ours-args "$args" --latency-img --out "/work/main/runs/race19/$name"
