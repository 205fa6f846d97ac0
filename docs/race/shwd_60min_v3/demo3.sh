#!/usr/bin/env bash
# demo3.sh -- after e2.sh: the main job's candidate cspwrc_n, 12 epochs, no loader process; then the test suite
set -u
Q=/work/main/runs/race24/quiet; py=/work/venv/bin/python
cd /work/main
while ! grep -q "E2 end" $Q/steps.log 2>/dev/null; do sleep 10; done
echo "$(date +%T) demo_n12" >> $Q/steps.log
/usr/bin/time -v $py tools/train_det.py --out $Q/demo_n12 --no-progress --model cspwrc_n --epochs 12 --workers 0 \
  > $Q/demo_n12.log 2>&1
echo "$(date +%T) suite" >> $Q/steps.log
PATH=/work/venv/bin:$PATH timeout 1500 pytest -q -p no:cacheprovider > /work/suite2.log 2>&1
echo "$(date +%T) suite end $?" >> $Q/steps.log
