"""transformers' own tokenizer of a model directory, as the reference of `Tokenizer::from_model_dir`.

Usage: hf_tokenize.py MODEL_DIR < texts.json  (a JSON list of strings)
Prints one JSON object: the class transformers chose, and for each text the ids of `tokenizer(text)`
(special tokens added as the tokenizer adds them) and the decoded text of those ids without them.
"""
import json
import sys

from transformers import AutoTokenizer

tok = AutoTokenizer.from_pretrained(sys.argv[1])
texts = json.load(sys.stdin)
out = []
for t in texts:
    ids = tok(t)["input_ids"]
    out.append({"ids": ids, "decoded": tok.decode(ids, skip_special_tokens=True)})
print(json.dumps({"class": type(tok).__name__, "results": out}))
