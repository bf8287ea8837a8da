#!/usr/bin/env bash
# tinyllama serve against llama.cpp's own `llama-server` (continuous batching, 16 slots) on the
# same GGUF and the same 2 threads: 16 concurrent greedy streams, then 8 streams decoding while
# long prompts arrive (benches/serve_load.py --arrivals). Both servers stay up; each round runs
# the load on one, then the other (alternating), and records the server process's CPU use
# (cpu_cores: CPU seconds ÷ wall seconds; 2.0 = both cores). One JSON line per measurement.
#
#   benches/compare_serve.sh MODEL.gguf [TOKENS] [REPS]
# Needs: target/release/tinyllama; llama-server (benches/build_llama_server.sh builds and caches it).
set -euo pipefail
MODEL=${1:?a GGUF file}; TOKENS=${2:-64}; REPS=${3:-3}
HERE=$(cd "$(dirname "$0")/.." && pwd)
TL=${TL:-$HERE/target/release/tinyllama}
LS=${LLAMA_SERVER:-$("$HERE/benches/build_llama_server.sh")}
STEP_TOKENS=${STEP_TOKENS:-}
PORT_TL=18190; PORT_LS=18191

wait_up() { for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$1/health" >/dev/null 2>&1 && return 0; sleep 0.2; done; echo "server on $1 did not start" >&2; exit 1; }
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
measure() { # impl pid port args...
  local impl=$1 pid=$2 port=$3; shift 3
  local c0 t0 out c1 t1
  c0=$(cpu "$pid"); t0=$(date +%s.%N)
  out=$(python3 "$HERE/benches/serve_load.py" --url "http://127.0.0.1:$port" --model m "$@")
  c1=$(cpu "$pid"); t1=$(date +%s.%N)
  echo "{\"impl\": \"$impl\", \"cpu_cores\": $(echo "($c1 - $c0) / $(getconf CLK_TCK) / ($t1 - $t0)" | bc -l | cut -c1-5), \"load\": $out}"
}

RAYON_NUM_THREADS=2 "$TL" serve --model "$MODEL" --model-name m --port $PORT_TL --max-batch 16 ${STEP_TOKENS:+--step-tokens $STEP_TOKENS} 2>/dev/null &
PID_TL=$!
"$LS" -m "$MODEL" --alias m --port $PORT_LS -t 2 -tb 2 -np 16 -c $((16 * 2048)) --cont-batching >/dev/null 2>&1 &
PID_LS=$!
trap 'kill $PID_TL $PID_LS 2>/dev/null || true' EXIT
wait_up $PORT_TL; wait_up $PORT_LS
VERSION="llama-server (llama.cpp of llama-cpp-python 0.3.36)"
for r in $(seq 1 "$REPS"); do
  for impl in tinyllama llama-server; do
    if [ $impl = tinyllama ]; then pid=$PID_TL; port=$PORT_TL; name=tinyllama; else pid=$PID_LS; port=$PORT_LS; name=$VERSION; fi
    measure "$name" $pid $port --streams 16 --tokens "$TOKENS" --offset $((1000 * r))
    measure "$name" $pid $port --streams 8 --tokens $((4 * TOKENS)) --arrivals 3 --arrival-every 5 --offset $((1000 * r + 500))
  done
done
