#!/usr/bin/env bash
# Build hooksteer's wheel, install it into a clean virtual environment (no system site-packages, no
# editable install) with the exact pins of constraints.txt, and check that a user gets a working
# library: `import hooksteer`, `hooksteer.testing`, and the pytest plugin's fixtures.
#
# Offline-capable: the dependency wheels are downloaded once into $WHEELHOUSE (default
# ${HOOKSTEER_CACHE:-~/.cache/hooksteer}/wheelhouse); later runs install with --no-index from there.
# Usage: scripts/check_wheel.sh [PYTHON]   (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-python3}
WHEELHOUSE=${WHEELHOUSE:-${HOOKSTEER_CACHE:-$HOME/.cache/hooksteer}/wheelhouse}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/hooksteer-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
start=$(date +%s)

echo "== building the wheel"
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$WORK/dist" .
WHEEL=$(ls "$WORK"/dist/hooksteer-*.whl)
echo "   $(basename "$WHEEL")"

echo "== clean venv: $WORK/venv"
"$PYTHON" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
quiet() { grep -v "is ignored: it is neither a file nor a directory" >&2 || true; }   # pip's noise about absent local indexes
install() { "$VPY" -m pip install --quiet -c constraints.txt "$@" "$WHEEL" pytest 2> >(quiet); }
mkdir -p "$WHEELHOUSE"
if ! install --no-index --find-links "$WHEELHOUSE" 2>/dev/null; then
    echo "== filling the wheelhouse $WHEELHOUSE (once; needs the package registry)"
    # `pip wheel`, not `pip download`: dependencies published only as sdists are built into wheels here,
    # so the offline install below needs no build tools from the registry.
    "$VPY" -m pip wheel --quiet -c constraints.txt --wheel-dir "$WHEELHOUSE" "$WHEEL" pytest 2> >(quiet)
    install --no-index --find-links "$WHEELHOUSE"
fi
"$VPY" -m pip check

echo "== imports and pytest plugin"
cd "$WORK"   # away from the source tree, so only the installed wheel can be imported
"$VPY" - <<'PY'
import importlib.metadata as md

import torch

import hooksteer
import hooksteer.testing
import hooksteer.llamacpp

assert torch.__version__.split("+")[0] == "2.13.0", torch.__version__
assert "site-packages" in hooksteer.__file__, f"not the installed wheel: {hooksteer.__file__}"
plugins = [ep.value for ep in md.entry_points(group="pytest11") if ep.name == "hooksteer"]
assert plugins == ["hooksteer.pytest_plugin"], plugins
print("   hooksteer", hooksteer.__version__, "from", hooksteer.__file__, "| torch", torch.__version__)
PY
mkdir -p "$WORK/usertests"
cat > "$WORK/usertests/test_user.py" <<'PY'
import torch

import hooksteer as hs


def test_fixture_from_the_installed_plugin(tiny_llama):
    v = hs.SteeringVector("blocks.1.hook_resid_post", torch.ones(tiny_llama.cfg.d_model))
    with hs.steer(tiny_llama, v):
        assert tiny_llama("hello world").isfinite().all()
PY
(cd "$WORK/usertests" && "$VPY" -m pytest -q -p no:cacheprovider test_user.py)
echo "== wheel check passed in $(( $(date +%s) - start )) s"
