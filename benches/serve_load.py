"""Load generator for an OpenAI-compatible server (ours or llama.cpp's): C concurrent streaming
/v1/completions requests (greedy, distinct prompts), each counted token by token.

Prints one JSON line: total completion tokens / wall time, time to first token and inter-token
latency (p50, p99). Standard library only, so any python3 runs it.

    python3 benches/serve_load.py --url http://127.0.0.1:8080 --model NAME --streams 16 --tokens 32

With --arrivals N: while the streams decode, N long prompts (--arrival-words words each) arrive
--arrival-every seconds apart, each asking for 8 tokens; reported are the streams' gaps between
tokens over that time (p50, p99, max) and the arriving prompts' times to first token.
"""
import argparse
import http.client
import json
import threading
import time
import urllib.parse

p = argparse.ArgumentParser()
p.add_argument("--url", required=True)
p.add_argument("--model", required=True)
p.add_argument("--streams", type=int, default=1)
p.add_argument("--tokens", type=int, default=32)
p.add_argument("--prompt-words", type=int, default=48)
p.add_argument("--offset", type=int, default=0, help="first prompt index (vary it between runs: no prompt-cache hits)")
p.add_argument("--arrivals", type=int, default=0)
p.add_argument("--arrival-every", type=float, default=5.0)
p.add_argument("--arrival-words", type=int, default=900)
a = p.parse_args()
u = urllib.parse.urlparse(a.url)

WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which "
         "but have an they you were her she there been one all we their has would when if so no will").split()


def prompt(i):
    # distinct prompts of the same length, so no engine can share a cached prefix
    i += a.offset
    return f"{i}: " + " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(a.prompt_words))


def one(i, out, text=None, tokens=None):
    body = json.dumps({"model": a.model, "prompt": text or prompt(i), "max_tokens": tokens or a.tokens,
                       "temperature": 0, "stream": True})
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200, (r.status, r.read())
    stamps, finish = [], None
    for line in r:
        line = line.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        ev = json.loads(line[6:])
        ch = ev.get("choices") or []
        if ch and ch[0].get("text"):
            stamps.append(time.perf_counter())
        if ch and ch[0].get("finish_reason"):
            finish = ch[0]["finish_reason"]
    # a chunk may carry several tokens (a character split across tokens): a run that stopped at
    # its length generated exactly max_tokens
    out[i] = (t0, stamps, (tokens or a.tokens) if finish == "length" else len(stamps))


def long_prompt(i):
    return f"{i + a.offset} arrives: " + " ".join(WORDS[(i * 11 + k * 5) % len(WORDS)] for k in range(a.arrival_words))


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")


out = [None] * a.streams
ths = [threading.Thread(target=one, args=(i, out)) for i in range(a.streams)]
t0 = time.perf_counter()
for t in ths:
    t.start()
arrived = [None] * a.arrivals
if a.arrivals:
    time.sleep(a.arrival_every)
    ats = []
    for j in range(a.arrivals):
        t = threading.Thread(target=one, args=(j, arrived, long_prompt(j), 8))
        t.start()
        ats.append(t)
        time.sleep(a.arrival_every)
    for t in ats:
        t.join()
    end_of_arrivals = time.perf_counter()
for t in ths:
    t.join()
wall = time.perf_counter() - t0
if a.arrivals:
    # the streams' gaps while prompts arrived (from the first arrival to the last first token)
    first = min(t for t, _, _ in arrived)
    last = max(s[0] for _, s, _ in arrived if s)
    gaps = [b - a_ for _, s, _ in out for a_, b in zip(s, s[1:]) if b >= first and a_ <= last]
    all_gaps = [b - a_ for _, s, _ in out for a_, b in zip(s, s[1:])]
    still = sum(1 for _, s, _ in out if s and s[-1] >= last)
    print(json.dumps({"streams": a.streams, "arrivals": a.arrivals, "arrival_words": a.arrival_words,
                      "streams_running_at_last_arrival": still,
                      "gap_p50_ms": round(1000 * pct(all_gaps, 0.5), 1),
                      "gap_p99_ms_during_arrivals": round(1000 * pct(gaps, 0.99), 1),
                      "gap_max_ms_during_arrivals": round(1000 * max(gaps, default=float("nan")), 1),
                      "arrival_ttft_s": [round(s[0] - t, 3) for t, s, _ in arrived if s]}))
    raise SystemExit(0)
ttft = [s[0] - t for t, s, _ in out if s]
itl = [b - a_ for _, s, _ in out for a_, b in zip(s, s[1:])]
tokens = sum(n for _, _, n in out)
print(json.dumps({"streams": a.streams, "tokens": tokens, "wall_s": round(wall, 3),
                  "tokens_per_s": round(tokens / wall, 2),
                  "ttft_p50_s": round(pct(ttft, 0.5), 3), "ttft_p99_s": round(pct(ttft, 0.99), 3),
                  "itl_p50_ms": round(1000 * pct(itl, 0.5), 1), "itl_p99_ms": round(1000 * pct(itl, 0.99), 1)}))
