#!/usr/bin/env python3
"""Builds the built-in pretraining corpus `data/corpus/` from `../shared/corpus/`:
  slim.jsonl.zst  Jane Austen's six novels, one document per chapter (stands in for SlimPajama)
  star.jsonl.zst  48 CPython 3.11 standard-library modules, one document per file (for Starcoderdata)
SlimPajama's jsonl layout ({"text", "meta": {"redpajama_set_name"}}), compressed with the zstd CLI.
Usage: python3 scripts/make_builtin_corpus.py [SHARED_CORPUS_DIR]"""
import json, os, re, subprocess, sys

src = sys.argv[1] if len(sys.argv) > 1 else "../shared/corpus"
out = os.path.join(os.path.dirname(__file__), "..", "data", "corpus")
os.makedirs(out, exist_ok=True)


def write(name, docs):
    path = os.path.join(out, name + ".jsonl")
    with open(path, "w") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    subprocess.run(["zstd", "-19", "-q", "-f", "--rm", path], check=True)


slim = []
for fn in sorted(os.listdir(os.path.join(src, "austen"))):
    text = open(os.path.join(src, "austen", fn), encoding="utf-8").read()
    parts = re.split(r"\n(?=CHAPTER [IVXLC]+\b|Chapter \d+\b)", text)
    for i, p in enumerate(parts):
        if p.strip():
            slim.append({"text": p.strip() + "\n", "meta": {"redpajama_set_name": "RedPajamaBook", "source": f"austen/{fn}#{i}"}})
write("slim", slim)

star = []
for fn in sorted(os.listdir(os.path.join(src, "python"))):
    if fn.endswith(".py"):
        star.append({"text": open(os.path.join(src, "python", fn), encoding="utf-8").read(),
                     "meta": {"source": f"cpython-3.11/Lib/{fn}", "lang": "python"}})
write("star", star)
print(f"{len(slim)} slim documents, {len(star)} star documents")
