#!/usr/bin/env bash
# Runs `tinyllama bench train` and the PyTorch reference alternately, ROUNDS times each, on the
# same preset, and prints every run's JSON line, then the medians. Usage:
#   PYTHON=/path/to/python-with-torch benches/compare_train.sh [PRESET] [ROUNDS] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${1:-bench-50m}
rounds=${2:-3}
steps=${3:-5}
py=${PYTHON:-python3}
cargo build --release --quiet
out=$(mktemp)
for r in $(seq "$rounds"); do
  ./target/release/tinyllama bench train --preset "$preset" --steps "$steps" --json | sed 's/^/rust /' | tee -a "$out"
  "$py" benches/pytorch_train_step.py --preset "$preset" --steps "$steps" --adamw foreach --json | sed 's/^/torch /' | tee -a "$out"
done
python3 - "$out" <<'PY'
import json, statistics, sys
runs = {"rust": [], "torch": []}
for line in open(sys.argv[1]):
    k, j = line.split(" ", 1)
    runs[k].append(json.loads(j))
med = lambda k, f: statistics.median(r[f] for r in runs[k])
print(f"\nmedians over {len(runs['rust'])} runs each")
for k in runs:
    extra = f"  mfu {med(k, 'mfu'):.3f}  gemm peak {med(k, 'gemm_peak_gflops'):.0f} GFLOP/s" if k == "rust" else ""
    print(f"{k:6} step {med(k, 'step_ms'):7.0f} ms  tokens/s {med(k, 'tokens_per_s'):6.0f}  peak RSS {med(k, 'peak_rss_bytes') / 2**20:6.0f} MiB"
          f"  cpu {med(k, 'cpu_utilisation'):.2f}{extra}")
print(f"speed-up (tokens/s, rust / torch): {med('rust', 'tokens_per_s') / med('torch', 'tokens_per_s'):.2f}x")
PY
rm -f "$out"
