#!/usr/bin/env python3
"""The Hugging Face transformers reference for `tinyllama bench generate`: LlamaForCausalLM with
random weights (float32, sdpa attention), one sequence: prefill of a random prompt, then greedy
decoding with the KV cache. Prints one JSON line like `tinyllama bench generate --json`.
    pip install torch transformers
    python3 benches/hf_generate.py --preset tinyllama-1.1b"""
import argparse, json, resource, statistics, time
import torch
from transformers import LlamaConfig, LlamaForCausalLM

PRESETS = {"tiny-10m": (128, 4, 4, 2, 352, 256), "bench-50m": (512, 6, 8, 2, 1408, 256),
           "tinyllama-1.1b": (2048, 22, 32, 4, 5632, 2048)}
ap = argparse.ArgumentParser()
ap.add_argument("--preset", default="tinyllama-1.1b", choices=PRESETS)
ap.add_argument("--prompt-len", type=int, default=256)
ap.add_argument("--new-tokens", type=int, default=32)
ap.add_argument("--runs", type=int, default=3)
a = ap.parse_args()
d, L, h, kv, ffn, ctx = PRESETS[a.preset]
cfg = LlamaConfig(vocab_size=32000, hidden_size=d, num_hidden_layers=L, num_attention_heads=h, num_key_value_heads=kv,
                  intermediate_size=ffn, max_position_embeddings=ctx, rms_norm_eps=1e-5, rope_theta=10000.0,
                  tie_word_embeddings=False, torch_dtype="float32")
torch.manual_seed(0)
model = LlamaForCausalLM(cfg).float().eval()
prompt = torch.randint(0, 32000, (1, a.prompt_len))
pre, dec = [], []
with torch.inference_mode():
    for _ in range(a.runs):
        t = time.perf_counter()
        out = model(input_ids=prompt, use_cache=True)
        pre.append(a.prompt_len / (time.perf_counter() - t))
        past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        t = time.perf_counter()
        for _ in range(a.new_tokens):
            out = model(input_ids=nxt, past_key_values=past, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        dec.append(a.new_tokens / (time.perf_counter() - t))
print(json.dumps({"impl": f"transformers {__import__('transformers').__version__} / torch {torch.__version__} f32",
                  "preset": a.preset, "threads": torch.get_num_threads(), "prompt_len": a.prompt_len,
                  "new_tokens": a.new_tokens, "prefill_tokens_per_s": statistics.median(pre),
                  "decode_tokens_per_s": statistics.median(dec),
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
