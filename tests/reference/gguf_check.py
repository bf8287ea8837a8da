#!/usr/bin/env python3
"""Checks tinyllama's GGUF files against the references, called by tests/gguf_reference.rs:
  gguf_check.py formats DIR      DIR/model.safetensors (HF f32 weights) and DIR/<fmt>.gguf written by
                                 `tinyllama export --gguf`; DIR/<fmt>.deq.safetensors our dequantization.
      - every tensor's bytes equal gguf.quants.quantize (f32/f16/bf16/q8_0/q4_0: ggml's reference
        quantizers as gguf-py reproduces them) of the HF weight (q/k permuted as convert_hf_to_gguf does);
        Q4_K/Q6_K bytes equal ggml_quantize_chunk of llama.cpp's own library when llama_cpp is importable;
      - gguf.quants.dequantize of every tensor equals our dequantization bit for bit.
  gguf_check.py llama FILE PROMPT_IDS N     greedy continuation by llama.cpp (llama-cpp-python): JSON ids.
  gguf_check.py tokenize FILE TEXTS.json    llama.cpp's tokenization (no BOS, special tokens parsed).
  gguf_check.py convert SRC OUT TEXT        copies the HF model SRC to OUT, gives it a SentencePiece
                                 tokenizer.model of its vocabulary size trained on TEXT, and writes
                                 OUT/{f32,f16,q8_0}.gguf with llama.cpp's convert_hf_to_gguf.py and
                                 OUT/{q4_0,q4_k_m}.gguf with llama.cpp's quantizer (llama_model_quantize).
"""
import json, sys
import numpy as np

def formats(d):
    import gguf
    from safetensors.numpy import load_file
    hf = load_file(f"{d}/model.safetensors")
    cfg = json.load(open(f"{d}/config.json"))
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    def permute(w, n_head):
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    names = {"token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight",
             "output_norm.weight": "model.norm.weight"}
    for i in range(cfg["num_hidden_layers"]):
        for g, h in [("attn_norm", "input_layernorm"), ("attn_q", "self_attn.q_proj"), ("attn_k", "self_attn.k_proj"),
                     ("attn_v", "self_attn.v_proj"), ("attn_output", "self_attn.o_proj"), ("ffn_norm", "post_attention_layernorm"),
                     ("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj"), ("ffn_down", "mlp.down_proj")]:
            names[f"blk.{i}.{g}.weight"] = f"model.layers.{i}.{h}.weight"
    lib = None
    try:
        import ctypes, llama_cpp, os, glob
        libdir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
        cands = glob.glob(os.path.join(libdir, "libggml-base.so*")) + glob.glob(os.path.join(libdir, "libggml.so*"))
        for c in cands:
            l = ctypes.CDLL(c)
            if hasattr(l, "ggml_quantize_chunk"):
                lib = l; break
        if lib is not None:
            lib.ggml_quantize_chunk.restype = ctypes.c_size_t
            lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                                ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    except Exception as e:
        print(f"llama.cpp's library not available ({e}): K-quant bytes not compared", file=sys.stderr)
    report = {}
    for fmt in sys.argv[3].split(","):
        r = gguf.GGUFReader(f"{d}/{fmt}.gguf")
        deq = load_file(f"{d}/{fmt}.deq.safetensors")
        n_q = n_deq = n_k = 0
        for t in r.tensors:
            w = hf[names[t.name]].astype(np.float32)
            if t.name.endswith("attn_q.weight"): w = permute(w, H)
            if t.name.endswith("attn_k.weight"): w = permute(w, KV)
            qt = t.tensor_type
            raw = np.asarray(t.data).view(np.uint8).reshape(-1)
            if qt in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16,
                      gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0):
                want = np.asarray(gguf.quants.quantize(w, qt)).view(np.uint8).reshape(-1)
                assert np.array_equal(want, raw), f"{fmt}: {t.name} ({qt.name}) bytes differ from gguf.quants.quantize"
                n_q += 1
            elif lib is not None:
                out = np.zeros(raw.size, dtype=np.uint8)
                rows, cols = w.shape
                lib.ggml_quantize_chunk(int(qt), np.ascontiguousarray(w).ctypes.data, out.ctypes.data, 0, rows, cols, None)
                assert np.array_equal(out, raw), f"{fmt}: {t.name} ({qt.name}) bytes differ from ggml_quantize_chunk"
                n_k += 1
            got = np.asarray(gguf.quants.dequantize(np.asarray(t.data), qt), dtype=np.float32).reshape(-1)
            ours = deq[t.name].reshape(-1)
            assert got.tobytes() == ours.tobytes(), f"{fmt}: {t.name} ({qt.name}) dequantization differs from gguf.quants"
            n_deq += 1
        report[fmt] = {"tensors": len(r.tensors), "quantize_equal_gguf_py": n_q, "quantize_equal_ggml": n_k, "dequantize_equal": n_deq}
    print(json.dumps(report))

