#!/usr/bin/env bash
# Activation memory of a LoRA fine-tune with and without --checkpoint-activations: the same random
# HF model of PRESET, SFT conversations of ~TOKENS tokens cut to MAXLEN, micro-batch 1, rank 16 on
# all seven linear layers, STEPS steps each, the two runs alternating REPS times; one JSON line per
# run (tokens/s, peak RSS), then the model's weight bytes and one layer's activation bytes at MAXLEN
# (what recomputation keeps besides the residual stream).
#
#   benches/checkpoint_activations.sh [PRESET] [MAXLEN] [STEPS] [REPS]
# Needs: target/release/tinyllama, python3, /usr/bin/time.
set -euo pipefail
PRESET=${1:-tinyllama-1.1b}; MAXLEN=${2:-2048}; STEPS=${3:-2}; REPS=${4:-1}
HERE=$(cd "$(dirname "$0")/.." && pwd)
TL=${TL:-$HERE/target/release/tinyllama}
W=$(mktemp -d /tmp/tinyllama-ckbench.XXXX); trap 'rm -rf "$W"' EXIT
"$TL" bench generate --preset "$PRESET" --write-hf "$W/model" >/dev/null
python3 "$HERE/benches/finetune_data.py" sft "$STEPS" $((MAXLEN + MAXLEN / 4)) "$W/sft.jsonl"
for r in $(seq 1 "$REPS"); do
  for flag in "" "--checkpoint-activations"; do
    rm -rf "$W/run"
    /usr/bin/time -f "%M" -o "$W/rss" env RAYON_NUM_THREADS=2 "$TL" sft --quiet --model "$W/model" --data "$W/sft.jsonl" \
      --out "$W/run" --micro-batch 1 --max-steps "$STEPS" --max-length "$MAXLEN" --save-interval 1000000 \
      --lora-rank 16 --chat-template zephyr $flag >/dev/null
    python3 - "$W/run/metrics.jsonl" "$(cat "$W/rss")" "${flag:-keep all}" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
print(json.dumps({"activations": sys.argv[3], "losses": [r["loss"] for r in rows],
                  "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows[1:] or rows),
                  "peak_rss_mib": int(sys.argv[2]) / 1024}))
PY
  done
done
python3 - "$W/model/config.json" "$MAXLEN" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); n = int(sys.argv[2])
d, f, L, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
hd = d // c["num_attention_heads"]; q = c["num_attention_heads"] * hd; kv = c["num_key_value_heads"] * hd
params = 2 * v * d + L * (2 * d + (q + 2 * kv) * d + d * q + 3 * f * d) + d
# one layer's kept activations: xn1, qkv, att, x_mid, xn2, gu, h (+ norms, lse), f32
layer = n * (d + (q + 2 * kv) + q + d + d + 2 * f + f) * 4
print(json.dumps({"weights_mib": params * 4 / 2**20, "one_layer_activations_mib": layer / 2**20,
                  "residual_stream_mib": (L + 1) * n * d * 4 / 2**20}))
PY
