#!/usr/bin/env bash
# The Python references the tests compare against: gguf-py (GGUF format, ggml's reference
# (de)quantizers) and llama.cpp through llama-cpp-python (built from source, ~10 min on 2 cores).
# One virtual environment, cached at $TINYLLAMA_PYENV (default ~/.cache/tinyllama/pyenv); tests find it there and skip
# loudly without it. Re-running is cheap once it exists. torch and transformers (PyPI's wheels, ~5 GB
# with their CUDA libraries, ~1.5 min) are in it too: convert_hf_to_gguf.py and the transformers
# comparisons need them. And the `openai` client, which the tests of `tinyllama serve` drive.
set -euo pipefail
ENV="${TINYLLAMA_PYENV:-$HOME/.cache/tinyllama/pyenv}"
LLAMA_CPP_PYTHON=0.3.36
if [ -x "$ENV/bin/python" ] && "$ENV/bin/python" -c "import gguf, numpy, safetensors, sentencepiece, llama_cpp, torch, transformers, openai" 2>/dev/null \
   && [ -f "$ENV/src/llama.cpp/convert_hf_to_gguf.py" ]; then
  echo "python references ready in $ENV"; exit 0
fi
command -v python3 >/dev/null || { apt-get update -qq && apt-get install -y -qq python3 python3-venv python3-pip; }
python3 -m venv "$ENV" 2>/dev/null || { apt-get update -qq && apt-get install -y -qq python3-venv && python3 -m venv "$ENV"; }
PY="$ENV/bin/python"
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q numpy safetensors sentencepiece
"$PY" -c "import torch, transformers" 2>/dev/null || "$PY" -m pip install -q torch transformers
# the official OpenAI client, for the server's tests
"$PY" -c "import openai" 2>/dev/null || "$PY" -m pip install -q openai
# TRL and PEFT, the references of `sft` / `dpo` / LoRA (tests/finetune_cli.rs; the fixture is vendored)
"$PY" -c "import trl, peft, datasets, accelerate" 2>/dev/null || "$PY" -m pip install -q trl peft datasets accelerate
# the sdist carries llama.cpp's converter and gguf-py at the version the library is built from
mkdir -p "$ENV/src"
if [ ! -f "$ENV/src/llama.cpp/convert_hf_to_gguf.py" ]; then
  tmp=$(mktemp -d)
  "$PY" -m pip download -q --no-deps -d "$tmp" "llama-cpp-python==$LLAMA_CPP_PYTHON"
  tar xzf "$tmp"/llama_cpp_python-*.tar.gz -C "$tmp"
  rm -rf "$ENV/src/llama.cpp"
  mv "$tmp"/llama_cpp_python-*/vendor/llama.cpp "$ENV/src/llama.cpp"
  rm -rf "$tmp"
fi
"$PY" -m pip install -q "$ENV/src/llama.cpp/gguf-py"
"$PY" -c "import llama_cpp" 2>/dev/null || CMAKE_BUILD_PARALLEL_LEVEL=2 "$PY" -m pip install -q --no-cache-dir "llama-cpp-python==$LLAMA_CPP_PYTHON"
echo "python references ready in $ENV"
