#!/usr/bin/env bash
# tinyllama against llama.cpp (llama-cpp-python, built by scripts/setup_python.sh) on the same GGUF
# files: a random model of a preset written by `bench generate --write-gguf` in each format, then
# both engines measured on it alternately, ROUNDS times, same threads and prompt length.
#   benches/compare_generate.sh [preset] [formats] [rounds]
#   benches/compare_generate.sh tinyllama-1.1b "q8_0 q4_0 q4_k_m f16" 3
# BASELINE=path/to/an/older/tinyllama adds that binary to every round (field "baseline"): a change
# measured against the build before it, alternating, in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
PRESET=${1:-tinyllama-1.1b}
FORMATS=${2:-"q8_0 q4_0 q4_k_m f16"}
ROUNDS=${3:-3}
THREADS=${THREADS:-2}
PY=${TINYLLAMA_PYENV:-$HOME/.cache/tinyllama/pyenv}/bin/python
DIR=${BENCH_DIR:-/tmp/tinyllama-bench}
mkdir -p "$DIR"
cargo build --release -q
BIN=target/release/tinyllama
for f in $FORMATS; do
  file="$DIR/$PRESET-$f.gguf"
  [ -f "$file" ] || $BIN bench generate --preset "$PRESET" --dtype "$f" --write-gguf "$file" >&2
  for r in $(seq "$ROUNDS"); do
    base=""
    if [ -n "${BASELINE:-}" ]; then
      base=", \"baseline\": $("$BASELINE" --threads "$THREADS" bench generate --model "$file" --runs 1 --batch 16 --json)"
    fi
    echo "{\"format\": \"$f\", \"round\": $r$base, \"tinyllama\": $($BIN --threads "$THREADS" bench generate --model "$file" --runs 1 --batch 16 --json), \"llama_cpp\": $("$PY" benches/llama_cpp_generate.py --model "$file" --threads "$THREADS" --runs 1)}"
  done
done
