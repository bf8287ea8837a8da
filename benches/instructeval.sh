#!/usr/bin/env bash
# Speed of InstructEval's tasks (`tinyllama eval --tasks T --limit N`): items/s of each task, and
# the whole suite's wall time estimated from the limited runs: the shared few-shot prefixes are all
# computed in a limited run already (every BBH task and MMLU subject appears), so
#   full ≈ prefix_seconds + (seconds − prefix_seconds) × items_full / items_run.
# Random weights rarely emit EOS, so every item generates its full budget: the slow case.
#
#   benches/instructeval.sh [MODEL_DIR|MODEL.gguf]   (default: a random tiny-10m, f32 safetensors)
#   (a random 1.1B: tinyllama bench generate --preset tinyllama-1.1b --write-hf DIR)
# With --limit 1 an MMLU subject's only prompt is all "prefix": use limits of 2 or more.
# env: BIN (tinyllama binary), DATA (../shared/eval), DTYPE (f32), LIMITS ("mmlu_instructeval:2 bbh:2
#      drop:8 humaneval:4"), THREADS, MAX_BATCH (16)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/tinyllama}
DATA=${DATA:-../shared/eval}
DTYPE=${DTYPE:-f32}
LIMITS=${LIMITS:-"mmlu_instructeval:2 bbh:2 drop:8 humaneval:4"}
MAX_BATCH=${MAX_BATCH:-16}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
MODEL=${1:-}
if [ -z "$MODEL" ]; then
  MODEL=$OUT/tiny-10m
  "$BIN" bench generate --preset tiny-10m --write-hf "$MODEL" >/dev/null
fi
threads=()
[ -n "${THREADS:-}" ] && threads=(--threads "$THREADS")
echo "model $MODEL, dtype $DTYPE, max batch $MAX_BATCH, $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
for tl in $LIMITS; do
  task=${tl%%:*}; limit=${tl##*:}
  /usr/bin/time -f "%e s wall, %P CPU, %M KB max RSS" "$BIN" "${threads[@]}" eval --model "$MODEL" --dtype "$DTYPE" \
    --tasks "$task" --limit "$limit" --max-batch "$MAX_BATCH" --data-dir "$DATA" --json "$OUT/$task.json" \
    >/dev/null 2>"$OUT/$task.time" || { cat "$OUT/$task.time"; exit 1; }
  tail -1 "$OUT/$task.time" | sed "s/^/$task: /"
done
python3 - "$OUT" "$DATA" $LIMITS <<'EOF'
import json, os, sys, glob
out, data, limits = sys.argv[1], sys.argv[2], [a.split(":")[0] for a in sys.argv[3:]]
def full_items(task):
    if task == "mmlu_instructeval":
        return sum(1 for l in open(os.path.join(data, "mmlu_test.jsonl")) if l.strip())
    if task == "bbh":
        return sum(len(json.load(open(f))["examples"]) - 3 for f in glob.glob(os.path.join(data, "bbh", "*.json")))
    if task == "humaneval":
        return sum(1 for l in open(os.path.join(data, "humaneval", "HumanEval.jsonl")) if l.strip())
    if task == "drop":
        f = os.path.join(data, "drop_validation.jsonl")
        if not os.path.exists(f):
            f = glob.glob(os.path.join(data, "drop", "*.jsonl"))[0]
        import random
        rows = [json.loads(l) for l in open(f) if l.strip()]
        kept = [r for r in rows if len({s.strip() for s in r["answers_spans"]["spans"]}) == 1]
        random.seed(0)
        shots = {r["passage"] for r in random.sample(kept, 3)}
        return sum(1 for r in kept if r["passage"] not in shots)
print("| task | items run | items/s | prefix tokens | prefix s | item prompt tokens | generated tokens | full items | est. full s |")
print("|---|---|---|---|---|---|---|---|---|")
total = 0.0
for t in limits:
    r = json.load(open(os.path.join(out, t + ".json")))["generative"][0]
    w = r["work"]
    n_full = full_items(t)
    est = w["prefix_seconds"] + (r["seconds"] - w["prefix_seconds"]) * n_full / r["n"]
    total += est
    print(f"| {t} | {r['n']} | {r['items_per_s']:.3f} | {w['prefix_tokens']} | {w['prefix_seconds']:.1f} | "
          f"{w['item_prompt_tokens']} | {w['generated_tokens']} | {n_full} | {est:.0f} |")
print(f"whole suite, estimated: {total:.0f} s = {total / 3600:.2f} h")
EOF
