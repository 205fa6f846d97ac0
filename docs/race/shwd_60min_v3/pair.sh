#!/usr/bin/env bash
# pair.sh NAME SEED "CONTESTANTS" ["OURS ARGS"] -- one round: two contestants side by side, 60 min of one core each,
# from the frozen worktree ${WT:-/work/race-wt} (latency timed later, in quiet rounds)
set -eu
name=$1; seed=$2; contestants=$3; ours=${4:-}
cd ${WT:-/work/race-wt}
export PYTHONPATH=${WT:-/work/race-wt}/src
exec /work/venv/bin/python tools/race.py --data configs/data/shwd.yaml --img 320 --minutes 60 --threads 1 --workers 0 \
  --batch 16 --seed "$seed" --contestants $contestants --ours-args "$ours" --parallel \
  --ultralytics-python /work/venv-ultra/bin/python --latency-img --out "/work/main/runs/race24/$name"
