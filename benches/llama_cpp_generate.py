#!/usr/bin/env python3
"""llama.cpp (through llama-cpp-python) on a GGUF file, measured the way `tinyllama bench generate
--model FILE.gguf` measures: prefill of a random prompt, then greedy decoding one token at a time;
the same thread count, prompt length and file. Prints one JSON line with the same field names.
    scripts/setup_python.sh   # builds llama.cpp into ~/.cache/tinyllama/pyenv
    ~/.cache/tinyllama/pyenv/bin/python benches/llama_cpp_generate.py --model m.gguf --threads 2"""
import argparse, json, resource, statistics, time
import numpy as np
import llama_cpp

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--prompt-len", type=int, default=256)
ap.add_argument("--new-tokens", type=int, default=32)
ap.add_argument("--runs", type=int, default=3)
ap.add_argument("--threads", type=int, default=2)
a = ap.parse_args()
# n_batch covers the whole context: without logits_all, llama-cpp-python keeps n_batch rows of
# scores and writes a token's row at its position (a longer prompt plus its decode would overrun)
ctx = a.prompt_len + a.new_tokens + 8
m = llama_cpp.Llama(model_path=a.model, n_ctx=ctx, n_batch=max(512, ctx),
                    n_threads=a.threads, n_threads_batch=a.threads, verbose=False)
rng = np.random.default_rng(3)
prompt = [int(x) for x in rng.integers(3, m.n_vocab(), a.prompt_len)]
pre, dec = [], []
for _ in range(a.runs):
    m.reset()
    t = time.perf_counter()
    m.eval(prompt)
    pre.append(a.prompt_len / (time.perf_counter() - t))
    t = time.perf_counter()
    for _ in range(a.new_tokens):
        nxt = int(np.argmax(m.scores[m.n_tokens - 1]))
        m.eval([nxt])
    dec.append(a.new_tokens / (time.perf_counter() - t))
print(json.dumps({"impl": f"llama.cpp (llama-cpp-python {llama_cpp.__version__})", "model": a.model, "threads": a.threads,
                  "prompt_len": a.prompt_len, "new_tokens": a.new_tokens,
                  "prefill_tokens_per_s": statistics.median(pre), "decode_tokens_per_s": statistics.median(dec),
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
