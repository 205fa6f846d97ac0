#!/usr/bin/env bash
# collect.sh NAME... -- copy a finished race folder's records into docs/race/shwd_60min_v3/NAME (no weights)
set -eu
for name in "$@"; do
  src=/work/main/runs/race24/$name; dst=/work/main/docs/race/shwd_60min_v3/$name
  mkdir -p "$dst"
  cp "$src"/race.md "$src"/race.json "$dst"/ 2>/dev/null || true
  cp "$src"/race_latency_r*.json "$dst"/ 2>/dev/null || true
  for c in "$src"/*/; do
    c=$(basename "$c"); [ "$c" = yolo_data ] && continue
    mkdir -p "$dst/$c"
    cp "$src/$c"/summary.json "$src/$c"/command.json "$dst/$c"/ 2>/dev/null || true
    cp "$src/$c"/train/results.csv "$src/$c"/train/args.yaml "$dst/$c"/ 2>/dev/null || true
    # the log without Ultralytics' progress-bar redraws
    tr '\r' '\n' < "$src/$c"/train.log | grep -v -E '^\s*[0-9]+/[0-9]+ .*it/s|━|─' | tail -n 400 > "$dst/$c/train.log" || true
  done
done
