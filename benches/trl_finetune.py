#!/usr/bin/env python3
"""TRL's SFTTrainer / DPOTrainer on CPU, for benches/compare_finetune.sh: the same model directory,
data and batch as `tinyllama sft|dpo`, float32 (bf16 off), fixed learning rate; prints one JSON
line: median seconds per step after the first, tokens per step, tokens/s, peak RSS (MiB).
Usage: trl_finetune.py sft|dpo MODEL_DIR DATA.jsonl --steps N --micro-batch B --max-length L [--threads T]
[--lora-rank R] (PEFT's LoRA on all seven linear layers, alpha 16)"""
import argparse, json, resource, statistics, sys, time
p = argparse.ArgumentParser()
p.add_argument("mode"); p.add_argument("model"); p.add_argument("data")
p.add_argument("--steps", type=int, default=6); p.add_argument("--micro-batch", type=int, default=4)
p.add_argument("--max-length", type=int, default=512); p.add_argument("--threads", type=int, default=2)
p.add_argument("--lora-rank", type=int, default=0)
a = p.parse_args()
import torch, trl, datasets, transformers
from transformers import AutoTokenizer, LlamaForCausalLM, TrainerCallback
torch.set_num_threads(a.threads)
rows = [json.loads(l) for l in open(a.data)]
tok = AutoTokenizer.from_pretrained(a.model)
model = LlamaForCausalLM.from_pretrained(a.model, dtype=torch.float32)
times, tokens = [], []
class Clock(TrainerCallback):
    def on_step_begin(self, args, state, control, **kw):
        self.t = time.perf_counter()
    def on_step_end(self, args, state, control, **kw):
        times.append(time.perf_counter() - self.t)
    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "num_tokens" in logs:
            tokens.append(logs["num_tokens"])
common = dict(output_dir="/tmp/trl-bench", per_device_train_batch_size=a.micro_batch, max_steps=a.steps,
              learning_rate=1e-5, lr_scheduler_type="constant", logging_steps=1, report_to=[], use_cpu=True,
              bf16=False, save_strategy="no", max_length=a.max_length, dataloader_num_workers=0)
ds = datasets.Dataset.from_list(rows)
peft = {}
if a.lora_rank:
    import peft as peft_lib
    peft = dict(peft_config=peft_lib.LoraConfig(r=a.lora_rank, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
if a.mode == "sft":
    tr = trl.SFTTrainer(model=model, args=trl.SFTConfig(**common), train_dataset=ds, processing_class=tok, callbacks=[Clock()], **peft)
else:
    ref = None if a.lora_rank else LlamaForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    tr = trl.DPOTrainer(model=model, ref_model=ref, args=trl.DPOConfig(precompute_ref_log_probs=True, beta=0.1, **common),
                        train_dataset=ds, processing_class=tok, callbacks=[Clock()], **peft)
tr.train()
per_step = [b - a_ for a_, b in zip([0.0] + tokens[:-1], tokens)]
step_s = statistics.median(times[1:])
tok_step = statistics.median(per_step[1:])
print(json.dumps({"impl": f"TRL {trl.__version__} (torch {torch.__version__})", "mode": a.mode + ("-lora" if a.lora_rank else ""), "steps": a.steps,
                  "median_step_s": step_s, "tokens_per_step": tok_step, "tokens_per_s": tok_step / step_s,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
