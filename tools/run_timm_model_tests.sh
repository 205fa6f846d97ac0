#!/usr/bin/env bash
# Run timm's own model test-suite (tests/test_models.py of the installed timm version) on the cspwrc models.
#
#   tools/run_timm_model_tests.sh            # all cspwrc_* models (~5-10 min on 2 CPU cores)
#   tools/run_timm_model_tests.sh -x -v      # extra pytest arguments are passed through
#
# test_models.py ships in timm's source distribution on PyPI; it is fetched once with
# `pip download --no-deps --no-binary :all: timm==<installed version>` into $CSPWRC_TIMM_TESTS_DIR
# (default ~/.cache/cspwrc/timm-<version>). Two adjustments, both printed below:
#   * `-p cspwrc` imports cspwrc before collection so the models are in timm's registry when the test
#     module parametrizes over list_models(), and `-k cspwrc` keeps only our models;
#   * timm only runs its forward_intermediates / prune tests for the model modules listed in
#     FEAT_INTER_FILTERS (it adds each family that implements the API); our module `cspwrcnet` is added.
# The pretrained-weight tests download cs3darknet weights from the Hugging Face hub; without a connection
# they are deselected (and said so).
set -euo pipefail

version=$(python -c "import timm; print(timm.__version__)")
cache=${CSPWRC_TIMM_TESTS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cspwrc/timm-$version}
if [[ ! -f "$cache/test_models.py" ]]; then
    mkdir -p "$cache"
    python -m pip download --quiet --no-deps --no-binary :all: "timm==$version" -d "$cache"
    tar -xzf "$cache/timm-$version.tar.gz" -C "$cache" --strip-components=2 "timm-$version/tests/test_models.py"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sed "s/^FEAT_INTER_FILTERS = \[/FEAT_INTER_FILTERS = ['cspwrcnet', /" "$cache/test_models.py" > "$work/test_models.py"
grep -q "^FEAT_INTER_FILTERS = \['cspwrcnet'," "$work/test_models.py" || { echo "FEAT_INTER_FILTERS not found" >&2; exit 1; }
# timm's markers (from its pyproject.toml), so pytest does not warn about them
printf '[pytest]\nmarkers =\n%s\n' "$(printf '    %s\n' base forward backward cfg cfg_nonstd torchscript features \
    fxforward fxbackward timeout)" > "$work/pytest.ini"

select="cspwrc"
if ! python -c "import urllib.request; urllib.request.urlopen('https://huggingface.co', timeout=5)" 2>/dev/null; then
    echo "huggingface.co unreachable: deselecting the pretrained-download tests"
    select="cspwrc and not pretrained"
    export HF_HUB_OFFLINE=1
fi
echo "timm $version: python -m pytest -p cspwrc test_models.py -k '$select' $*"
cd "$work"
python -m pytest -p cspwrc -p no:cacheprovider test_models.py -k "$select" -q -rfEs "$@"
