#!/usr/bin/env bash
# The test command (README, .ci/run): installs into ./.venv, then tests both install modes.
#  1. a regular install (`pip install .`): the quick smoke subset, with the package from site-packages;
#  2. an editable install (`pip install -e .`): the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
bash install.sh
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q --no-deps --force-reinstall)

"${PIP[@]}" .
(cd tests && XSAMPLE_EXPECT_INSTALL=regular ../.venv/bin/pytest -q -m install_smoke -p no:cacheprovider .)

"${PIP[@]}" -e .
XSAMPLE_EXPECT_INSTALL=editable .venv/bin/python -m pytest -q tests "$@"
