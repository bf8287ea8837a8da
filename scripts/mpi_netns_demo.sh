#!/usr/bin/env bash
# Two "machines" on one: network namespaces joined by a veth pair, Open MPI launching one rank in
# each over TCP (its "ssh" is `ip netns exec`), no shared memory between ranks. Trains the same
# small run as tests/mpi.rs and compares the losses with a 2-rank shared-memory run: they must be
# identical. Needs root, iproute2, Open MPI and `cargo build --release --features mpi`.
#   scripts/mpi_netns_demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$PWD/target/release/tinyllama
work=$(mktemp -d)
a=tlA$$ b=tlB$$
cleanup() { ip netns del "$a" 2>/dev/null || true; ip netns del "$b" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ip netns add "$a" && ip netns add "$b"
ip link add "v$a" type veth peer name "v$b"
ip link set "v$a" netns "$a" && ip link set "v$b" netns "$b"
ip -n "$a" addr add 10.77.0.1/24 dev "v$a" && ip -n "$b" addr add 10.77.0.2/24 dev "v$b"
for ns in "$a" "$b"; do ip -n "$ns" link set lo up; done
ip -n "$a" link set "v$a" up && ip -n "$b" link set "v$b" up
cat > "$work/rsh" <<RSH
#!/bin/bash
host=\$1; shift
case "\$host" in 10.77.0.1) ns=$a ;; 10.77.0.2) ns=$b ;; *) echo "unknown host \$host" >&2; exit 1 ;; esac
exec ip netns exec "\$ns" bash -c "\$*"
RSH
chmod +x "$work/rsh"
python3 - "$work" <<'PY'
import json, sys
w = sys.argv[1]
json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu", "vocab_size": 32000,
           "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "max_position_embeddings": 64, "tie_word_embeddings": False}, open(f"{w}/config.json", "w"))
open(f"{w}/run.toml", "w").write(f'model_config = "{w}/config.json"\nseq_len = 32\nmicro_batch = 4\n'
    'global_batch_tokens = 256\nmax_steps = 6\nmax_lr = 3e-3\nwarmup_steps = 2\n')
PY
run=(--threads 1 pretrain --quiet --config "$work/run.toml")
ip netns exec "$a" mpirun --allow-run-as-root -np 2 --host 10.77.0.1:1,10.77.0.2:1 \
  --mca plm_rsh_agent "$work/rsh" --mca btl tcp,self --mca btl_tcp_if_include 10.77.0.0/24 \
  --mca oob_tcp_if_include 10.77.0.0/24 -x HOME -x TINYLLAMA_CACHE \
  "$bin" "${run[@]}" --out "$work/netns"
mpirun --allow-run-as-root --oversubscribe -np 2 "$bin" "${run[@]}" --out "$work/shm"
python3 - "$work" <<'PY'
import json, sys
w = sys.argv[1]
loss = lambda d: [json.loads(l)["loss"] for l in open(f"{w}/{d}/metrics.jsonl") if '"loss"' in l]
a, b = loss("netns"), loss("shm")
print("2 namespaces over TCP:", a)
print("2 ranks, shared memory:", b)
print("identical" if a == b else "DIFFERENT")
sys.exit(a != b)
PY
