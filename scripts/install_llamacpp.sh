#!/usr/bin/env bash
# Install llama-cpp-python into the venv of PYTHON (default .venv/bin/python), building it from the
# registry's sdist once: there is no binary wheel for it, and a default (native) build dies with
# "Illegal instruction" on this project's CPUs, so ggml is built for a portable AVX2/FMA/F16C baseline.
# The built wheel and the measured build time are kept in $WHEELS, so a new venv installs in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
VERSION=${LLAMACPP_VERSION:-0.3.36}
WHEELS=${WHEELS:-${HOOKSTEER_CACHE:-$HOME/.cache/hooksteer}/wheels}
CMAKE_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
RECORD="$WHEELS/llama_cpp_python-$VERSION.build.json"

if "$PY" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null; then
    echo "llama-cpp-python $VERSION is already installed in $("$PY" -c 'import sys; print(sys.prefix)')"
    exit 0
fi
mkdir -p "$WHEELS"
if ! ls "$WHEELS"/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1; then
    echo "Building llama-cpp-python $VERSION from source with CMAKE_ARGS='$CMAKE_FLAGS' (5-11 min on 2 cores) ..."
    start=$(date +%s)
    CMAKE_ARGS="$CMAKE_FLAGS" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
        "$PY" -m pip wheel --no-deps --no-binary llama-cpp-python --wheel-dir "$WHEELS" "llama-cpp-python==$VERSION"
    seconds=$(( $(date +%s) - start ))
    printf '{"version": "%s", "build_seconds": %d, "cpus": %d, "cmake_args": "%s", "date": "%s"}\n' \
        "$VERSION" "$seconds" "$(nproc)" "$CMAKE_FLAGS" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$RECORD"
    echo "Built in $seconds s (recorded in $RECORD)"
fi
"$PY" -m pip install --quiet -c constraints.txt --find-links "$WHEELS" --only-binary llama-cpp-python \
    "llama-cpp-python==$VERSION"
"$PY" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'installed')"
