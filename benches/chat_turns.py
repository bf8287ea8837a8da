"""Time to first token of a growing chat conversation against an OpenAI-compatible server: each
turn resends the whole conversation (as chat clients do) plus a new user message of --words
words; a server that continues from its cached prefix prefills only the new part. For each turn
the same conversation is also sent "cold" (a fresh system prompt in front, so nothing is cached).
One JSON line per turn: prompt tokens, tokens new since the last turn, TTFT warm and cold.
Standard library only.

    python3 benches/chat_turns.py --url http://127.0.0.1:8080 --model NAME --turns 6 --words 60
"""
import argparse
import http.client
import json
import time
import urllib.parse

p = argparse.ArgumentParser()
p.add_argument("--url", required=True)
p.add_argument("--model", required=True)
p.add_argument("--turns", type=int, default=6)
p.add_argument("--words", type=int, default=60)
p.add_argument("--max-tokens", type=int, default=16)
a = p.parse_args()
u = urllib.parse.urlparse(a.url)
WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which "
         "but have an they you were her she there been one all we their has would when if so no will").split()


def ask(messages):
    """(time to first token, reply text, prompt tokens) of one streamed chat completion."""
    body = json.dumps({"model": a.model, "messages": messages, "max_tokens": a.max_tokens, "temperature": 0,
                       "stream": True, "stream_options": {"include_usage": True}})
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200, (r.status, r.read())
    first, text, prompt_tokens = None, "", None
    for line in r:
        line = line.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        ev = json.loads(line[6:])
        for ch in ev.get("choices") or []:
            piece = (ch.get("delta") or {}).get("content") or ""
            if piece and first is None:
                first = time.perf_counter() - t0
            text += piece
        if ev.get("usage"):
            prompt_tokens = ev["usage"]["prompt_tokens"]
    return first if first is not None else time.perf_counter() - t0, text, prompt_tokens


msgs = [{"role": "system", "content": "You are a helpful assistant."}]
last = 0
for turn in range(a.turns):
    msgs.append({"role": "user", "content": " ".join(WORDS[(turn * 13 + k * 7) % len(WORDS)] for k in range(a.words))})
    warm, reply, n = ask(msgs)
    cold, _, _ = ask([{"role": "system", "content": f"Cold run {time.time()}."}] + msgs[1:])
    print(json.dumps({"turn": turn + 1, "prompt_tokens": n, "new_tokens": n - last, "ttft_warm_s": round(warm, 3),
                      "ttft_cold_s": round(cold, 3)}), flush=True)
    last = n
    msgs.append({"role": "assistant", "content": reply})
