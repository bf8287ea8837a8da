#!/usr/bin/env bash
# Data parallelism on one machine: 1 process × 2 threads (micro-batch 8) against `mpirun -np 2`
# ranks × 1 thread (micro-batch 4 each): the same global batch of 8 × 256 tokens, bench-50m,
# built-in corpus. Prints the median tokens/s and communication seconds per step (steps 2..N).
#   benches/compare_dp.sh [STEPS]     (needs `cargo build --release --features mpi` and Open MPI)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-8}
cargo build --release --features mpi --quiet
bin=target/release/tinyllama
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
common=(pretrain --quiet --preset bench-50m --seq-len 256 --max-steps "$steps" --eval-interval 100000 --save-interval 100000)
$bin --threads 2 "${common[@]}" --micro-batch 8 --out "$work/one" >/dev/null
mpirun --oversubscribe --allow-run-as-root -np 2 $bin --threads 1 "${common[@]}" --micro-batch 4 --out "$work/two" >/dev/null
python3 - "$work" <<'PY'
import json, statistics, sys
for name, label in [("one", "1 process x 2 threads"), ("two", "2 ranks x 1 thread (MPI)")]:
    rows = [json.loads(l) for l in open(f"{sys.argv[1]}/{name}/metrics.jsonl") if '"loss"' in l][1:]
    tps = statistics.median(r["tokens_per_s"] for r in rows)
    comm = statistics.median(r.get("comm_s", 0.0) for r in rows)
    step = statistics.median(2048 / r["tokens_per_s"] for r in rows)
    print(f"{label:28} {tps:7.0f} tokens/s   step {step*1e3:6.0f} ms   comm {comm*1e3:6.1f} ms/step   final loss {rows[-1]['loss']:.4f}")
PY
