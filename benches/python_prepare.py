#!/usr/bin/env python3
"""The Python reference for `tinyllama prepare`: the same job with the `tokenizers` package
(batch encode, parallel in its Rust core) and numpy: every file under the inputs is one document,
tokenized without BOS, followed by EOS, packed into LITPKDS shards of CHUNK tokens (uint16).

    pip install tokenizers numpy
    python3 benches/python_prepare.py --input DIR --output OUT --tokenizer data/tokenizer/llama2/tokenizer.json
Prints one JSON line: input_bytes, tokens, seconds, mb_per_s, tokens_per_s."""
import argparse, json, os, struct, time
import numpy as np
from tokenizers import Tokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--input", required=True)
ap.add_argument("--output", required=True)
ap.add_argument("--tokenizer", default="data/tokenizer/llama2/tokenizer.json")
ap.add_argument("--chunk-size", type=int, default=2049 * 1024)
ap.add_argument("--batch-mb", type=int, default=8)
a = ap.parse_args()

t0 = time.perf_counter()
tok = Tokenizer.from_file(a.tokenizer)
eos = tok.token_to_id("</s>")
os.makedirs(a.output, exist_ok=True)
files = sorted(os.path.join(r, f) for r, _, fs in os.walk(a.input) for f in fs if not f.startswith("."))
buf, counter, total_bytes, total_tokens = [], 0, 0, 0


def write(arr):
    global counter
    with open(os.path.join(a.output, f"train_py_0_{counter:010d}.bin"), "wb") as f:
        f.write(b"LITPKDS" + struct.pack("<Q", 1) + struct.pack("<B", 8) + struct.pack("<Q", len(arr)))
        f.write(arr.astype(np.uint16).tobytes(order="C"))
    counter += 1


pending = np.zeros(0, dtype=np.uint16)


def flush(docs):
    global pending, total_tokens
    encs = tok.encode_batch(docs, add_special_tokens=False)
    ids = np.concatenate([np.append(np.asarray(e.ids, dtype=np.uint16), np.uint16(eos)) for e in encs])
    total_tokens += len(ids)
    pending = np.concatenate([pending, ids])
    while len(pending) >= a.chunk_size:
        write(pending[: a.chunk_size])
        pending = pending[a.chunk_size:]


docs, size = [], 0
for path in files:
    with open(path, "rb") as f:
        b = f.read()
    total_bytes += len(b)
    try:
        docs.append(b.decode("utf-8"))
    except UnicodeDecodeError:
        continue
    size += len(b)
    if size >= a.batch_mb << 20:
        flush(docs)
        docs, size = [], 0
if docs:
    flush(docs)
if len(pending):
    write(pending)
dt = time.perf_counter() - t0
print(json.dumps({"impl": "python tokenizers + numpy", "input_bytes": total_bytes, "tokens": total_tokens,
                  "seconds": dt, "mb_per_s": total_bytes / 1e6 / dt, "tokens_per_s": total_tokens / dt}))
