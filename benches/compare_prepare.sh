#!/usr/bin/env bash
# `tinyllama prepare` against benches/python_prepare.py on the same input, alternately, ROUNDS
# times each. The input is ../shared/corpus (Austen + CPython, 6.1 MB) repeated COPIES times.
#   PYTHON=/path/to/python-with-tokenizers benches/compare_prepare.sh [COPIES] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
copies=${1:-8}
rounds=${2:-3}
py=${PYTHON:-python3}
src=../shared/corpus
[ -d "$src" ] || { echo "needs $src" >&2; exit 1; }
cargo build --release --quiet
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for c in $(seq "$copies"); do mkdir -p "$work/in/$c" && cp -r "$src"/austen "$src"/python "$work/in/$c/"; done
du -sh "$work/in" | cut -f1 | sed 's/^/input: /'
for r in $(seq "$rounds"); do
  rm -rf "$work/rs" "$work/py"
  /usr/bin/time -f "rust wall %e s, cpu %P" ./target/release/tinyllama prepare --input "$work/in" --output "$work/rs" --prefix bench
  "$py" benches/python_prepare.py --input "$work/in" --output "$work/py"
done
cmp <(cat "$work"/rs/train_bench_0_*.bin) <(cat "$work"/py/train_py_0_*.bin) >/dev/null \
  && echo "shards: byte-identical" || echo "shards: DIFFER"
