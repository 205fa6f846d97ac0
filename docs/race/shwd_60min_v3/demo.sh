#!/usr/bin/env bash
# demo.sh -- after quiet.sh: the main job's candidates for issue 25 item 12 (<= 5 min, >= 0.70 mAP on 2 cores),
# each timed as a user runs it, one at a time on the quiet machine
set -u
Q=/work/main/runs/race24/quiet; py=/work/venv/bin/python
cd /work/main
while ! grep -q " end" $Q/steps.log 2>/dev/null; do sleep 15; done
run() { name=$1; shift; [ -f $Q/$name.log ] && return; echo "$(date +%T) $name" >> $Q/steps.log
  /usr/bin/time -v $py tools/train_det.py --out $Q/$name --no-progress "$@" > $Q/$name.log 2>&1; }
run demo_n --model cspwrc_n
run demo_n_r1dw --model cspwrc_n --set model.head.reg_max=1 --set model.head.cls_branch=dw
echo "$(date +%T) demo end" >> $Q/steps.log
