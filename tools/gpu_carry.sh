#!/usr/bin/env bash
# Prepare .gpu_carry/ (git-ignored) for tools/gpu_check.sh on a GPU machine that has no network:
#   .gpu_carry/whl/      wheels of what the GPU image lacks: cspwrc's data stack (pycocotools, albumentations and
#                        its needs) and Ultralytics (the measuring stick; never a cspwrc dependency)
#   .gpu_carry/coco128/  a copy of ../shared/data/coco128 (images, YOLO labels, COCO annotations; ~7.5 MB):
#                        only files inside the checkout travel to the GPU machine
#
#   tools/gpu_carry.sh            # then: device run "bash tools/gpu_check.sh" with carry [".gpu_carry"]
#
# Wheels are for the GPU image's python (3.12, x86-64 manylinux; see /work/.library/device/KINDS.md), pinned to
# the versions installed here for cspwrc's own dependencies so both machines run the same data code.
# pip downloads with --no-deps: every needed package is named below (the GPU image has numpy, scipy, opencv,
# pydantic's typing-extensions, torch, torchvision, timm, matplotlib, pandas, psutil, requests, pyyaml).
set -euo pipefail

root=$(git rev-parse --show-toplevel)
carry="$root/.gpu_carry"
data=${COCO128:-$root/../shared/data/coco128}
pyver=${GPU_PYTHON_VERSION:-3.12}

pinned() {  # NAME==VERSION as installed here, or NAME alone when it is not installed
  python3 -c "import importlib.metadata as m, sys
try: print(f'{sys.argv[1]}=={m.version(sys.argv[1])}')
except m.PackageNotFoundError: print(sys.argv[1])" "$1"
}

mkdir -p "$carry/whl"
pkgs=()
for name in pycocotools albumentations albucore simsimd stringzilla pydantic pydantic-core annotated-types \
    typing-inspection; do
  pkgs+=("$(pinned "$name")")
done
pkgs+=(ultralytics ultralytics-thop ultralytics-platform)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$carry/whl" "${pkgs[@]}"

rm -rf "$carry/coco128"
mkdir -p "$carry/coco128"
cp -r "$data/images" "$data/labels" "$data/annotations" "$carry/coco128/"
du -sh "$carry/whl" "$carry/coco128"
ls "$carry/whl"