def llama(path, ids, n, kv="f32"):
    from llama_cpp import Llama
    # an f32 KV cache unless asked (llama.cpp's default is f16), so that only the matmuls' own
    # arithmetic differs; ggml type ids: 0 f32, 1 f16
    t = {"f32": 0, "f16": 1}[kv]
    m = Llama(model_path=path, n_ctx=256, n_threads=2, n_batch=256, verbose=False, logits_all=True, type_k=t, type_v=t)
    ids = json.loads(ids)
    m.eval(ids)
    first = np.array(m.scores[len(ids) - 1], dtype=np.float32)
    out = []
    for _ in range(int(n)):
        t = int(np.argmax(m.scores[m.n_tokens - 1]))
        out.append(t)
        m.eval([t])
    print(json.dumps({"tokens": out, "first_logits": first.tolist()}))

def tokenize(path, texts):
    import llama_cpp
    m = llama_cpp.Llama(model_path=path, n_ctx=64, n_threads=2, verbose=False)
    out = [m.tokenize(t.encode(), add_bos=False, special=True) for t in json.load(open(texts))]
    print(json.dumps(out))

def convert(src, out, text):
    import os, shutil, subprocess, sentencepiece as spm, llama_cpp, ctypes
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(src):
        shutil.copy(os.path.join(src, f), out)
    cfg = json.load(open(f"{out}/config.json"))
    vocab = cfg["vocab_size"]
    spm.SentencePieceTrainer.train(input=text, model_prefix=f"{out}/tokenizer", vocab_size=vocab, model_type="bpe",
                                   character_coverage=1.0, byte_fallback=vocab >= 512, bos_id=1, eos_id=2, unk_id=0,
                                   input_sentence_size=200000, shuffle_input_sentence=False, minloglevel=2)
    conv = os.path.join(os.environ.get("TINYLLAMA_PYENV", os.path.expanduser("~/.cache/tinyllama/pyenv")),
                        "src/llama.cpp/convert_hf_to_gguf.py")
    for t in ["f32", "f16", "bf16", "q8_0"]:
        r = subprocess.run([sys.executable, conv, out, "--outtype", t, "--outfile", f"{out}/{t}.gguf"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]
    for name, ftype in [("q4_0", 2), ("q4_k_m", 15)]:
        p = llama_cpp.llama_model_quantize_default_params()
        p.ftype = ftype
        p.nthread = 2
        rc = llama_cpp.llama_model_quantize(f"{out}/f32.gguf".encode(), f"{out}/{name}.gguf".encode(), ctypes.byref(p))
        assert rc == 0, f"llama_model_quantize {name}: {rc}"
    print(json.dumps({"vocab": vocab}))

if __name__ == "__main__":
    {"formats": lambda: formats(sys.argv[2]), "llama": lambda: llama(*sys.argv[2:6]),
     "tokenize": lambda: tokenize(*sys.argv[2:4]), "convert": lambda: convert(*sys.argv[2:5])}[sys.argv[1]]()
