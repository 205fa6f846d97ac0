#!/usr/bin/env bash
# resume.sh NAME -- continue a cut race arm (--resume keeps the fitted epochs), then score it as race.py does
set -eu
# As run, the scoring step's race_table failed on the NaN train_wall_s (a cut run has no one wall time): each
# summary.json then got train_wall_s = train_time_s and `tools/race.py ... --report-only` tabulated it (ARMS.md).
name=$1
cd /work/race-wt
export PYTHONPATH=/work/race-wt/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
out=/work/main/runs/race19/$name/cspwrc_n
rm -f $out/train/run.lock
t0=$(date +%s)
python -m cspwrc.cli train --resume $out/train --no-progress ${EXTRA:-} >> $out/train.log 2>&1
python - <<PY
import sys, time
sys.argv = ["race"]
sys.path.insert(0, "tools")
from pathlib import Path
import race
args = race.parse_args(["--data", "configs/data/shwd.yaml", "--img", "320", "--minutes", "60", "--threads", "1",
                        "--workers", "0", "--batch", "16", "--seed", "0", "--contestants", "cspwrc_n",
                        "--out", "/work/main/runs/race19/$name"])
race.finish_ours("cspwrc_n", args, float("nan"))
sys.exit(race.main(["--data", "configs/data/shwd.yaml", "--img", "320", "--minutes", "60", "--threads", "1",
                    "--workers", "0", "--batch", "16", "--seed", "0", "--contestants", "cspwrc_n", "--report-only",
                    "--out", "/work/main/runs/race19/$name"]))
PY
