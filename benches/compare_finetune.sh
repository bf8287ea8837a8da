#!/usr/bin/env bash
# tinyllama sft / dpo against TRL on PyTorch (CPU, float32, 2 threads): the same random HF model of
# PRESET, the same synthetic data and batch; STEPS steps each, REPS times; one JSON line per run:
# median seconds per step after the first, tokens/s, peak RSS.
#
#   [MAXLEN=256] [MODES="sft dpo"] [LORA_RANK=16] benches/compare_finetune.sh [PRESET] [TOKENS_PER_EXAMPLE] [MICRO_BATCH] [STEPS] [REPS]
# A mode `sft-lora` / `dpo-lora` trains LoRA adapters of rank LORA_RANK on all seven linear layers
# (alpha 16), with PEFT on the TRL side.
# Needs: target/release/tinyllama; ~/.cache/tinyllama/pyenv with trl, datasets, accelerate
# (scripts/setup_python.sh); /usr/bin/time.
set -euo pipefail
PRESET=${1:-bench-50m}; TOKENS=${2:-200}; MB=${3:-4}; STEPS=${4:-6}; REPS=${5:-3}; MAXLEN=${MAXLEN:-256}
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=${TINYLLAMA_PYENV:-$HOME/.cache/tinyllama/pyenv}/bin/python
TL=${TL:-$HERE/target/release/tinyllama}
W=$(mktemp -d /tmp/tinyllama-ftbench.XXXX); trap 'rm -rf "$W"' EXIT
"$TL" bench generate --preset "$PRESET" --write-hf "$W/raw" >/dev/null
"$TL" export --checkpoint "$W/raw" --hf "$W/model" >/dev/null && rm -rf "$W/raw"
# TinyLlama-Chat's Zephyr template, which transformers needs to render conversations
python3 - "$W/model" <<'PY'
import json, sys
z = ("{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n"
     "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
     "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
     "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}")
p = sys.argv[1] + "/tokenizer_config.json"
c = json.load(open(p)); c["chat_template"] = z; json.dump(c, open(p, "w"))
PY

for mode in ${MODES:-sft dpo}; do
  task=${mode%-lora}
  lora=(); [ "$task" != "$mode" ] && lora=(--lora-rank "${LORA_RANK:-16}")
  "$PY" "$HERE/benches/finetune_data.py" "$task" $((MB * STEPS)) "$TOKENS" "$W/$mode.jsonl"
  for r in $(seq 1 "$REPS"); do
    rm -rf "$W/run"
    /usr/bin/time -f "%M" -o "$W/rss" env RAYON_NUM_THREADS=2 "$TL" "$task" --quiet --model "$W/model" \
      --data "$W/$mode.jsonl" --out "$W/run" --micro-batch "$MB" --max-steps "$STEPS" --max-length "$MAXLEN" \
      --save-interval 1000000 --max-lr 1e-5 "${lora[@]}" >/dev/null
    python3 - "$W/run/metrics.jsonl" "$(cat "$W/rss")" "$mode" "$PRESET" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l][1:]
tok = statistics.median(r["tokens_per_s"] for r in rows)
print(json.dumps({"impl": "tinyllama", "preset": sys.argv[4], "mode": sys.argv[3], "tokens_per_s": tok,
                  "median_step_s": statistics.median(r["elapsed_s"] - p["elapsed_s"] for p, r in zip(rows, rows[1:])),
                  "peak_rss_mib": int(sys.argv[2]) / 1024}))
PY
    "$PY" "$HERE/benches/trl_finetune.py" "$task" "$W/model" "$W/$mode.jsonl" --steps "$STEPS" --micro-batch "$MB" \
      --max-length "$MAXLEN" "${lora[@]}" 2>/dev/null | tail -1 | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); d['preset']='$PRESET'; print(json.dumps(d))"
  done
done
