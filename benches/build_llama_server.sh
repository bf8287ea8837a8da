#!/usr/bin/env bash
# Builds llama.cpp's own server (`llama-server`, continuous batching) from the llama.cpp sources
# vendored in the llama-cpp-python 0.3.36 sdist (PyPI), the serving reference of BENCHMARKS.md.
# Cached: ~/.cache/tinyllama/llama-server/bin/llama-server. On CPUs with AMX, built for AVX-512
# without AMX, as scripts/setup_python.sh builds llama-cpp-python (llama.cpp issue 20824).
#
#   benches/build_llama_server.sh        # prints the binary's path
set -euo pipefail
DIR=${TINYLLAMA_LLAMA_SERVER_DIR:-$HOME/.cache/tinyllama/llama-server}
BIN=$DIR/bin/llama-server
if [ -x "$BIN" ]; then echo "$BIN"; exit 0; fi
PY=${TINYLLAMA_PYENV:-$HOME/.cache/tinyllama/pyenv}/bin/python
mkdir -p "$DIR"
cd "$DIR"
[ -f llama_cpp_python-0.3.36.tar.gz ] ||
  "$PY" -m pip download -q llama-cpp-python==0.3.36 --no-deps --no-binary llama-cpp-python -d . >&2
[ -d llama_cpp_python-0.3.36 ] || tar xzf llama_cpp_python-0.3.36.tar.gz
command -v cmake >/dev/null || "$PY" -m pip install -q cmake ninja >&2
CMAKE=$(command -v cmake || echo "$(dirname "$PY")/cmake")
ARGS=(-DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF)
if grep -qw amx_int8 /proc/cpuinfo 2>/dev/null; then
  ARGS+=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON
         -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON)
fi
"$CMAKE" -S llama_cpp_python-0.3.36/vendor/llama.cpp -B build "${ARGS[@]}" >&2
"$CMAKE" --build build --target llama-server -j "$(nproc)" >&2
mkdir -p bin
cp build/bin/llama-server bin/llama-server
echo "$BIN"
