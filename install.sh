#!/usr/bin/env bash
# Creates ./.venv (if missing) and installs xsample-openclip into it, editable, with everything the README's
# demo and the tests need (`.[all,test]`), at the exact versions the project is tested with
# (constraints.txt). Everything comes from the package index; nothing is downloaded at run time afterwards.
# To add the plugin to an environment you already have instead: pip install '.[eval]' (docs/install.md).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --disable-pip-version-check -q -c constraints.txt -e '.[all,test]'
.venv/bin/python -c "import xsample_openclip, open_clip; print('xsample-openclip', xsample_openclip.__version__, 'on open_clip', open_clip.__version__)"
