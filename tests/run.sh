#!/usr/bin/env bash
# The test command (README, .ci/run): installs into ./.venv at the tested versions (install.sh,
# constraints.txt), then tests the install modes and a user's environment:
#  1. a regular install (`pip install .`): the quick smoke subset, with the package from site-packages;
#  2. a user's existing environment (older torch and OpenCLIP, no constraints file): `pip install .`
#     replaces nothing and `--loss xsample` trains there (tests/user_env.sh, about 2 min idle; skipped with
#     XSAMPLE_SKIP_USER_ENV=1);
#  3. an editable install (`pip install -e .`): the whole suite (pytest arguments pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
bash install.sh
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q --no-deps --force-reinstall -c constraints.txt)

"${PIP[@]}" .
(cd tests && XSAMPLE_EXPECT_INSTALL=regular ../.venv/bin/pytest -q -m install_smoke -p no:cacheprovider .)

[ "${XSAMPLE_SKIP_USER_ENV:-0}" = 1 ] || bash tests/user_env.sh

"${PIP[@]}" -e .
XSAMPLE_EXPECT_INSTALL=editable .venv/bin/python -m pytest -q tests "$@"
bash tests/openclip_legs.sh  # the older OpenCLIP releases of the supported range (docs/compatibility.md)
