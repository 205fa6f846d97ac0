#!/usr/bin/env bash
# demo2.sh -- replaces demo.sh's second candidate: after demo_n, the fast candidate (cspwrc_n, YOLO26's head, 14 epochs,
# no loader process: the RAM cache makes loading cheap and a worker would oversubscribe the 2 cores)
set -u
Q=/work/main/runs/race24/quiet; py=/work/venv/bin/python
cd /work/main
while pgrep -f "demo_n --no-progress" > /dev/null; do sleep 5; done
echo "$(date +%T) demo_fast" >> $Q/steps.log
/usr/bin/time -v $py tools/train_det.py --out $Q/demo_fast --no-progress --model cspwrc_n --set model.head.reg_max=1 \
  --set model.head.cls_branch=dw --epochs 14 --workers 0 > $Q/demo_fast.log 2>&1
echo "$(date +%T) demo end" >> $Q/steps.log
