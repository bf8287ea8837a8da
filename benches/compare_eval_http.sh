#!/usr/bin/env bash
# lm-evaluation-harness through `tinyllama serve` (local-completions, token-id requests, echo
# scoring) against `tinyllama eval` directly, on the same model and the first N items of ARC-Easy
# and PIQA (../shared/eval): accuracies side by side and items/s (lm-eval's whole run, Python
# start-up included). One JSON line each.
#
#   benches/compare_eval_http.sh HF_MODEL_DIR [N]
# Needs: target/release/tinyllama; ~/.cache/tinyllama/pyenv with lm_eval[api] (scripts/setup_python.sh).
set -euo pipefail
MODEL=$(cd "${1:?an HF model directory}" && pwd); N=${2:-100}
HERE=$(cd "$(dirname "$0")/.." && pwd)
TL=${TL:-$HERE/target/release/tinyllama}
PY=${TINYLLAMA_PYENV:-$HOME/.cache/tinyllama/pyenv}/bin/python
W=$(mktemp -d); trap 'kill $PID 2>/dev/null || true; rm -rf "$W"' EXIT
mkdir -p "$W/model" "$W/data" "$W/tasks"
# the model's files, and a tokenizer_config.json that makes transformers add BOS as tinyllama eval does
for f in "$MODEL"/*; do ln -s "$f" "$W/model/"; done
[ -e "$W/model/tokenizer_config.json" ] || echo '{"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": true}' > "$W/model/tokenizer_config.json"
head -n "$N" "$HERE/../shared/eval/arc_easy_validation.jsonl" > "$W/data/arc_easy_validation.jsonl"
head -n "$N" "$HERE/../shared/eval/piqa_validation.jsonl" > "$W/data/piqa_validation.jsonl"
task() { printf 'task: %s\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    validation: %s\noutput_type: multiple_choice\nvalidation_split: validation\ndoc_to_text: "%s"\ndoc_to_target: "%s"\ndoc_to_choice: "%s"\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n' "$@"; }
task tl_arc_easy "$W/data/arc_easy_validation.jsonl" 'Question: {{question}}\nAnswer:' '{{choices.label.index(answerKey)}}' '{{choices.text}}' > "$W/tasks/tl_arc_easy.yaml"
task tl_piqa "$W/data/piqa_validation.jsonl" 'Question: {{goal}}\nAnswer:' '{{label}}' '{{[sol1, sol2]}}' > "$W/tasks/tl_piqa.yaml"

t0=$(date +%s.%N)
RAYON_NUM_THREADS=2 "$TL" eval --model "$W/model" --tasks arc_easy,piqa --data-dir "$W/data" --json "$W/direct.json" >/dev/null 2>&1
t1=$(date +%s.%N)
echo "{\"impl\": \"tinyllama eval\", \"items\": $((2 * N)), \"wall_s\": $(echo "$t1 - $t0" | bc -l | cut -c1-6), \"results\": $(python3 -c "import json,sys; print(json.dumps({r['task']: [r['acc'], r['acc_norm']] for r in json.load(open(sys.argv[1]))['results']}))" "$W/direct.json")}"

RAYON_NUM_THREADS=2 "$TL" serve --model "$W/model" --model-name m --port 18194 2>/dev/null &
PID=$!
for _ in $(seq 1 300); do curl -sf http://127.0.0.1:18194/health >/dev/null 2>&1 && break; sleep 0.2; done
t0=$(date +%s.%N)
HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 "$PY" -m lm_eval --model local-completions --model_args \
  "model=m,base_url=http://127.0.0.1:18194/v1/completions,tokenized_requests=True,tokenizer_backend=huggingface,tokenizer=$W/model,add_bos_token=True,num_concurrent=8,max_retries=1" \
  --tasks tl_arc_easy,tl_piqa --include_path "$W/tasks" --output_path "$W/out" >/dev/null 2>&1
t1=$(date +%s.%N)
echo "{\"impl\": \"lm-eval $("$PY" -c 'import lm_eval; print(lm_eval.__version__)') through tinyllama serve\", \"items\": $((2 * N)), \"wall_s\": $(echo "$t1 - $t0" | bc -l | cut -c1-6), \"results\": $(python3 -c "import json,glob,sys; r=json.load(open(glob.glob(sys.argv[1] + '/*/results_*.json')[0]))['results']; print(json.dumps({k[3:]: [v['acc,none'], v['acc_norm,none']] for k, v in r.items()}))" "$W/out")}"
