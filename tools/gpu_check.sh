#!/usr/bin/env bash
# Issue 15's GPU measurement in one command (< 8 min on one H200); the steps are in cspwrc.experiments.gpu_check
# (src/cspwrc/experiments/gpu_check.py; tools/gpu_check.py is its entry point).
#
# Here, once per session:   tools/gpu_carry.sh          (wheels + a coco128 copy into the git-ignored .gpu_carry/)
# On the GPU machine:       device run  command="bash tools/gpu_check.sh"  carry=[".gpu_carry"]  timeout_s=540
# Without a GPU (CPU):      bash tools/gpu_check.sh --dry-run --out /tmp/gpu_check
#
# Where albumentations/pycocotools are missing it installs the carried wheels into /tmp/site (nothing outside /tmp
# changes), puts a stand-in `polars` on the
# path when polars is missing (Ultralytics only reads its results.csv back with it, inside a try), and writes
# summary.json, log.txt and startup_profile.txt into $OUT (or --out).
set -uo pipefail
cd "$(dirname "$0")/.."
site=/tmp/site
# Only where cspwrc's data stack is missing (the GPU image): a machine that has it keeps its own packages.
if ! python3 -c "import albumentations, pycocotools" 2>/dev/null && compgen -G ".gpu_carry/whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    .gpu_carry/whl/*.whl || { echo "installing the carried wheels failed" >&2; exit 1; }
fi
if ! python3 -c "import polars" 2>/dev/null; then
  mkdir -p /tmp/gpu_check_stubs/polars
  cat >/tmp/gpu_check_stubs/polars/__init__.py <<'PY'
"""Stand-in for polars (not on this machine): Ultralytics reads results.csv back with it inside a try/except."""


def read_csv(*args, **kwargs):
    raise ImportError("polars stand-in of tools/gpu_check.sh: polars is not installed")
PY
  site="$site:/tmp/gpu_check_stubs"
fi
export PYTHONPATH="$PWD/src:$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec python3 tools/gpu_check.py "$@"
