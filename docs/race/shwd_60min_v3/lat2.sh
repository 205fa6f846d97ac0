#!/usr/bin/env bash
# lat2.sh -- after demo.sh: A2 (r2), E2E and YOLO26n (r4) re-timed together, 3 interleaved rounds, quiet machine
set -u
Q=/work/main/runs/race24/quiet
while ! grep -q "demo end" $Q/steps.log 2>/dev/null; do sleep 15; done
echo "$(date +%T) lat2" >> $Q/steps.log
WT=/work/race-wt5 /work/main/runs/race24/lat_rounds.sh 3 /work/main/runs/race24/r2_A2_s0:cspwrc_n \
  /work/main/runs/race24/r4_s0:cspwrc_n,ultralytics:yolo26n > $Q/lat2.log 2>&1
echo "$(date +%T) lat2 end" >> $Q/steps.log
