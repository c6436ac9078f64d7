#!/usr/bin/env bash
# The OpenCLIP legs of CI: on each supported open-clip-torch release other than the newest (which
# tests/run.sh tests with the whole suite), the tests that exercise the patches (pytest marker
# `openclip_compat`, plus the install smoke set), with that release in place of the newest.
#
# How a release is put in place: `pip install --no-deps --target .venv/openclip-legs/<release>`, put first
# on PYTHONPATH, so this process, pytest's training subprocesses (torchrun included) and the package
# metadata all see that release (tests/test_version_gate.py checks all three); the start-up hook of
# .venv still loads. Every 3.x release declares the same dependencies as the newest, so the rest of
# .venv is what `pip install open-clip-torch==<release>` would give.
#
# Which tests (docs/compatibility.md gives the measured times). open_clip_train (main, train, data,
# params, distributed) is the same file for file in 3.0.0, 3.1.0 and 3.2.0, and every relied-on source
# of 3.1.0 is 3.2.0's (the gate tests check the hashes), so:
#   3.2.0: every `openclip_compat` test and the install smoke set;
#   3.0.0, 3.1.0: the gate and the refusals (3.0.0: --loss xclr refused before any step), the install
#          smoke set, one-process clip/xsample (and, from 3.1.0, xclr) runs against the formula, one
#          two-process mode of each, two-process validation, and a killed two-process run resumed.
# Usage: bash tests/openclip_legs.sh [release ...]   (default: every leg)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
PY=.venv/bin/python

FULL="openclip_compat or install_smoke"
SMALL_K="test_version_gate or test_refusals or test_install or test_csv_run_trains_xsample \
or test_one_process_first_loss_is_the_formula \
or test_xclr_first_loss_is_the_formula or test_xsample_two_views_with_image_term \
or (test_two_processes_match_one and local0-gwg1) or test_two_process_run_killed_mid_epoch_resumes"

leg() {  # leg RELEASE MARKERS [-k EXPR]
    local release=$1 markers=$2
    shift 2
    local target=.venv/openclip-legs/$release
    if [ ! -f "$target/open_clip/version.py" ]; then
        "$PY" -m pip install --disable-pip-version-check -q --no-deps --target "$target" \
            "open-clip-torch==$release"
    fi
    local start=$SECONDS
    echo "=== OpenCLIP leg: open-clip-torch $release ($markers $*)"
    if PYTHONPATH="$PWD/$target" "$PY" -m pytest -q -p no:cacheprovider -m "$markers" "$@" tests; then
        echo "=== OpenCLIP leg: open-clip-torch $release passed in $((SECONDS - start)) s"
    else
        echo "=== OpenCLIP leg: open-clip-torch $release FAILED after $((SECONDS - start)) s"
        failed+=("$release")
    fi
}

failed=()
releases=("$@")
[ ${#releases[@]} -gt 0 ] || releases=(3.2.0 3.0.0 3.1.0)
for release in "${releases[@]}"; do
    case $release in
        3.2.0) leg "$release" "$FULL" ;;
        3.0.0 | 3.1.0) leg "$release" "$FULL" -k "$SMALL_K" ;;
        *) echo "no OpenCLIP leg for $release (legs: 3.0.0 3.1.0 3.2.0)" >&2; exit 2 ;;
    esac
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "OpenCLIP legs failed: ${failed[*]}" >&2
    exit 1
fi
