#!/usr/bin/env bash
# lat_rounds.sh DIR ROUNDS -- re-time a finished race's contestants ROUNDS times, interleaved (ours, theirs, ours, ...):
# drop the latency keys from each summary.json and let race.py's quiet latency phase time them again; each round's
# race.json is kept as race_latency_rN.json.
set -eu
dir=$1; rounds=$2
cd /work/race2-wt
export PYTHONPATH=/work/race2-wt/src
for r in $(seq 1 "$rounds"); do
  for s in "$dir"/cspwrc_n/summary.json "$dir"/ultralytics_yolov8n/summary.json; do
    python -c "import json,sys; p=sys.argv[1]; d=json.load(open(p)); [d.pop(k, None) for k in ('latency_ms','latency_timed','latency_threads','latency_ort_ms')]; json.dump(d, open(p,'w'), indent=1)" "$s"
  done
  python tools/race.py --data configs/data/shwd.yaml --img 320 --threads 1 --workers 0 --batch 16 \
    --contestants cspwrc_n ultralytics:yolov8n --ultralytics-python /work/venv-ultra/bin/python \
    --latency-img 320 --out "$dir" > /dev/null
  cp "$dir/race.json" "$dir/race_latency_r$r.json"
done
