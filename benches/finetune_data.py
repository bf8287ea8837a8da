#!/usr/bin/env python3
"""Synthetic chat data for benches/compare_finetune.sh: N conversations (SFT, `messages`) or
preference pairs (DPO, conversational `prompt`/`chosen`/`rejected`) of roughly TOKENS tokens,
sentences drawn from a fixed word list with a seeded RNG (the content does not matter to speed).
Usage: finetune_data.py sft|dpo N TOKENS OUT.jsonl"""
import json, random, sys
mode, n, tokens, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
words = ("the a llama model tiny small data train token layer weight cache batch step loss rate learn "
         "python rust memory core vector matrix sum product attention head query key value norm").split()
rng = random.Random(0)
def text(k):  # ~1.3 tokens per word
    return " ".join(rng.choice(words) for _ in range(max(1, int(k / 1.3)))).capitalize() + "."
with open(out, "w") as f:
    for _ in range(n):
        if mode == "sft":
            row = {"messages": [{"role": "user", "content": text(tokens // 4)},
                                {"role": "assistant", "content": text(3 * tokens // 4)}]}
        else:
            row = {"prompt": [{"role": "user", "content": text(tokens // 4)}],
                   "chosen": [{"role": "assistant", "content": text(3 * tokens // 4)}],
                   "rejected": [{"role": "assistant", "content": text(3 * tokens // 4)}]}
        f.write(json.dumps(row) + "\n")
