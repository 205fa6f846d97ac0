#!/usr/bin/env bash
# lat_rounds.sh ROUNDS DIR:CONTESTANTS... -- re-time finished race folders ROUNDS times, interleaved (each round times
# every folder's contestants once, in the order given): drop the latency keys of their summary.json and let race.py's
# quiet latency phase (bs1 @320 and @640, 2 threads, PyTorch and ONNX Runtime) time them again; each round's
# race.json is kept as race_latency_rN.json. Run with nothing else on the machine.
set -eu
rounds=$1; shift
cd ${WT:-/work/race-wt3}
export PYTHONPATH=${WT:-/work/race-wt3}/src
for r in $(seq 1 "$rounds"); do
  for spec in "$@"; do
    dir=${spec%%:*}; contestants=${spec#*:}
    for c in ${contestants//,/ }; do
      s="$dir/${c//:/_}/summary.json"
      /work/venv/bin/python -c "import json,sys; p=sys.argv[1]; d=json.load(open(p)); [d.pop(k, None) for k in ('latency_ms','latency_timed','latency_threads','latency_ort_ms','end2end')]; json.dump(d, open(p,'w'), indent=1)" "$s"
    done
    /work/venv/bin/python tools/race.py --data configs/data/shwd.yaml --img 320 --threads 1 --workers 0 --batch 16 \
      --contestants ${contestants//,/ } --ultralytics-python /work/venv-ultra/bin/python --latency-img 320 640 \
      --out "$dir" > /dev/null
    cp "$dir/race.json" "$dir/race_latency_r$r.json"
  done
done
