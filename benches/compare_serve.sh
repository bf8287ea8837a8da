#!/usr/bin/env bash
# tinyllama serve against llama.cpp's server (llama-cpp-python[server], the PyPI package) on the
# same GGUF, the same 2 threads and the same prompts: 1, 4 and 16 concurrent greedy streams of
# --tokens tokens each, REPS times; one JSON line per run (benches/serve_load.py).
#
#   benches/compare_serve.sh MODEL.gguf [TOKENS] [REPS]
# Needs: target/release/tinyllama; ~/.cache/tinyllama/pyenv with llama_cpp and its server extras
# (pip install uvicorn fastapi sse-starlette starlette-context pydantic-settings).
set -euo pipefail
MODEL=${1:?a GGUF file}; TOKENS=${2:-32}; REPS=${3:-3}
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=${TINYLLAMA_PYENV:-$HOME/.cache/tinyllama/pyenv}/bin/python
TL=${TL:-$HERE/target/release/tinyllama}
PORT_TL=18190; PORT_LC=18191

wait_up() { for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$1$2" >/dev/null 2>&1 && return 0; sleep 0.2; done; echo "server on $1 did not start" >&2; exit 1; }
load() { for c in 1 4 16; do for r in $(seq 1 "$REPS"); do
  echo "{\"impl\": \"$1\", \"rep\": $r, \"load\": $(python3 "$HERE/benches/serve_load.py" --url "http://127.0.0.1:$2" --model m --streams "$c" --tokens "$TOKENS" --offset $((1000 * r + 100 * c)))}"
done; done; }

RAYON_NUM_THREADS=2 "$TL" serve --model "$MODEL" --model-name m --port $PORT_TL --max-batch 16 2>/dev/null &
PID=$!; trap 'kill $PID 2>/dev/null || true' EXIT
wait_up $PORT_TL /health
load tinyllama $PORT_TL
kill $PID; wait $PID 2>/dev/null || true

# interrupt_requests off: by default a new request interrupts the running stream
"$PY" -m llama_cpp.server --model "$MODEL" --model_alias m --n_threads 2 --n_threads_batch 2 --n_ctx 2048 \
  --interrupt_requests False --port $PORT_LC >/dev/null 2>&1 &
PID=$!
wait_up $PORT_LC /v1/models
load "llama.cpp (llama-cpp-python $("$PY" -c 'import llama_cpp; print(llama_cpp.__version__)') server)" $PORT_LC
