#!/usr/bin/env bash
# arm.sh NAME SEED "OURS ARGS" -- one 60-minute, 1-thread arm of cspwrc_n from the frozen worktree ${WT:-/work/race-wt}
# (two arms are started side by side; latency timed later, in quiet rounds)
set -eu
name=$1; seed=$2; args=$3
cd ${WT:-/work/race-wt}
export PYTHONPATH=${WT:-/work/race-wt}/src
exec /work/venv/bin/python tools/race.py --data configs/data/shwd.yaml --img 320 --minutes 60 --threads 1 --workers 0 \
  --batch 16 --seed "$seed" --contestants cspwrc_n --ours-args "$args" --latency-img --out "/work/main/runs/race24/$name"
