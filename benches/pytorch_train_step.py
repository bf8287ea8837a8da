#!/usr/bin/env python3
"""The PyTorch reference for `tinyllama bench train`: the same Llama model (RMSNorm, rotate-half
RoPE, GQA via SDPA, SwiGLU, untied head), the same step (forward, mean cross-entropy, backward,
global clip 1.0, AdamW 0.9/0.95 wd 0.1), f32, eager, on random tokens.

    pip install torch
    python3 benches/pytorch_train_step.py --preset bench-50m --json

Prints the same JSON fields as `tinyllama bench train --json` (tokens_per_s, step_ms, mfu is left
out: it needs our GEMM peak; peak_rss_bytes)."""
import argparse, json, math, resource, statistics, time
import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {  # vocab, d, layers, heads, kv heads, ffn
    "tiny-10m": (32000, 128, 4, 4, 2, 352),
    "bench-50m": (32000, 512, 6, 8, 2, 1408),
    "tinyllama-1.1b": (32000, 2048, 22, 32, 4, 5632),
}


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Block(nn.Module):
    def __init__(self, d, heads, kv, ffn):
        super().__init__()
        self.heads, self.kv, self.hd = heads, kv, d // heads
        self.input_layernorm = RMSNorm(d)
        self.q_proj = nn.Linear(d, heads * self.hd, bias=False)
        self.k_proj = nn.Linear(d, kv * self.hd, bias=False)
        self.v_proj = nn.Linear(d, kv * self.hd, bias=False)
        self.o_proj = nn.Linear(heads * self.hd, d, bias=False)
        self.post_attention_layernorm = RMSNorm(d)
        self.gate_proj = nn.Linear(d, ffn, bias=False)
        self.up_proj = nn.Linear(d, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, d, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(B, T, self.heads, self.hd).transpose(1, 2)
        k = self.k_proj(h).view(B, T, self.kv, self.hd).transpose(1, 2)
        v = self.v_proj(h).view(B, T, self.kv, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + self.o_proj(a.transpose(1, 2).reshape(B, T, -1))
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Llama(nn.Module):
    def __init__(self, vocab, d, layers, heads, kv, ffn, theta=10000.0):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(Block(d, heads, kv, ffn) for _ in range(layers))
        self.norm = RMSNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        hd = d // heads
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2).float() / hd))
        std, out_std = math.sqrt(2 / (5 * d)), 1 / math.sqrt(d) / layers  # TinyLlama's init
        for n, p in self.named_parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=out_std if n.endswith(("o_proj.weight", "down_proj.weight")) else std)

    def forward(self, idx):
        T = idx.shape[1]
        f = torch.outer(torch.arange(T).float(), self.inv_freq)
        emb = torch.cat((f, f), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        x = self.embed_tokens(idx)
        for blk in self.layers:
            x = blk(x, cos, sin)
        return self.lm_head(self.norm(x))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="bench-50m", choices=PRESETS)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--adamw", default="default", choices=["default", "fused", "foreach"],
                    help="torch.optim.AdamW implementation (default: torch's choice on CPU)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    vocab, d, layers, heads, kv, ffn = PRESETS[a.preset]
    model = Llama(vocab, d, layers, heads, kv, ffn)
    kw = {"fused": True} if a.adamw == "fused" else {"foreach": True} if a.adamw == "foreach" else {}
    opt = torch.optim.AdamW(model.parameters(), lr=4e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, **kw)
    fwd = torch.compile(model) if a.compile else model
    ids = torch.randint(0, vocab, (a.batch, a.seq_len + 1))
    x, y = ids[:, :-1], ids[:, 1:]
    times, losses = [], []
    t_cpu0 = t_wall0 = None
    for i in range(a.warmup + a.steps):
        if i == a.warmup:
            t_cpu0, t_wall0 = time.process_time(), time.perf_counter()
        t = time.perf_counter()
        logits = fwd(x)
        loss = F.cross_entropy(logits.view(-1, vocab), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t
        losses.append(loss.item())
        if i >= a.warmup:
            times.append(dt)
    cpu = (time.process_time() - t_cpu0) / (time.perf_counter() - t_wall0)
    med = statistics.median(times)
    n = a.batch * a.seq_len
    r = {
        "impl": f"pytorch {torch.__version__} eager" + (" + compile" if a.compile else "") + f", AdamW {a.adamw}",
        "preset": a.preset, "batch": a.batch, "seq_len": a.seq_len, "threads": torch.get_num_threads(),
        "steps": a.steps, "step_ms": med * 1e3, "step_ms_min": min(times) * 1e3, "tokens_per_s": n / med,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "cpu_utilisation": cpu, "loss_first": losses[0], "loss_last": losses[-1],
    }
    if a.json:
        print(json.dumps(r))
    else:
        for k, v in r.items():
            print(f"{k:16} {v}")


if __name__ == "__main__":
    main()
