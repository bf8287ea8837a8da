#!/usr/bin/env python3
"""Checks `tinyllama export --gguf-lora` against llama.cpp, called by tests/finetune_cli.rs:
  lora_gguf_check.py BASE_HF_DIR ADAPTER_DIR OURS.gguf BASE.gguf MERGED.gguf PROMPT_IDS N
- llama.cpp's convert_lora_to_gguf.py (--outtype f32) writes the PEFT adapter ADAPTER_DIR as a LoRA
  GGUF; gguf-py reads both files: the same tensors (names, shapes, values) and adapter keys;
- llama.cpp (llama-cpp-python) runs BASE.gguf with OURS.gguf as `lora_path`, and MERGED.gguf alone:
  their greedy continuations of PROMPT_IDS (N tokens).
Prints one JSON object."""
import json, os, subprocess, sys, tempfile
import numpy as np

base_hf, adapter, ours, base_gguf, merged_gguf, prompt, n = sys.argv[1:8]
import gguf

conv = os.path.join(os.environ.get("TINYLLAMA_PYENV", os.path.expanduser("~/.cache/tinyllama/pyenv")),
                    "src/llama.cpp/convert_lora_to_gguf.py")
ref = os.path.join(tempfile.mkdtemp(), "ref-lora.gguf")
r = subprocess.run([sys.executable, conv, "--base", base_hf, "--outtype", "f32", "--outfile", ref, adapter],
                   capture_output=True, text=True)
assert r.returncode == 0, r.stderr[-3000:]

def read(path):
    g = gguf.GGUFReader(path)
    tensors = {t.name: (list(map(int, t.shape)), np.array(t.data, dtype=np.float32)) for t in g.tensors}
    def field(k):
        f = g.fields.get(k)
        if f is None:
            return None
        v = f.parts[f.data[0]]
        return bytes(v).decode() if f.types and f.types[0] == gguf.GGUFValueType.STRING else float(v[0])
    keys = {k: field(k) for k in ["general.architecture", "general.type", "adapter.type", "adapter.lora.alpha"]}
    return tensors, keys

theirs, their_keys = read(ref)
mine, my_keys = read(ours)
mismatch = [k for k in theirs if k not in mine or theirs[k][0] != mine[k][0] or not np.array_equal(theirs[k][1], mine[k][1])]

from llama_cpp import Llama
def greedy(path, lora=None):
    kw = {"lora_path": lora} if lora else {}
    m = Llama(model_path=path, n_ctx=128, n_threads=2, n_batch=128, verbose=False, logits_all=True, type_k=0, type_v=0, **kw)
    ids = json.loads(prompt)
    m.eval(ids)
    out = []
    for _ in range(int(n)):
        t = int(np.argmax(m.scores[m.n_tokens - 1]))
        out.append(t)
        m.eval([t])
    return out

print(json.dumps({"tensors_theirs": sorted(theirs), "tensors_ours": sorted(mine), "mismatch": mismatch,
                  "keys_theirs": their_keys, "keys_ours": my_keys,
                  "with_lora": greedy(base_gguf, ours), "merged": greedy(merged_gguf), "base": greedy(base_gguf)}))
