#!/usr/bin/env bash
# The Python references the tests compare against: gguf-py (GGUF format, ggml's reference
# (de)quantizers) and llama.cpp through llama-cpp-python (built from source, ~10 min on 2 cores).
# One virtual environment, cached at $TINYLLAMA_PYENV (default ~/.cache/tinyllama/pyenv); tests find it there and skip
# loudly without it. Re-running is cheap once it exists. torch and transformers (PyPI's wheels, ~5 GB
# with their CUDA libraries, ~1.5 min) are in it too: convert_hf_to_gguf.py and the transformers
# comparisons need them. And the `openai` client and lm-evaluation-harness, which the tests of
# `tinyllama serve` drive.
set -euo pipefail
ENV="${TINYLLAMA_PYENV:-$HOME/.cache/tinyllama/pyenv}"
LLAMA_CPP_PYTHON=0.3.36
# On CPUs with AMX, llama.cpp built for the native CPU puts Q4_0/Q8_0 weights in its AMX buffers,
# which crash (SIGSEGV in ggml_backend_amx_mul_mat, llama.cpp issue 20824) on the tests' small
# models: there it is built for AVX-512 without AMX, and marked so in the environment.
LLAMA_CMAKE_ARGS=""
LLAMA_MARK="native"
if grep -qw amx_int8 /proc/cpuinfo 2>/dev/null; then
  LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON"
  LLAMA_MARK="no-amx"
fi
llama_built_as_wanted() { [ "$(cat "$ENV/.llama-cpp-build" 2>/dev/null || echo native)" = "$LLAMA_MARK" ]; }
if [ -x "$ENV/bin/python" ] && "$ENV/bin/python" -c "import gguf, numpy, safetensors, sentencepiece, llama_cpp, torch, transformers, openai, lm_eval, selenium, huggingface_hub" 2>/dev/null \
   && [ -f "$ENV/src/llama.cpp/convert_hf_to_gguf.py" ] && llama_built_as_wanted; then
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
# lm-evaluation-harness's API models: scoring through `tinyllama serve` (tests/serve.rs)
"$PY" -c "import lm_eval" 2>/dev/null || "$PY" -m pip install -q "lm_eval[api]"
# selenium drives headless Chromium through the chat page (tests/webui.rs); huggingface_hub shares
# its cache with `-m org/name` (tests/hub.rs; transformers brings it)
"$PY" -c "import selenium" 2>/dev/null || "$PY" -m pip install -q selenium
"$PY" -c "import huggingface_hub" 2>/dev/null || "$PY" -m pip install -q huggingface_hub
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
if ! "$PY" -c "import llama_cpp" 2>/dev/null || ! llama_built_as_wanted; then
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=2 "$PY" -m pip install -q --no-cache-dir --force-reinstall --no-deps \
    "llama-cpp-python==$LLAMA_CPP_PYTHON"
  "$PY" -m pip install -q "llama-cpp-python==$LLAMA_CPP_PYTHON"  # its dependencies, if the line above skipped them
  echo "$LLAMA_MARK" > "$ENV/.llama-cpp-build"
fi
echo "python references ready in $ENV"
